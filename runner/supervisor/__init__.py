"""Code that manages runner processes from outside: placement, eviction, memory, the client."""
