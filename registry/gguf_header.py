"""A fast reader for the GGUF header (metadata key/values and tensor infos), nothing else.

gguf.GGUFReader builds a numpy view per array item, which takes ~15 s for the bundled model's
262k-token vocabulary; this walks the same bytes with struct/numpy in well under a second.
The value and tensor type codes come from the gguf package, so the two never disagree.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

GGUF_MAGIC = b"GGUF"
_VT = gguf.GGUFValueType

_SCALARS: dict[int, tuple[str, np.dtype[Any]]] = {
    _VT.UINT8: ("<B", np.dtype("<u1")),
    _VT.INT8: ("<b", np.dtype("<i1")),
    _VT.UINT16: ("<H", np.dtype("<u2")),
    _VT.INT16: ("<h", np.dtype("<i2")),
    _VT.UINT32: ("<I", np.dtype("<u4")),
    _VT.INT32: ("<i", np.dtype("<i4")),
    _VT.FLOAT32: ("<f", np.dtype("<f4")),
    _VT.BOOL: ("<?", np.dtype("?")),
    _VT.UINT64: ("<Q", np.dtype("<u8")),
    _VT.INT64: ("<q", np.dtype("<i8")),
    _VT.FLOAT64: ("<d", np.dtype("<f8")),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # ggml type name: "F32", "Q4_K", ...
    shape: list[int]  # GGUF order (ne[0] first), as Ollama reports it


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    kv: dict[str, Any]
    tensors: list[TensorInfo]


def f32_shortest(value: float) -> float:
    """The shortest decimal that round-trips as float32 (1e-06, not 9.999999974752427e-07),
    which is also how Go's encoding/json prints a float32."""
    return float(str(np.float32(value)))


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.pos + length
        if end > len(self.buf):
            raise ValueError("GGUF string runs past the end of the file")
        text = self.buf[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end
        return text

    def value(self, vtype: int) -> Any:
        if vtype == _VT.STRING:
            return self.string()
        if vtype == _VT.ARRAY:
            return self.array()
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        value = self.unpack(_SCALARS[vtype][0])
        return f32_shortest(value) if vtype == _VT.FLOAT32 else value

    def array(self) -> list[Any]:
        itype = self.unpack("<I")
        count = self.unpack("<Q")
        if itype == _VT.STRING:
            buf, pos, out = self.buf, self.pos, []
            unpack_len = struct.Struct("<Q").unpack_from
            for _ in range(count):
                (length,) = unpack_len(buf, pos)
                pos += 8
                out.append(buf[pos : pos + length].decode("utf-8", errors="replace"))
                pos += length
            self.pos = pos
            return out
        if itype == _VT.ARRAY:
            return [self.array() for _ in range(count)]
        if itype not in _SCALARS:
            raise ValueError(f"unknown GGUF array item type {itype}")
        dtype = _SCALARS[itype][1]
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return arr.tolist()


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse a little-endian GGUF v2/v3 header. Raises ValueError for anything else."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _parse(buf)
        except struct.error as exc:
            raise ValueError(f"truncated GGUF header: {exc}") from None


def _parse(buf: mmap.mmap) -> GGUFHeader:
    if buf[:4] != GGUF_MAGIC:
        raise ValueError("not a GGUF file (bad magic)")
    cur = _Cursor(buf)
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    tensor_count = cur.unpack("<Q")
    kv_count = cur.unpack("<Q")
    kv: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cur.string()
        kv[key] = cur.value(cur.unpack("<I"))
    tensors: list[TensorInfo] = []
    for _ in range(tensor_count):
        name = cur.string()
        n_dims = cur.unpack("<I")
        shape = [cur.unpack("<Q") for _ in range(n_dims)]
        raw_type = cur.unpack("<I")
        cur.unpack("<Q")  # data offset: not needed for metadata
        try:
            type_name = gguf.GGMLQuantizationType(raw_type).name
        except ValueError:
            type_name = str(raw_type)
        tensors.append(TensorInfo(name, type_name, shape))
    return GGUFHeader(version=version, kv=kv, tensors=tensors)
