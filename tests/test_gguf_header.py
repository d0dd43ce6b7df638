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
