"""The soak suite (`make soak`, `make soak-quick`): see tests/soak/__main__.py."""
