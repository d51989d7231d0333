"""safetensors model folders for the shape reader: real headers (the format's 8-byte length
and JSON table, https://huggingface.co/docs/safetensors/index) with sparse tensor data."""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I32": 4, "U8": 1}
Table = dict[str, tuple[str, tuple[int, ...]]]


def header_bytes(tensors: Table) -> tuple[bytes, int]:
    """(the header, the size of the data after it)."""
    table: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = prod(shape) * BYTES[dtype]
        table[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    body = json.dumps(table).encode()
    return struct.pack("<Q", len(body)) + body, offset


def write_safetensors(path: Path, tensors: Table, *, sparse: bool = True) -> int:
    header, data = header_bytes(tensors)
    path.write_bytes(header)
    if sparse:
        with path.open("r+b") as handle:
            handle.truncate(len(header) + data)
    return len(header) + data


# Qwen3-30B-A3B (config.json of Qwen/Qwen3-30B-A3B): 48 layers, hidden 2048, 32 query heads and
# 4 KV heads of 128, 128 experts (8 per token) of intermediate 768, vocabulary 151936, 40960
# positions, untied embeddings, bfloat16.
QWEN3_30B_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "vocab_size": 151936,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "sliding_window": None, "use_sliding_window": False,
}


def qwen3_30b_layer(i: int) -> Table:
    p = f"model.layers.{i}"
    out: Table = {f"{p}.input_layernorm.weight": ("BF16", (2048,)),
                  f"{p}.post_attention_layernorm.weight": ("BF16", (2048,)),
                  f"{p}.self_attn.q_proj.weight": ("BF16", (4096, 2048)),
                  f"{p}.self_attn.k_proj.weight": ("BF16", (512, 2048)),
                  f"{p}.self_attn.v_proj.weight": ("BF16", (512, 2048)),
                  f"{p}.self_attn.o_proj.weight": ("BF16", (2048, 4096)),
                  f"{p}.self_attn.q_norm.weight": ("BF16", (128,)),
                  f"{p}.self_attn.k_norm.weight": ("BF16", (128,)),
                  f"{p}.mlp.gate.weight": ("BF16", (128, 2048))}
    for e in range(128):
        out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = ("BF16", (768, 2048))
        out[f"{p}.mlp.experts.{e}.up_proj.weight"] = ("BF16", (768, 2048))
        out[f"{p}.mlp.experts.{e}.down_proj.weight"] = ("BF16", (2048, 768))
    return out


def write_qwen3_30b(folder: Path, shards: int = 2) -> list[int]:
    """config.json and ``shards`` safetensors files; returns their sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(QWEN3_30B_CONFIG), encoding="utf-8")
    tables: list[Table] = [{} for _ in range(shards)]
    tables[0]["model.embed_tokens.weight"] = ("BF16", (151936, 2048))
    for i in range(48):
        tables[i * shards // 48].update(qwen3_30b_layer(i))
    tables[-1]["model.norm.weight"] = ("BF16", (2048,))
    tables[-1]["lm_head.weight"] = ("BF16", (151936, 2048))
    return [write_safetensors(folder / f"model-{n + 1:05d}-of-{shards:05d}.safetensors", t)
            for n, t in enumerate(tables)]
