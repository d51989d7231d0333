"""Models the catalog lacks, read from their own files: a local GGUF (a real header for a
large model, sparse data) and a local safetensors folder with config.json. Their KV cache
per token is the closed-form formula for GQA, MLA and sliding windows, as for catalog models."""

from __future__ import annotations

import json
import time
from math import prod
from pathlib import Path
from typing import Any

import pytest
import yaml
from gguf import GGMLQuantizationType

from provisioner.catalog import load_catalog
from provisioner.cli import main
from provisioner.errors import ProvisionError
from provisioner.facts.model_shape import logical_elements, quant_bits
from provisioner.facts.weights_header import Tensor
from provisioner.fit import fit
from provisioner.fit.kv import kv_bytes_per_token, kv_cache_bytes
from provisioner.profile.loader import load_profile
from provisioner.profile.model_source import shape_record, shapes_dir
from provisioner.profile.resolve import Spec, resolve
from tests.conftest import make_profile
from tests.support.ggufs import (
    DSV2_LITE,
    GEMMA3_27B,
    LLAMA70B,
    MOE_EXPERTS,
    MOE_HEAD,
    MOE_HEADS,
    MOE_HIDDEN,
    MOE_KV_HEADS,
    dsv2_lite_tensors,
    gemma3_27b_tensors,
    llama70b_tensors,
    moe_tensors,
    write_gguf,
)
from tests.support.safetensors_files import QWEN3_30B_CONFIG, write_qwen3_30b

F16 = 2  # bytes per cached element at kv_cache f16


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no test reaches a network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _gguf_profile(tmp_path: Path, model_id: str, arch: str, meta: dict[str, int], tensors: Any,
                  quant: str = "Q4_K_M", **patch: object) -> Path:
    path = tmp_path / "models" / f"{model_id.replace('/', '-')}-{quant}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    size = write_gguf(path, arch, meta, tensors)
    source = {"files": [{"path": str(path), "bytes": size, "sha256": "0" * 64}]}
    return make_profile(tmp_path, {"model.id": model_id, "model.quant": quant, "model.source": source,
                                   "model.context": 32768, "model.kv_cache": "f16", **patch},
                        name=f"{model_id.replace('/', '-')}.yaml")


def _spec(path: Path) -> Spec:
    return resolve(load_profile(path))


def test_dense_gqa_from_a_local_gguf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _gguf_profile(tmp_path, "acme/llama-70b-finetune", "llama", LLAMA70B, llama70b_tensors())
    spec = _spec(path)
    m = spec.model
    assert (m.layers, m.hidden_size, m.attention_heads, m.kv_heads, m.head_dim) == (80, 8192, 64, 8, 128)
    assert m.attention == "gqa" and not m.is_moe and m.native_context == 131072
    # every parameter of the tensor table, counted
    assert m.params_total == sum(prod(s) for _, s, _ in llama70b_tensors())
    assert kv_bytes_per_token(spec) == 80 * 8 * 128 * 2 * F16  # layers x KV heads x head x (K+V) x bytes
    # the same number the catalog's Llama 3.3 70B gives
    catalog = load_catalog().models["llama-3.3-70b"]
    assert kv_bytes_per_token(spec) == catalog.layers * catalog.kv_heads * catalog.head_dim * 2 * F16
    assert spec.quant.format == "gguf" and spec.quant.bytes == Path(
        spec.profile.model.source.files[0].path).stat().st_size  # type: ignore[index]
    assert spec.layout is not None and spec.layout.layers == 80
    with pytest.raises(SystemExit) as done:
        main.main(["fit", str(path), "--json"])
    assert done.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["weights_from"].startswith("GGUF header of")
    assert out["kv_bytes_per_token"] == 327680


def test_mla_from_a_local_gguf(tmp_path: Path) -> None:
    spec = _spec(_gguf_profile(tmp_path, "acme/dsv2-lite", "deepseek2", DSV2_LITE, dsv2_lite_tensors(),
                                 quant="Q8_0"))
    m = spec.model
    assert m.attention == "mla" and (m.kv_lora_rank, m.qk_rope_head_dim) == (512, 64)
    assert (m.experts_total, m.experts_active) == (64, 6)
    # MLA caches the latent and the rope part once per layer: 27 x (512 + 64) x 2 bytes
    assert kv_bytes_per_token(spec) == 27 * (512 + 64) * F16
    catalog = load_catalog().models["deepseek-v3"]  # the catalog's MLA model, same formula
    assert catalog.kv_lora_rank == 512 and catalog.qk_rope_head_dim == 64
    # experts: the routed tensors' share; active: the dense part and 6 of 64 experts
    experts = sum(prod(s) for n, s, _ in dsv2_lite_tensors() if "_exps" in n)
    assert m.expert_params_fraction == pytest.approx(experts / m.params_total, abs=1e-4)
    assert m.params_active < m.params_total * 0.2
    assert fit(spec).fits


def test_sliding_window_from_a_local_gguf(tmp_path: Path) -> None:
    spec = _spec(_gguf_profile(tmp_path, "acme/gemma3-27b-tune", "gemma3", GEMMA3_27B, gemma3_27b_tensors()))
    m = spec.model
    # llama.cpp's Gemma 3 pattern: 5 sliding layers, then 1 full (il % 6 < 5)
    assert m.attention == "gqa-sliding" and m.sliding_window == 1024 and m.sliding_window_layers == 52
    per_layer = 16 * 128 * 2 * F16
    assert kv_bytes_per_token(spec) == 62 * per_layer
    ctx = 32768
    assert kv_cache_bytes(spec, ctx) == (10 * ctx + 52 * 1024) * per_layer
    assert fit(spec).kv_bytes_per_sequence == (10 * ctx + 52 * 1024) * per_layer


def test_validate_and_fit_read_the_cache_not_the_file_again(tmp_path: Path) -> None:
    path = _gguf_profile(tmp_path, "acme/llama-70b-finetune", "llama", LLAMA70B, llama70b_tensors())
    first = _spec(path)
    records = list(shapes_dir().glob("*.json"))
    assert len(records) == 1
    started = time.perf_counter()
    again = _spec(path)
    assert time.perf_counter() - started < 1.0
    assert again.model == first.model and again.quant == first.quant
    # what a lock file records: the shape fit used, as plain data
    data = shape_record(again)
    assert data["model"]["layers"] == 80 and data["quant"]["format"] == "gguf"
    assert json.loads(json.dumps(data)) == data


def test_safetensors_folder_with_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "models" / "qwen3-30b"
    sizes = write_qwen3_30b(folder)
    path = make_profile(tmp_path, {
        "model.id": "acme/qwen3-30b-tune", "model.quant": "BF16", "model.source": {"directory": str(folder)},
        "model.context": 32768, "model.kv_cache": "auto", "runtime.engine": "vllm", "runtime.version": "0.11.0",
        "hardware.gpus": [{"model": "h100-sxm", "count": 1}]}, name="st.yaml")
    spec = _spec(path)
    m = spec.model
    assert (m.layers, m.hidden_size, m.attention_heads, m.kv_heads, m.head_dim) == (48, 2048, 32, 4, 128)
    assert (m.experts_total, m.experts_active) == (128, 8) and m.architecture == "qwen3_moe"
    expert = 48 * 128 * 3 * 2048 * 768
    assert m.expert_params_fraction == pytest.approx(expert / m.params_total, abs=1e-4)
    assert m.native_context == QWEN3_30B_CONFIG["max_position_embeddings"]
    assert spec.quant.format == "safetensors" and spec.quant.method == "bf16" and spec.quant.bytes == sum(sizes)
    assert kv_bytes_per_token(spec) == 48 * 4 * 128 * 2 * F16
    catalog = load_catalog().models["qwen3-30b-a3b"]
    assert m.params_total == pytest.approx(catalog.params_total, rel=0.01)
    with pytest.raises(SystemExit) as done:
        main.main(["fit", str(path), "--json"])
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out)["fits"]


def test_a_catalog_model_takes_any_gguf_quant_from_its_header(tmp_path: Path) -> None:
    """Q6_K is no catalog quant of Qwen3-30B-A3B and BF16 is a safetensors one there: a GGUF
    file of either is read from its header instead of refused."""
    meta = {"block_count": 48, "embedding_length": MOE_HIDDEN, "attention.head_count": MOE_HEADS,
            "attention.head_count_kv": MOE_KV_HEADS, "attention.key_length": MOE_HEAD,
            "expert_count": MOE_EXPERTS, "expert_used_count": 8, "context_length": 40960}
    for quant, qtype in (("Q6_K", GGMLQuantizationType.Q6_K), ("BF16", GGMLQuantizationType.BF16)):
        tensors = moe_tensors(48, qtype, qtype)
        spec = _spec(_gguf_profile(tmp_path, "qwen3-30b-a3b", "qwen3moe", meta, tensors, quant=quant,
                                   **{"model.mode": "thinking"}))
        assert spec.model.name == "Qwen3-30B-A3B"  # the catalog's model, its sampling and parsers kept
        assert spec.quant.format == "gguf" and spec.model.sampling
        assert spec.quant.bits_per_weight == pytest.approx({"Q6_K": 6.5625, "BF16": 16.0}[quant], rel=0.02)


@pytest.mark.parametrize(("config", "words"), [
    ({"model_type": "qwen3_next", "layer_types": ["linear_attention", "full_attention"]},
     "linear-attention (Gated DeltaNet)"),
    ({"model_type": "jamba"}, "state-space (Mamba)"),
    ({"model_type": "acme", "layer_types": ["full_attention", "mamba"]}, "layer_types mamba are not modelled"),
])
def test_unmodelled_layouts_are_refused_naming_what_is_missing(tmp_path: Path, config: dict[str, Any],
                                                             words: str) -> None:
    folder = tmp_path / "m"
    write_qwen3_30b(folder, shards=1)
    (folder / "config.json").write_text(json.dumps({**QWEN3_30B_CONFIG, **config}), encoding="utf-8")
    path = make_profile(tmp_path, {"model.id": "acme/x", "model.quant": "BF16", "model.source": {
        "directory": str(folder)}, "runtime.engine": "vllm", "runtime.version": "0.11.0",
        "model.kv_cache": "auto", "model.context": 8192}, name="x.yaml")
    with pytest.raises(ProvisionError) as info:
        _spec(path)
    assert words in str(info.value) and "model.id" in str(info.value)


def test_not_read_yet_is_one_line_without_the_network(tmp_path: Path) -> None:
    path = make_profile(tmp_path, {"model.id": "acme/never-read", "model.quant": "Q4_K_M", "model.source": {
        "hf": {"repo": "acme/never-read", "revision": "a" * 40, "dest": "/srv/models/x", "file": "x-Q4_K_M.gguf"}},
        "model.context": 8192}, name="n.yaml")
    with pytest.raises(ProvisionError) as info:
        _spec(path)
    text = str(info.value)
    assert "unknown model 'acme/never-read': not in the catalog, and its files have not been read here" in text
    assert "provision fit PROFILE" in text


def test_the_record_is_yaml_free_data(tmp_path: Path) -> None:
    path = _gguf_profile(tmp_path, "acme/gemma3-27b-tune", "gemma3", GEMMA3_27B, gemma3_27b_tensors())
    _spec(path)
    record = json.loads(next(shapes_dir().glob("*.json")).read_text())
    assert record["model"]["sliding_window_layers"] == 52 and "Q4_K" in record["tensor_types"]
    assert yaml.safe_load(yaml.safe_dump(record)) == record


def test_packed_checkpoints_count_their_real_parameters() -> None:
    # AWQ/GPTQ: 8 4-bit values per int32; their scales and zero points are no parameters
    awq = {"quantization_config": {"quant_method": "awq", "bits": 4}}
    assert quant_bits(awq) == 4
    assert logical_elements(Tensor("l.q_proj.qweight", (4096, 512), "I32", 4096 * 512 * 4), 4) == 4096 * 4096
    assert logical_elements(Tensor("l.q_proj.scales", (32, 4096), "F16", 0), 4) == 0
    # MXFP4 (gpt-oss): two FP4 values per byte
    assert logical_elements(Tensor("l.experts.gate_up_proj_blocks", (32, 5760, 90, 16), "U8", 0), 4) == \
        32 * 5760 * 90 * 16 * 2
    # compressed-tensors: the bits from the config group
    ct = {"quantization_config": {"quant_method": "compressed-tensors",
                                  "config_groups": {"g": {"weights": {"num_bits": 8}}}}}
    assert quant_bits(ct) == 8


def test_vllm_refuses_a_checkpoint_format_its_version_does_not_load(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_qwen3_30b(folder, shards=1)
    config = {**QWEN3_30B_CONFIG, "quantization_config": {"quant_method": "exl2"}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    path = make_profile(tmp_path, {"model.id": "acme/x", "model.quant": "EXL2", "model.source": {
        "directory": str(folder)}, "runtime.engine": "vllm", "runtime.version": "0.11.0",
        "model.kv_cache": "auto", "model.context": 8192}, name="x.yaml")
    with pytest.raises(ProvisionError) as info:
        _spec(path)
    assert "vLLM (vllm serve) 0.11.0 does not load exl2 checkpoints" in str(info.value)


def test_a_catalog_model_takes_a_safetensors_checkpoint_it_does_not_list(tmp_path: Path) -> None:
    """An AWQ folder of a catalog model: the catalog's shape and card, the folder's size and format."""
    folder = tmp_path / "awq"
    sizes = write_qwen3_30b(folder, shards=1)
    config = {**QWEN3_30B_CONFIG, "quantization_config": {"quant_method": "awq", "bits": 4}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    path = make_profile(tmp_path, {"model.id": "qwen3-30b-a3b", "model.quant": "AWQ", "model.source": {
        "directory": str(folder)}, "runtime.engine": "vllm", "runtime.version": "0.11.0", "model.kv_cache": "auto",
        "model.context": 8192, "model.mode": "thinking", "hardware.gpus": [{"model": "h100-sxm", "count": 1}]},
        name="awq.yaml")
    spec = _spec(path)
    assert spec.model.name == "Qwen3-30B-A3B" and spec.model.reasoning_parser == "qwen3"
    assert spec.quant.method == "awq" and spec.quant.bytes == sum(sizes)
