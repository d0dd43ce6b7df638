"""Code that runs inside a runner process: one model, one busy loop (worker.py)."""
