"""KV cache bytes per token and per sequence, in closed form (pure): GQA caches K and V
per KV head, MLA its compressed latent plus the rope part, sliding-window layers only
their window. docs/models.md shows the formulas; the tests hold each to them exactly.
"""

from __future__ import annotations

from provisioner.profile.resolve import Spec

# Bytes per cached element. GGML block formats: q8_0 stores 32 values in 34
# bytes, q4_0 in 18, q4_1 in 20, q5_0 in 22, q5_1 in 24, iq4_nl in 18
# (ggml/src/ggml-common.h block structs).
KV_BYTES_PER_ELEMENT = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "auto": 2.0,
    "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
    "iq4_nl": 18 / 32, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
}
UNQUANTISED_KV = {"f32", "f16", "bf16", "auto"}


def kv_bytes_per_token(spec: Spec) -> int:
    """KV cache bytes for one token of context, over all layers (full-attention view)."""
    m = spec.model
    k_size = KV_BYTES_PER_ELEMENT.get(spec.profile.model.kv_cache_k, 2.0)
    v_size = KV_BYTES_PER_ELEMENT.get(spec.profile.model.kv_cache_value, 2.0)
    if m.attention == "mla" and m.kv_lora_rank and m.qk_rope_head_dim:
        # MLA caches the compressed latent plus the rope part, once per layer.
        return int(m.layers * (m.kv_lora_rank + m.qk_rope_head_dim) * k_size)
    per_layer = m.kv_heads * m.head_dim * (k_size + v_size)
    return int(m.layers * per_layer)


def kv_cache_bytes(spec: Spec, context: int) -> int:
    """KV cache of one sequence holding ``context`` tokens."""
    m = spec.model
    per_token = kv_bytes_per_token(spec)
    if m.attention == "gqa-sliding" and m.sliding_window and m.sliding_window_layers:
        # Sliding-window layers only keep the last `sliding_window` tokens.
        per_layer = per_token / m.layers
        full = (m.layers - m.sliding_window_layers) * per_layer * context
        window = m.sliding_window_layers * per_layer * min(context, m.sliding_window)
        return int(full + window)
    return per_token * context
