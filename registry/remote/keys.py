"""The ed25519 identity key Ollama keeps in ~/.ollama (id_ed25519 + id_ed25519.pub).

The private key is an OpenSSH-format file, the public key an `ssh-ed25519 AAAA...` line, so the
same pair works for Ollama and corral. A registry token request is signed with it: the header is
`<base64 public key blob>:<base64 signature>`, the public key blob being the middle field of the
`.pub` line.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_lock = threading.Lock()


def default_key_path() -> Path:
    return Path.home() / ".ollama" / "id_ed25519"


class IdentityKey:
    """An ed25519 key pair loaded from (or, when `create` is set, created at) `path`."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        line = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        self.public_line = line.decode()  # "ssh-ed25519 AAAA..."
        self.public_blob = self.public_line.split()[1]  # what the Authorization header carries

    @classmethod
    def load(cls, path: Path | None = None, *, create: bool = True) -> IdentityKey | None:
        path = path or default_key_path()
        with _lock:
            if not path.is_file():
                if not create:
                    return None
                _create(path)
            key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an ed25519 key")
        return cls(key)

    def sign(self, data: bytes) -> str:
        """The value of the Authorization header of a signed token request for `data`."""
        signature = self._private.sign(data)
        return f"{self.public_blob}:{base64.b64encode(signature).decode()}"


def _create(path: Path) -> None:
    """Write a new key pair, private key 0600, without ever leaving a half-written file."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        pub_tmp = path.with_name(f".{path.name}.pub.tmp-{os.getpid()}")
        pub_tmp.write_bytes(public + b"\n")
        os.replace(pub_tmp, path.with_name(path.name + ".pub"))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
