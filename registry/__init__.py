"""The local model store: names, blobs and manifests in Ollama's layout, GGUF metadata, /api/show.

Modules: names (model name grammar), manifest (media types, Layer, Manifest), blobs (digests,
atomic blob writer), store (Store, LocalModel, tags_entry), gguf_header (fast GGUF header parse),
gguf_info (model metadata, details, capabilities), show (/api/show body), bundled (import of the
pip-packaged Gemma 3 270M), timefmt (Go RFC3339Nano timestamps), gofmt (Go %v/%#v formatting).
"""
