"""A fast reader for the GGUF header (metadata key/values and tensor infos), nothing else.

gguf.GGUFReader builds a numpy view per array item, which takes ~15 s for the bundled model's
262k-token vocabulary; this walks the same bytes with struct in well under a second. It needs
neither numpy nor the gguf package, so that a serving gateway, which reads the header of every
model it loads, imports neither (tests/test_lean_gateway.py). The type codes below are the GGUF
format's; tests/test_gguf_header.py checks them against the gguf package's enums.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

GGUF_MAGIC = b"GGUF"

# GGUF value types (gguf.GGUFValueType).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, \
    FLOAT64 = range(13)

_SCALARS: dict[int, str] = {  # struct format of each fixed-size type, little-endian
    UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i", FLOAT32: "f",
    BOOL: "?", UINT64: "Q", INT64: "q", FLOAT64: "d",
}

# ggml tensor types by code (gguf.GGMLQuantizationType); codes not listed print as numbers.
GGML_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}
# (elements per block, bytes per block) of each type (gguf.GGML_QUANT_SIZES), to size tensors.
GGML_SIZES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
    "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 40), "Q2_K": (256, 84), "Q3_K": (256, 110),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210), "Q8_K": (256, 292),
    "IQ2_XXS": (256, 66), "IQ2_XS": (256, 74), "IQ3_XXS": (256, 98), "IQ1_S": (256, 50),
    "IQ4_NL": (32, 18), "IQ3_S": (256, 110), "IQ2_S": (256, 82), "IQ4_XS": (256, 136),
    "I8": (1, 1), "I16": (1, 2), "I32": (1, 4), "I64": (1, 8), "F64": (1, 8), "IQ1_M": (256, 56),
    "BF16": (1, 2), "TQ1_0": (256, 54), "TQ2_0": (256, 66), "MXFP4": (32, 17),
    "NVFP4": (64, 36), "Q1_0": (128, 18),
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
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        text = f"{value:.{digits}g}"
        try:
            if _F32.unpack(_F32.pack(float(text)))[0] == value:
                return float(text)
        except OverflowError:  # rounded past the largest float32: more digits
            continue
    return value


_F32 = struct.Struct("<f")


# Arrays longer than this (a vocabulary: 262k tokens, scores and types, ~40 MB as Python
# objects) stay in the file until their items are used; serving only needs their length.
LAZY_ITEMS = 4096


class LazyArray(list):  # a list to the code that reads the header
    """A long header array: its length is known, its items are read from the file each time
    they are used (/api/show with verbose), so a serving gateway does not hold them."""

    def __init__(self, path: str, offset: int, count: int) -> None:
        super().__init__()
        self._path, self._offset, self._count = path, offset, count

    def items(self) -> list[Any]:
        with open(self._path, "rb") as f, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cursor = _Cursor(buf)
            cursor.pos = self._offset
            return cursor.array()

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Any:
        return iter(self.items())

    def __getitem__(self, index: Any) -> Any:
        return self.items()[index]

    def __eq__(self, other: object) -> bool:
        return self.items() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self._count} items of {self._path} at {self._offset}>"


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: str | None = None) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path  # set: long arrays become LazyArray

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
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            return self.array()
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        value = self.unpack("<" + _SCALARS[vtype])
        return f32_shortest(value) if vtype == FLOAT32 else value

    def array(self) -> list[Any]:
        start = self.pos
        itype = self.unpack("<I")
        count = self.unpack("<Q")
        if self.path is not None and count > LAZY_ITEMS and itype != ARRAY:
            self._skip(itype, count)
            return LazyArray(self.path, start, count)
        if itype == STRING:
            buf, pos, out = self.buf, self.pos, []
            unpack_len = struct.Struct("<Q").unpack_from
            for _ in range(count):
                (length,) = unpack_len(buf, pos)
                pos += 8
                out.append(buf[pos : pos + length].decode("utf-8", errors="replace"))
                pos += length
            self.pos = pos
            return out
        if itype == ARRAY:
            return [self.array() for _ in range(count)]
        if itype not in _SCALARS:
            raise ValueError(f"unknown GGUF array item type {itype}")
        items = struct.Struct(f"<{count}{_SCALARS[itype]}")
        if self.pos + items.size > len(self.buf):
            raise ValueError("GGUF array runs past the end of the file")
        values = list(items.unpack_from(self.buf, self.pos))
        self.pos += items.size
        return values

    def _skip(self, itype: int, count: int) -> None:
        if itype == STRING:
            buf, pos = self.buf, self.pos
            unpack_len = struct.Struct("<Q").unpack_from
            for _ in range(count):
                pos += 8 + unpack_len(buf, pos)[0]
            if pos > len(buf):
                raise ValueError("GGUF array runs past the end of the file")
            self.pos = pos
        elif itype in _SCALARS:
            self.pos += struct.calcsize("<" + _SCALARS[itype]) * count
            if self.pos > len(self.buf):
                raise ValueError("GGUF array runs past the end of the file")
        else:
            raise ValueError(f"unknown GGUF array item type {itype}")


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse a little-endian GGUF v2/v3 header. Raises ValueError for anything else."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _parse(buf, os.path.abspath(path))
        except struct.error as exc:
            raise ValueError(f"truncated GGUF header: {exc}") from None


def _parse(buf: mmap.mmap, path: str | None = None) -> GGUFHeader:
    if buf[:4] != GGUF_MAGIC:
        raise ValueError("not a GGUF file (bad magic)")
    cur = _Cursor(buf, path)
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
        tensors.append(TensorInfo(name, GGML_TYPES.get(raw_type, str(raw_type)), shape))
    return GGUFHeader(version=version, kv=kv, tensors=tensors)
