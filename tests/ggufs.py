"""GGUF files for the model checks, written with the `gguf` package: headers with
real-size tensor tables, and sparse data so a multi-GB layout costs no disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

# A Llama-3.1-8B-shaped tensor table (config.json of meta-llama/Llama-3.1-8B-Instruct).
HIDDEN, FFN, LAYERS, VOCAB, KV = 4096, 14336, 32, 128256, 1024


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write_llama8b_header(path: Path, *, qtype: GGMLQuantizationType = GGMLQuantizationType.Q4_K,
                         layers: int = LAYERS, context: int = 131072, arch: str = "llama") -> int:
    """Write a header whose tensors describe a full 8B model; return the full file size."""
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(context)
    writer.add_embedding_length(HIDDEN)
    shapes: list[tuple[str, tuple[int, int]]] = [("token_embd.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        shapes += [(f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN)), (f"blk.{i}.attn_k.weight", (KV, HIDDEN)),
                   (f"blk.{i}.attn_v.weight", (KV, HIDDEN)), (f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN)),
                   (f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN)), (f"blk.{i}.ffn_up.weight", (FFN, HIDDEN)),
                   (f"blk.{i}.ffn_down.weight", (HIDDEN, FFN))]
    shapes.append(("output.weight", (VOCAB, HIDDEN)))
    block, type_size = GGML_QUANT_SIZES[qtype]
    for name, (rows, cols) in shapes:
        # quantised tensors are described by their byte shape: rows x (bytes per row)
        byte_shape = (rows, cols // block * type_size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), _nbytes((rows, cols), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    data = sum(_nbytes(shape, qtype) + 32 for _, shape in shapes)  # alignment padding, at most 32 each
    size = path.stat().st_size + data
    with path.open("r+b") as handle:
        handle.truncate(size)  # sparse: the tensor data reads as zeros
    return size
