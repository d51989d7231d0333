"""The headers of weight files, parsed from their first bytes (pure).

A GGUF file starts with its metadata and tensor table (the GGUF spec,
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic ``GGUF``, version,
tensor count, key/value count, the key/values, then per tensor its name, dimensions,
ggml type and data offset. A safetensors file starts with an 8-byte little-endian
length and that many bytes of JSON: per tensor its dtype and shape
(https://huggingface.co/docs/safetensors/index, "Format"). Both can be read from a
prefix of the file, which is what the Hub serves to a Range request; a prefix too
short raises ``Truncated`` with the length known so far, and the caller asks for more.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from math import prod
from typing import Any

_MAGIC = b"GGUF"
# GGUF value types -> struct format; 8 is a string, 9 an array (gguf.md, "gguf_metadata_value_type")
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# arrays longer than this (the tokenizer's vocabulary) are counted, not kept
_KEEP_ARRAY = 4096


class Truncated(Exception):
    """The prefix ends inside the header; ``need`` bytes are known to be required."""

    def __init__(self, need: int) -> None:
        super().__init__(f"header needs more than {need} bytes")
        self.need = need


class BadHeader(ValueError):
    pass


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # elements per dimension
    dtype: str  # ggml type name (Q4_K, BF16, ...) or safetensors dtype (BF16, F8_E4M3, I32, U8, ...)
    nbytes: int

    @property
    def elements(self) -> int:
        return prod(self.shape)


@dataclass(frozen=True)
class GgufHeader:
    metadata: dict[str, Any]
    tensors: tuple[Tensor, ...]
    header_bytes: int


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, size: int) -> memoryview:
        end = self.pos + size
        if end > len(self.data):
            raise Truncated(end)
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.scalar("<I"), self.scalar("<Q")
            if inner in _SCALARS and inner != 7:
                fmt = _SCALARS[inner]
                raw = self.take(struct.calcsize(fmt) * count)
                if count > _KEEP_ARRAY:
                    return count
                return list(struct.unpack(f"<{count}{fmt[1]}", raw))
            items = [self.value(inner) for _ in range(count)]
            return items if count <= _KEEP_ARRAY else count
        raise BadHeader(f"unknown GGUF value type {kind}")


def parse_gguf(data: bytes) -> GgufHeader:
    """The metadata and tensor table of a GGUF file from its first bytes."""
    # gguf.constants imports the whole gguf package and numpy (~60 ms of every build)
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415 - only when a header is read

    r = _Reader(data)
    if bytes(r.take(4)) != _MAGIC:
        raise BadHeader("not a GGUF file (no GGUF magic)")
    version = r.scalar("<I")
    if version < 2:
        raise BadHeader(f"GGUF version {version} predates 64-bit counts (version 2)")
    tensor_count, kv_count = r.scalar("<Q"), r.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = r.string()
        metadata[key] = r.value(r.scalar("<I"))
    tensors: list[Tensor] = []
    for _ in range(tensor_count):
        name = r.string()
        dims = tuple(r.scalar("<Q") for _ in range(r.scalar("<I")))
        kind = r.scalar("<I")
        r.scalar("<Q")  # offset into the data section
        try:
            qtype = GGMLQuantizationType(kind)
        except ValueError:
            raise BadHeader(f"tensor {name}: ggml type {kind} is unknown to this gguf package") from None
        block, size = GGML_QUANT_SIZES[qtype]
        tensors.append(Tensor(name, dims, qtype.name, prod(dims) // block * size))
    return GgufHeader(metadata, tuple(tensors), r.pos)


def safetensors_length(prefix: bytes) -> int:
    """Bytes the header takes, the 8-byte length included."""
    if len(prefix) < 8:
        raise Truncated(8)
    return 8 + int(struct.unpack("<Q", prefix[:8])[0])


# bytes per element of safetensors dtypes (the format's dtype list)
_ST_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
             "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1}


def parse_safetensors(data: bytes) -> tuple[Tensor, ...]:
    need = safetensors_length(data)
    if len(data) < need:
        raise Truncated(need)
    try:
        table = json.loads(bytes(data[8:need]))
    except ValueError as exc:
        raise BadHeader(f"not a safetensors header: {exc}") from None
    out: list[Tensor] = []
    for name, info in table.items():
        if name == "__metadata__":
            continue
        shape = tuple(int(d) for d in info["shape"])
        dtype = str(info["dtype"])
        begin, end = info["data_offsets"]
        out.append(Tensor(name, shape, dtype, int(end) - int(begin)))
    return tuple(out)


def st_element_bytes(dtype: str) -> int:
    return _ST_BYTES.get(dtype, 2)
