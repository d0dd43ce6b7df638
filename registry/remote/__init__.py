"""Talking to registries over the OCI distribution protocol (v2) with Ollama's media types.

Modules: client (HTTP with bearer-token auth from a WWW-Authenticate challenge, Ollama's signed
token request, proxies), keys (the ed25519 identity key in ~/.ollama), pull (manifest, blobs in
parallel byte ranges into resumable `-partial` files, sha256 verification, manifest last),
push (HEAD, cross-repository mount, POST/PATCH/PUT uploads, manifest), progress (the progress
objects /api/pull and /api/push stream).
"""
