"""Fuzzing corral's API from its /openapi.json with schemathesis (`python -m tests.fuzz`)."""
