"""Version numbers: corral's own, and the Ollama API version it answers as."""

__version__ = "0.1.0"

# Ollama clients and tools gate features on /api/version; we report the Ollama release whose API
# we follow (the recorded responses in ../shared/reference come from it).
OLLAMA_COMPAT_VERSION = "0.32.15"
