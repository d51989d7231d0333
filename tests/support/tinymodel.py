"""A tiny Qwen2 GGUF for tests against a real llama-server: 2 layers, random weights.

The vocabulary, merges and chat template are copied from a vocab-only GGUF that
llama.cpp ships (``models/ggml-vocab-qwen2.gguf`` in its sources, vendored in
the llama-cpp-python sdist), so the server tokenizes real text and applies the
real ChatML template. The weights are random (fixed seed): the model answers
deterministically but says nothing sensible, which is what the tests need.

``PEAKED`` is a variant for the quality canary's tests: a head dimension of 32
(llama.cpp's q4_0 KV cache needs its block size, 32, to divide it; the default's
16 cannot take it), an output norm of 8 so the next-token distribution has a
clear top token (the default's logits are flat: about -11.9 for every token of
151936), and attention and FFN outputs 4x larger so the context moves the
residual stream and a changed KV cache or quant changes the numbers. The same
weights written with the repeating layers in Q8_0 (``layer_type``) are "another
quant of the same model".

    python -m tests.tinymodel VOCAB.gguf OUT.gguf
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

ARCH = "qwen2"
LAYERS = 2
EMBED = 64
HEADS = 4
KV_HEADS = 2
FFN = 128
TRAIN_CONTEXT = 32768
SEED = 20240611



@dataclass(frozen=True)
class Shape:
    layers: int = LAYERS
    embed: int = EMBED
    heads: int = HEADS
    kv_heads: int = KV_HEADS
    ffn: int = FFN
    output_gain: float = 1.0  # output_norm.weight: scales every logit
    residual_gain: float = 1.0  # attn_output and ffn_down: how far the context moves the residual stream
    layer_type: GGMLQuantizationType = GGMLQuantizationType.F32  # the repeating layers' matrices

    @property
    def head_dim(self) -> int:
        return self.embed // self.heads


DEFAULT = Shape()
PEAKED = Shape(heads=2, kv_heads=1, output_gain=8.0, residual_gain=4.0)

# Keys copied verbatim from the vocab file (whatever of them it has).
_TOKENIZER_PREFIXES = ("tokenizer.",)


def _field_value(reader: GGUFReader, key: str) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    field = reader.fields[key]
    kind = field.types[0]
    sub = field.types[-1] if kind == GGUFValueType.ARRAY and len(field.types) > 1 else None
    return field.contents(), kind, sub


def write_tiny_model(vocab_gguf: Path, out: Path, *, name: str = "tiny-qwen2",
                     seed: int = SEED, shape: Shape = DEFAULT) -> Path:
    """Write a small Qwen2 GGUF of ``shape`` with ``vocab_gguf``'s tokenizer to ``out``; return ``out``."""
    reader = GGUFReader(vocab_gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch != ARCH:
        raise ValueError(f"{vocab_gguf}: vocabulary of a {arch} model, expected {ARCH}")
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    writer = GGUFWriter(out, ARCH)
    writer.add_name(name)
    writer.add_context_length(TRAIN_CONTEXT)
    writer.add_embedding_length(shape.embed)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(int(GGMLQuantizationType.F32))
    for key in reader.fields:
        if not key.startswith(_TOKENIZER_PREFIXES):
            continue
        value, kind, sub = _field_value(reader, key)
        writer.add_key_value(key, value, kind, sub_type=sub)

    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int, gain: float = 1.0) -> np.ndarray[Any, np.dtype[np.float32]]:
        values: np.ndarray[Any, np.dtype[np.float32]] = (rng.standard_normal((rows, cols))
                                                         / np.sqrt(cols)).astype(np.float32)
        return values if gain == 1.0 else (values * np.float32(gain)).astype(np.float32)

    def matrix(tensor: str, values: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        if shape.layer_type == GGMLQuantizationType.F32:
            writer.add_tensor(tensor, values)
        else:
            writer.add_tensor(tensor, quantize(values, shape.layer_type), raw_dtype=shape.layer_type)

    embed_n, ffn, kv = shape.embed, shape.ffn, shape.kv_heads * shape.head_dim
    # The embedding (also the output layer: qwen2 ties them when output.weight is absent)
    # is most of the file: Q8_0 keeps it at ~10 MB for Qwen2's 151936 tokens.
    embed = weight(n_vocab, embed_n)
    writer.add_tensor("token_embd.weight", quantize(embed, GGMLQuantizationType.Q8_0),
                      raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", np.full(embed_n, shape.output_gain, dtype=np.float32))
    for i in range(shape.layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(embed_n, dtype=np.float32))
        matrix(p + "attn_q.weight", weight(embed_n, embed_n))
        matrix(p + "attn_k.weight", weight(kv, embed_n))
        matrix(p + "attn_v.weight", weight(kv, embed_n))
        writer.add_tensor(p + "attn_q.bias", np.zeros(embed_n, dtype=np.float32))
        writer.add_tensor(p + "attn_k.bias", np.zeros(kv, dtype=np.float32))
        writer.add_tensor(p + "attn_v.bias", np.zeros(kv, dtype=np.float32))
        matrix(p + "attn_output.weight", weight(embed_n, embed_n, shape.residual_gain))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(embed_n, dtype=np.float32))
        matrix(p + "ffn_gate.weight", weight(ffn, embed_n))
        matrix(p + "ffn_up.weight", weight(ffn, embed_n))
        matrix(p + "ffn_down.weight", weight(embed_n, ffn, shape.residual_gain))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 1
    path = write_tiny_model(Path(argv[0]), Path(argv[1]))
    print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
