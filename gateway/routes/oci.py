"""Routes filled in by the work on oci: see the module's issue."""

from __future__ import annotations

from starlette.routing import Route

routes: list[Route] = []
