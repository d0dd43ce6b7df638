"""The GGUF header reader's own tables agree with the gguf package, which it no longer imports."""

from __future__ import annotations

import random
import struct

import gguf
import numpy as np

from registry import gguf_header as h
from registry.gguf_info import FILE_TYPES


def test_value_types_match_the_gguf_package() -> None:
    ours = {"UINT8": h.UINT8, "INT8": h.INT8, "UINT16": h.UINT16, "INT16": h.INT16,
            "UINT32": h.UINT32, "INT32": h.INT32, "FLOAT32": h.FLOAT32, "BOOL": h.BOOL,
            "STRING": h.STRING, "ARRAY": h.ARRAY, "UINT64": h.UINT64, "INT64": h.INT64,
            "FLOAT64": h.FLOAT64}
    assert ours == {t.name: t.value for t in gguf.GGUFValueType}


def test_tensor_types_and_sizes_match_the_gguf_package() -> None:
    assert {t.value: t.name for t in gguf.GGMLQuantizationType} == h.GGML_TYPES
    assert {t.name: size for t, size in gguf.GGML_QUANT_SIZES.items()} == h.GGML_SIZES


def test_file_types_match_the_gguf_package() -> None:
    expected = {t.value: t.name.removeprefix("MOSTLY_").removeprefix("ALL_")
                for t in gguf.LlamaFileType if t.name != "GUESSED"}
    assert expected == FILE_TYPES


def test_float32_values_print_as_numpy_prints_them() -> None:
    rng = random.Random(7)
    values = [1e-6, 0.1, 1e-5, 10000.0, 0.0, -2.5, 3.4028234663852886e38, 1.17549435e-38]
    values += [struct.unpack("<f", struct.pack("<I", rng.getrandbits(32) & 0x7F7FFFFF))[0]
               for _ in range(2000)]
    for raw in values:
        value = struct.unpack("<f", struct.pack("<f", raw))[0]
        assert h.f32_shortest(value) == float(str(np.float32(value))), value


def test_long_arrays_stay_in_the_file_until_used(model_path: str) -> None:
    import mmap

    header = h.read_header(model_path)
    tokens = header.kv["tokenizer.ggml.tokens"]
    scores = header.kv["tokenizer.ggml.scores"]
    assert isinstance(tokens, h.LazyArray) and isinstance(tokens, list)
    assert len(tokens) == len(scores) == 262144 and tokens
    with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        eager = h._parse(buf)  # no path: every array read in full
    assert list(tokens) == eager.kv["tokenizer.ggml.tokens"]
    assert tokens[2] == eager.kv["tokenizer.ggml.tokens"][2] and scores == eager.kv[
        "tokenizer.ggml.scores"]
    short = [k for k, v in header.kv.items() if isinstance(v, list) and len(v) <= h.LAZY_ITEMS]
    assert all(type(header.kv[k]) is list for k in short)  # short arrays are read at once
    assert {k: v for k, v in header.kv.items() if not isinstance(v, h.LazyArray)} == {
        k: v for k, v in eager.kv.items() if not isinstance(header.kv[k], h.LazyArray)}
