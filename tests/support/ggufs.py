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


# A Qwen3-30B-A3B-shaped MoE tensor table (config.json of Qwen/Qwen3-30B-A3B: hidden 2048,
# 32 query heads and 4 KV heads of 128, 128 experts of intermediate size 768, vocabulary 151936).
MOE_HIDDEN, MOE_EXPERTS, MOE_FFN, MOE_VOCAB, MOE_HEADS, MOE_KV_HEADS, MOE_HEAD = 2048, 128, 768, 151936, 32, 4, 128


def moe_tensors(layers: int, dense: GGMLQuantizationType,
                experts: GGMLQuantizationType) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """(name, shape as rows..., cols, type): attention/router/norms in ``dense``, routed experts in
    ``experts``, like the mixed-precision files of Unsloth's dynamic quants."""
    f32 = GGMLQuantizationType.F32
    q, kv = MOE_HEADS * MOE_HEAD, MOE_KV_HEADS * MOE_HEAD
    out: list[tuple[str, tuple[int, ...], GGMLQuantizationType]] = [
        ("token_embd.weight", (MOE_VOCAB, MOE_HIDDEN), dense)]
    for i in range(layers):
        out += [(f"blk.{i}.attn_norm.weight", (MOE_HIDDEN,), f32),
                (f"blk.{i}.attn_q.weight", (q, MOE_HIDDEN), dense),
                (f"blk.{i}.attn_k.weight", (kv, MOE_HIDDEN), dense),
                (f"blk.{i}.attn_v.weight", (kv, MOE_HIDDEN), dense),
                (f"blk.{i}.attn_output.weight", (MOE_HIDDEN, q), dense),
                (f"blk.{i}.ffn_norm.weight", (MOE_HIDDEN,), f32),
                (f"blk.{i}.ffn_gate_inp.weight", (MOE_EXPERTS, MOE_HIDDEN), f32),
                (f"blk.{i}.ffn_gate_exps.weight", (MOE_EXPERTS, MOE_FFN, MOE_HIDDEN), experts),
                (f"blk.{i}.ffn_up_exps.weight", (MOE_EXPERTS, MOE_FFN, MOE_HIDDEN), experts),
                (f"blk.{i}.ffn_down_exps.weight", (MOE_EXPERTS, MOE_HIDDEN, MOE_FFN), experts)]
    out += [("output_norm.weight", (MOE_HIDDEN,), f32), ("output.weight", (MOE_VOCAB, MOE_HIDDEN), dense)]
    return out


def tensor_bytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def write_moe_header(path: Path, *, layers: int = 48,
                     dense: GGMLQuantizationType = GGMLQuantizationType.BF16,
                     experts: GGMLQuantizationType = GGMLQuantizationType.Q4_K) -> int:
    """Write a sparse full-size Qwen3-30B-A3B-shaped GGUF; return the file size."""
    writer = GGUFWriter(str(path), "qwen3moe")
    writer.add_block_count(layers)
    writer.add_context_length(40960)
    writer.add_embedding_length(MOE_HIDDEN)
    writer.add_expert_count(MOE_EXPERTS)
    tensors = moe_tensors(layers, dense, experts)
    for name, shape, qtype in tensors:
        block, type_size = GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * type_size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), tensor_bytes(shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    size = path.stat().st_size + sum(tensor_bytes(s, q) + 32 for _, s, q in tensors)
    with path.open("r+b") as handle:
        handle.truncate(size)
    return size
