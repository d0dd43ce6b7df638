"""`python -m gateway.cli ...` runs the same thing as the `corral` script."""

import sys

from gateway.cli import main

sys.exit(main())
