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


# --- whole-model headers for models the catalog lacks (fit reads their shape from the header)

Tensors = list[tuple[str, tuple[int, ...], GGMLQuantizationType]]


def write_gguf(path: Path, arch: str, metadata: dict[str, int], tensors: Tensors, *, sparse: bool = True) -> int:
    """A GGUF whose header holds ``metadata`` (``{arch}.`` keys, uint32) and the tensor table;
    the tensor data is a sparse hole (or absent with ``sparse=False``: the header alone,
    as a Hub stand-in serves it). Returns the full file size."""
    writer = GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        writer.add_uint32(f"{arch}.{key}", value)
    for name, shape, qtype in tensors:
        block, type_size = GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * type_size)
        writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), tensor_bytes(shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    size = path.stat().st_size + sum(tensor_bytes(s, q) + 32 for _, s, q in tensors)
    if sparse:
        with path.open("r+b") as handle:
            handle.truncate(size)
    return size


def _attention(i: int, hidden: int, heads: int, kv_heads: int, head: int,
               q: GGMLQuantizationType) -> Tensors:
    f32 = GGMLQuantizationType.F32
    return [(f"blk.{i}.attn_norm.weight", (hidden,), f32),
            (f"blk.{i}.attn_q.weight", (heads * head, hidden), q),
            (f"blk.{i}.attn_k.weight", (kv_heads * head, hidden), q),
            (f"blk.{i}.attn_v.weight", (kv_heads * head, hidden), q),
            (f"blk.{i}.attn_output.weight", (hidden, heads * head), q),
            (f"blk.{i}.ffn_norm.weight", (hidden,), f32)]


def _dense_ffn(i: int, hidden: int, ffn: int, q: GGMLQuantizationType) -> Tensors:
    return [(f"blk.{i}.ffn_gate.weight", (ffn, hidden), q), (f"blk.{i}.ffn_up.weight", (ffn, hidden), q),
            (f"blk.{i}.ffn_down.weight", (hidden, ffn), q)]


# Llama 3.3 70B (config.json of meta-llama/Llama-3.3-70B-Instruct): 80 layers, hidden 8192,
# 64 query heads, 8 KV heads of 128, intermediate 28672, vocabulary 128256, 131072 positions.
LLAMA70B = {"block_count": 80, "embedding_length": 8192, "attention.head_count": 64,
            "attention.head_count_kv": 8, "attention.key_length": 128, "context_length": 131072}


def llama70b_tensors(q: GGMLQuantizationType = GGMLQuantizationType.Q4_K) -> Tensors:
    out: Tensors = [("token_embd.weight", (128256, 8192), q)]
    for i in range(80):
        out += _attention(i, 8192, 64, 8, 128, q) + _dense_ffn(i, 8192, 28672, q)
    return [*out, ("output_norm.weight", (8192,), GGMLQuantizationType.F32), ("output.weight", (128256, 8192), q)]


# DeepSeek-V2-Lite (config.json of deepseek-ai/DeepSeek-V2-Lite): MLA with kv_lora_rank 512 and
# qk_rope_head_dim 64 (qk_nope_head_dim 128, v_head_dim 128), 16 heads, hidden 2048, 27 layers
# (the first dense, intermediate 10944), 64 routed experts (6 per token) of 1408 plus 2 shared,
# vocabulary 102400, 163840 positions.
DSV2_LITE = {"block_count": 27, "embedding_length": 2048, "attention.head_count": 16,
             "attention.head_count_kv": 16, "attention.key_length": 192, "attention.value_length": 128,
             "attention.kv_lora_rank": 512, "rope.dimension_count": 64, "expert_count": 64,
             "expert_used_count": 6, "expert_shared_count": 2, "context_length": 163840}


def dsv2_lite_tensors(q: GGMLQuantizationType = GGMLQuantizationType.Q8_0) -> Tensors:
    """In Q8_0: Q4_K's 256-value blocks do not divide its 1408- and 10944-wide rows."""
    f32 = GGMLQuantizationType.F32
    out: Tensors = [("token_embd.weight", (102400, 2048), q)]
    for i in range(27):
        out += [(f"blk.{i}.attn_norm.weight", (2048,), f32),
                (f"blk.{i}.attn_q.weight", (16 * 192, 2048), q),
                (f"blk.{i}.attn_kv_a_mqa.weight", (512 + 64, 2048), q),
                (f"blk.{i}.attn_kv_a_norm.weight", (512,), f32),
                (f"blk.{i}.attn_kv_b.weight", (16 * (128 + 128), 512), q),
                (f"blk.{i}.attn_output.weight", (2048, 16 * 128), q),
                (f"blk.{i}.ffn_norm.weight", (2048,), f32)]
        if i == 0:
            out += _dense_ffn(i, 2048, 10944, q)
            continue
        out += [(f"blk.{i}.ffn_gate_inp.weight", (64, 2048), f32),
                (f"blk.{i}.ffn_gate_exps.weight", (64, 1408, 2048), q),
                (f"blk.{i}.ffn_up_exps.weight", (64, 1408, 2048), q),
                (f"blk.{i}.ffn_down_exps.weight", (64, 2048, 1408), q),
                (f"blk.{i}.ffn_gate_shexp.weight", (2 * 1408, 2048), q),
                (f"blk.{i}.ffn_up_shexp.weight", (2 * 1408, 2048), q),
                (f"blk.{i}.ffn_down_shexp.weight", (2048, 2 * 1408), q)]
    return [*out, ("output_norm.weight", (2048,), f32), ("output.weight", (102400, 2048), q)]


# Gemma 3 27B (config.json of google/gemma-3-27b-it, text_config): 62 layers, hidden 5376,
# 32 query heads and 16 KV heads of 128, sliding window 1024 on 5 of every 6 layers,
# intermediate 21504, vocabulary 262208, 131072 positions; tied embeddings (no output.weight).
GEMMA3_27B = {"block_count": 62, "embedding_length": 5376, "attention.head_count": 32,
              "attention.head_count_kv": 16, "attention.key_length": 128, "attention.sliding_window": 1024,
              "context_length": 131072}


def gemma3_27b_tensors(q: GGMLQuantizationType = GGMLQuantizationType.Q4_K) -> Tensors:
    out: Tensors = [("token_embd.weight", (262208, 5376), q)]
    for i in range(62):
        out += _attention(i, 5376, 32, 16, 128, q) + _dense_ffn(i, 5376, 21504, q)
    return [*out, ("output_norm.weight", (5376,), GGMLQuantizationType.F32)]
