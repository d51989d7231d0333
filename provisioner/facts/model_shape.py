"""A model's shape from its own files: config.json + safetensors headers, or a GGUF header (pure).

For a model the catalog lacks, fit needs what the catalog would say: layers, hidden
size, heads, KV heads, head size, experts (routed, active, shared), MLA ranks, which
layers slide over a window, the native context and the parameter counts. They come
from the model itself, as llama.cpp and vLLM read them:

- GGUF: ``{arch}.block_count``, ``.embedding_length``, ``.attention.head_count(_kv)``,
  ``.attention.key_length``, ``.attention.kv_lora_rank``, ``.rope.dimension_count``,
  ``.expert_count``, ``.expert_used_count``, ``.expert_shared_count``,
  ``.attention.sliding_window``, ``.context_length`` (llama.cpp's gguf-py constants);
  parameters are the tensors' element counts, stored bytes their ggml types' sizes.
- config.json (Transformers): ``num_hidden_layers``, ``hidden_size``,
  ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``kv_lora_rank``,
  ``qk_rope_head_dim``, ``num_experts``/``n_routed_experts``/``num_local_experts``,
  ``num_experts_per_tok``, ``n_shared_experts``, ``layer_types``,
  ``sliding_window(_pattern)``, ``max_position_embeddings``, ``rope_scaling``; a
  multimodal config's ``text_config`` holds them. Parameters are counted from the
  safetensors headers (packed 4-bit tensors unpacked, scales left out).

Layouts fit does not model (linear attention, state-space hybrids) are refused with
the reason (catalog/model_architectures.yaml). The result is a dict of ModelSpec
fields without the quants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from provisioner.catalog import catalog_table
from provisioner.errors import ProvisionError
from provisioner.facts.gguf_layout import EXPERT_TENSOR
from provisioner.facts.weights_header import GgufHeader, Tensor

_HF_EXPERT = re.compile(r"\.experts\.|\.experts_|\.experts$")
_HF_EMBED = re.compile(r"(embed_tokens|wte|word_embeddings)\.weight$")
# packed low-bit tensors: 32-bit words (GPTQ/AWQ qweight, compressed-tensors weight_packed)
# or bytes of two FP4 values (MXFP4 *_blocks); their scales and zero points are not parameters
_PACKED_WORD = re.compile(r"(qweight|weight_packed)$")
_FP4_BLOCKS = re.compile(r"_blocks$")
_NOT_PARAMS = re.compile(r"(scales|qzeros|g_idx|weight_scale|weight_scale_inv|input_scale|weight_zero_point|"
                         r"weight_shape|weight_global_scale|input_global_scale)$")


def _table() -> dict[str, Any]:
    return catalog_table("model_architectures")


def refuse_unmodelled(architecture: str, where: str) -> None:
    reason = _table()["refused"].get(architecture)
    if reason is not None:
        raise ProvisionError(f"{where}: architecture {architecture} is not supported: {reason}",
                             hint="fit sizes per-token KV caches (dense/GQA, MoE, MLA, sliding window) only; "
                             "serve it without provision's fit, or pick another model")


def _sliding_layers(layers: int, pattern: int) -> int:
    return sum(1 for il in range(layers) if il % pattern < pattern - 1)


def _moe(total_params: int, expert_params: int, experts: int, active: int, embed: int) -> dict[str, Any]:
    """Active parameters: all but the input embedding table (one row is read) and the
    routed experts not chosen for the token (predict.py reads it so)."""
    unused = expert_params * (1 - active / experts) if experts else 0
    return {"params_total": total_params, "params_active": max(int(total_params - embed - unused), 1),
            "experts_total": experts, "experts_active": active if experts else 0,
            "expert_params_fraction": round(expert_params / total_params, 4) if experts else 0.0}


def _first(value: Any) -> int:
    """A per-layer array (some GGUFs store head counts per layer) -> its one value."""
    if isinstance(value, list):
        distinct = {int(v) for v in value}
        if len(distinct) != 1:
            raise ValueError(f"per-layer values differ ({sorted(distinct)})")
        return distinct.pop()
    return int(value)


def from_gguf(header: GgufHeader, name: str, source: str) -> dict[str, Any]:
    """The shape from a GGUF header (``tensors``: every shard's)."""
    meta = header.metadata
    arch = str(meta.get("general.architecture", ""))
    refuse_unmodelled(arch, source)

    def key(suffix: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{suffix}", default)

    try:
        layers = int(key("block_count"))
        hidden = int(key("embedding_length"))
        heads = _first(key("attention.head_count"))
        kv_heads = _first(key("attention.head_count_kv", heads))
    except (TypeError, ValueError) as exc:
        raise ProvisionError(f"{source}: the GGUF header lacks what fit needs ({arch}.block_count, "
                             f"embedding_length, attention.head_count(_kv)): {exc}",
                             hint="is it a language model's GGUF (not a projector or an embedding model)?") from None
    head_dim = int(key("attention.key_length") or hidden // heads)
    out: dict[str, Any] = {"name": name, "architecture": arch, "layers": layers, "hidden_size": hidden,
                           "attention": "gqa", "attention_heads": heads, "kv_heads": kv_heads, "head_dim": head_dim}
    rank = key("attention.kv_lora_rank")
    if rank:
        out.update(attention="mla", kv_lora_rank=int(rank), qk_rope_head_dim=int(key("rope.dimension_count")))
    window = key("attention.sliding_window")
    pattern = _table()["swa_pattern"].get(arch)
    if window and pattern:
        out.update(attention="gqa-sliding", sliding_window=int(window),
                   sliding_window_layers=_sliding_layers(layers, int(pattern)))
    tensors = header.tensors
    total = sum(t.elements for t in tensors)
    experts = sum(t.elements for t in tensors if EXPERT_TENSOR.search(t.name))
    tied = not any(t.name == "output.weight" for t in tensors)
    embed = 0 if tied else sum(t.elements for t in tensors if t.name == "token_embd.weight")
    out.update(_moe(total, experts, int(key("expert_count", 0) or 0), int(key("expert_used_count", 0) or 0), embed))
    context = int(key("context_length", 0) or 0)
    if context <= 0:
        raise ProvisionError(f"{source}: the GGUF header has no {arch}.context_length")
    out.update(native_context=context, max_context=context, yarn_factor=None)
    return out


def _config_int(cfg: dict[str, Any], *names: str, default: int | None = None) -> int:
    for n in names:
        if cfg.get(n) is not None:
            return int(cfg[n])
    if default is None:
        raise KeyError(names[0])
    return default


def _sliding(cfg: dict[str, Any], layers: int, model_type: str, source: str) -> dict[str, Any]:
    kinds = cfg.get("layer_types")
    known = _table()["layer_types"]
    if isinstance(kinds, list) and kinds:
        unknown = sorted({k for k in kinds if k not in known})
        if unknown:
            raise ProvisionError(f"{source}: layer_types {', '.join(unknown)} are not modelled (fit sizes "
                                 "full and sliding-window attention layers only)",
                                 hint="such layers keep a state fit cannot size; serve it without provision's fit")
        sliding = sum(1 for k in kinds if known[k] == "sliding")
    elif cfg.get("sliding_window_pattern"):
        sliding = _sliding_layers(layers, int(cfg["sliding_window_pattern"]))
    elif model_type in _table()["swa_pattern"]:
        sliding = _sliding_layers(layers, int(_table()["swa_pattern"][model_type]))
    else:
        sliding = 0  # a sliding_window alone (Qwen, Mistral configs) is not used by the engines
    if sliding and cfg.get("sliding_window"):
        return {"attention": "gqa-sliding", "sliding_window": int(cfg["sliding_window"]),
                "sliding_window_layers": sliding}
    return {}


def _context(cfg: dict[str, Any]) -> dict[str, Any]:
    native = _config_int(cfg, "max_position_embeddings", "n_positions", "seq_length")
    return {"native_context": native, "max_context": native, "yarn_factor": None}


def logical_elements(tensor: Tensor, bits: int) -> int:
    """Parameters a safetensors tensor holds (packed formats unpacked; scales are 0)."""
    if _NOT_PARAMS.search(tensor.name):
        return 0
    if _PACKED_WORD.search(tensor.name) and tensor.dtype in {"I32", "U32"}:
        return tensor.elements * (32 // bits)
    if _FP4_BLOCKS.search(tensor.name) and tensor.dtype == "U8":
        return tensor.elements * 2
    return tensor.elements


def quant_bits(config: dict[str, Any]) -> int:
    q = config.get("quantization_config") or {}
    if q.get("bits"):
        return int(q["bits"])
    for group in (q.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        if weights.get("num_bits"):
            return int(weights["num_bits"])
    return 4


def from_config(config: dict[str, Any], tensors: Iterable[Tensor], name: str, source: str) -> dict[str, Any]:
    """The shape from config.json and the safetensors headers of every shard."""
    cfg = {**config, **(config.get("text_config") or {})}
    model_type = str(cfg.get("model_type") or config.get("model_type") or "")
    refuse_unmodelled(model_type, source)
    try:
        layers = _config_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
        hidden = _config_int(cfg, "hidden_size", "d_model", "n_embd")
        heads = _config_int(cfg, "num_attention_heads", "n_head")
        kv_heads = _config_int(cfg, "num_key_value_heads", default=heads)
        out: dict[str, Any] = {"name": name, "architecture": model_type, "layers": layers, "hidden_size": hidden,
                               "attention": "gqa", "attention_heads": heads, "kv_heads": kv_heads,
                               "head_dim": _config_int(cfg, "head_dim", default=hidden // heads)}
        if cfg.get("kv_lora_rank"):
            rope = _config_int(cfg, "qk_rope_head_dim")
            out.update(attention="mla", kv_lora_rank=int(cfg["kv_lora_rank"]), qk_rope_head_dim=rope,
                       head_dim=_config_int(cfg, "qk_nope_head_dim") + rope)
        out.update(_sliding(cfg, layers, model_type, source))
        experts = _config_int(cfg, "num_experts", "n_routed_experts", "num_local_experts", default=0)
        active = _config_int(cfg, "num_experts_per_tok", "moe_top_k", default=0) if experts else 0
        out.update(_context(cfg))
    except KeyError as exc:
        raise ProvisionError(f"{source}: config.json has no {exc.args[0]}",
                             hint="is it a causal language model's config.json?") from None
    bits = quant_bits(config)
    total = expert = embed = 0
    for t in tensors:
        n = logical_elements(t, bits)
        total += n
        expert += n if _HF_EXPERT.search(t.name) else 0
        embed += n if _HF_EMBED.search(t.name) else 0
    if total <= 0:
        raise ProvisionError(f"{source}: no weight tensors found in the safetensors headers")
    if cfg.get("tie_word_embeddings"):
        embed = 0  # the same table is the output layer: read in full every token
    out.update(_moe(total, expert, experts, active, embed))
    return out
