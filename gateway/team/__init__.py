"""Serving a team: API keys, per-key limits and usage, and the bookkeeping of every request."""
