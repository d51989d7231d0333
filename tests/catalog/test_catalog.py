"""Invariants of the bundled catalog data (gpus.yaml, models.yaml, engines.yaml)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from provisioner.catalog import Catalog, load_catalog
from provisioner.catalog.schema import GPU_SOURCED_FIELDS

_ID = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$")
_PCI_ID = re.compile(r"^0x[0-9a-f]{4}$")
_PCI_SUBSYSTEM = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
_URL = re.compile(r"https://[^\s;,]+")
GIB = 2**30


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _all_sources(catalog: Catalog) -> Iterator[tuple[str, str]]:
    for gpu_id, gpu in catalog.gpus.items():
        for url in gpu.sources:
            yield f"gpus.{gpu_id}", url
    for model_id, model in catalog.models.items():
        for url in model.sources:
            yield f"models.{model_id}", url
        for quant_name, quant in model.quants.items():
            for url in quant.sources:
                yield f"models.{model_id}.quants.{quant_name}", url
    for engine_id, engine in catalog.engines.items():
        for url in engine.sources:
            yield f"engines.{engine_id}", url


def test_catalog_loads_every_part(catalog: Catalog) -> None:
    assert catalog.gpus
    assert catalog.models
    assert set(catalog.engines) == {"llama.cpp", "vllm", "ollama"}


def test_every_source_is_an_https_url(catalog: Catalog) -> None:
    bad = [(where, url) for where, url in _all_sources(catalog) if not url.startswith("https://") or " " in url]
    assert bad == []


def test_every_engine_version_says_where_it_was_checked(catalog: Catalog) -> None:
    for engine_id, engine in catalog.engines.items():
        for version, spec in engine.versions.items():
            assert _URL.search(spec.checked_in), f"{engine_id} {version}: checked_in has no https URL"


def test_ids_are_lowercase_dash(catalog: Catalog) -> None:
    ids = [*catalog.gpus, *catalog.models, *catalog.engines]
    assert [i for i in ids if not _ID.match(i)] == []


@pytest.mark.parametrize("part", ["gpus", "models"])
def test_ids_are_unique_after_normalising(catalog: Catalog, part: str) -> None:
    ids = list(getattr(catalog, part))
    assert len({i.replace(".", "-") for i in ids}) == len(ids)


def test_gpu_power_range_is_ordered(catalog: Catalog) -> None:
    for gpu_id, gpu in catalog.gpus.items():
        assert (gpu.power_min_w is None) == (gpu.power_max_w is None), gpu_id
        if gpu.power_min_w is not None and gpu.power_max_w is not None:
            default = gpu.power_default_w if gpu.power_default_w is not None else gpu.power_max_w
            assert gpu.power_min_w <= default <= gpu.power_max_w, gpu_id


def test_gpu_vram_and_bandwidth_are_plausible(catalog: Catalog) -> None:
    for gpu_id, gpu in catalog.gpus.items():
        assert 6 * GIB <= gpu.vram <= 300 * GIB, gpu_id
        assert 150 <= gpu.memory_bandwidth_gb_s <= 10_000, gpu_id
        assert 10 <= gpu.fp16_dense_tflops <= 5_000, gpu_id
        if gpu.fp8_dense_tflops is not None:
            assert gpu.fp8_dense_tflops >= gpu.fp16_dense_tflops, gpu_id
        if gpu.fp4_dense_tflops is not None:
            assert gpu.fp4_dense_tflops >= (gpu.fp8_dense_tflops or 0), gpu_id


def test_gpu_pci_ids_are_lowercase_hex_and_unique(catalog: Catalog) -> None:
    """No board's identity (device id, plus subsystem id where boards share one) twice."""
    owners: dict[str, list[str]] = {}
    seen: dict[tuple[str, str], str] = {}
    for gpu_id, gpu in catalog.gpus.items():
        for pci_id in gpu.pci_device_ids:
            assert _PCI_ID.match(pci_id), f"{gpu_id}: {pci_id}"
            owners.setdefault(pci_id, []).append(gpu_id)
        for sub in gpu.pci_subsystem_ids:
            assert _PCI_SUBSYSTEM.match(sub), f"{gpu_id}: {sub}"
        for key in [(d, s) for d in gpu.pci_device_ids for s in (gpu.pci_subsystem_ids or [""])]:
            assert key not in seen, f"{key} in both {seen.get(key)} and {gpu_id}"
            seen[key] = gpu_id
    for pci_id, gpu_ids in owners.items():
        if len(gpu_ids) > 1:
            # a shared device id is only allowed when every board that has it names its subsystem ids
            assert all(catalog.gpus[g].pci_subsystem_ids for g in gpu_ids), f"{pci_id} in {gpu_ids}"


def test_every_gpu_number_has_a_source(catalog: Catalog) -> None:
    for gpu_id, gpu in catalog.gpus.items():
        set_fields = {f for f in GPU_SOURCED_FIELDS if getattr(gpu, f) not in (None, [], False)}
        assert set_fields <= gpu.sourced_fields, f"{gpu_id}: no source for {sorted(set_fields - gpu.sourced_fields)}"
        assert all(fields for fields in gpu.sources.values()), f"{gpu_id}: a source that gives no field"


def test_gpu_catalog_covers_every_family(catalog: Catalog) -> None:
    """Turing onwards, 6 GB and up: every family the catalog promises has its boards."""
    assert len(catalog.gpus) >= 80
    expected = {
        "turing": {"titan-rtx", "rtx-2060", "rtx-2080-ti", "quadro-rtx-4000", "quadro-rtx-5000", "quadro-rtx-6000",
                   "quadro-rtx-8000", "t4"},
        "ampere": {"rtx-3050-6gb", "rtx-3060", "rtx-3070", "rtx-3080", "rtx-3090", "rtx-3090-ti", "rtx-a2000",
                   "rtx-a2000-12gb", "rtx-a4000", "rtx-a4500", "rtx-a5000", "rtx-a5500", "rtx-a6000", "a2", "a10",
                   "a10g", "a16", "a30", "a40", "a100-40gb", "a100-80gb", "a100-pcie-40gb", "a100-pcie-80gb",
                   "jetson-agx-orin-32gb", "jetson-agx-orin-64gb"},
        "ada": {"rtx-4060", "rtx-4070", "rtx-4080", "rtx-4090", "rtx-2000-ada", "rtx-4000-ada", "rtx-4500-ada",
                "rtx-5000-ada", "rtx-6000-ada", "l4", "l20", "l40", "l40s"},
        "hopper": {"h100-pcie", "h100-sxm", "h100-nvl", "h20", "h200", "h200-nvl", "gh200", "gh200-144gb"},
        "blackwell": {"rtx-5050", "rtx-5060", "rtx-5070", "rtx-5080", "rtx-5090", "rtx-pro-4000-blackwell",
                      "rtx-pro-4500-blackwell", "rtx-pro-5000-blackwell", "rtx-pro-6000-blackwell",
                      "rtx-pro-6000-blackwell-max-q", "rtx-pro-6000-blackwell-server", "b200", "b300", "gb200",
                      "dgx-spark-gb10", "jetson-agx-thor"},
    }
    for architecture, ids in expected.items():
        missing = ids - set(catalog.gpus)
        assert not missing, f"{architecture}: {sorted(missing)}"
        assert {catalog.gpus[i].architecture for i in ids} == {architecture}, architecture


def test_unified_memory_boards_have_no_pcie_hop(catalog: Catalog) -> None:
    assert any(g.unified_memory for g in catalog.gpus.values())
    for gpu in catalog.gpus.values():
        assert (gpu.pcie_gen is None) == gpu.unified_memory, gpu.name


def test_tensor_formats_match_architecture(catalog: Catalog) -> None:
    for gpu_id, gpu in catalog.gpus.items():
        if gpu.architecture in {"turing", "ampere"}:
            assert gpu.fp8_dense_tflops is None, gpu_id
        if gpu.architecture != "blackwell":
            assert gpu.fp4_dense_tflops is None, gpu_id


def test_blackwell_needs_open_module(catalog: Catalog) -> None:
    for gpu_id, gpu in catalog.gpus.items():
        if not gpu.kernel_modules:
            assert gpu.unified_memory and gpu.min_driver is None, gpu_id
        elif gpu.architecture == "blackwell":
            assert gpu.kernel_modules == ["open"], gpu_id
            assert gpu.min_driver is not None and int(gpu.min_driver.split(".")[0]) >= 570, gpu_id
        else:
            assert set(gpu.kernel_modules) == {"open", "proprietary"}, gpu_id


def test_compute_capability_matches_architecture(catalog: Catalog) -> None:
    expected = {"turing": {"7.5"}, "ampere": {"8.0", "8.6", "8.7"}, "ada": {"8.9"}, "hopper": {"9.0"},
                "blackwell": {"10.0", "10.3", "11.0", "12.0", "12.1"}}
    for gpu_id, gpu in catalog.gpus.items():
        assert gpu.compute_capability in expected[gpu.architecture], gpu_id


def test_gguf_sizes_match_bits_per_weight(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        for quant_name, quant in model.quants.items():
            if quant.format != "gguf":
                continue
            expected = model.params_total * quant.bits_per_weight / 8
            ratio = quant.bytes / expected
            assert 0.85 <= ratio <= 1.15, f"{model_id} {quant_name}: bytes/expected = {ratio:.3f}"


def test_safetensors_bf16_is_two_bytes_per_parameter(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        bf16 = model.quants.get("BF16")
        if bf16 is not None:
            assert abs(bf16.bytes / (2 * model.params_total) - 1) < 0.05, model_id


def test_gguf_and_safetensors_quants_name_a_repo(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        for quant_name, quant in model.quants.items():
            if quant.format in {"gguf", "safetensors"}:
                assert quant.repo and "/" in quant.repo, f"{model_id} {quant_name}"


def test_attention_heads_are_consistent(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        assert model.attention_heads % model.kv_heads == 0, model_id
        if model.attention == "mla":
            assert model.kv_lora_rank and model.qk_rope_head_dim, model_id
        if model.attention == "gqa-sliding":
            assert model.sliding_window and 0 < model.sliding_window_layers < model.layers, model_id


def test_context_and_params(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        assert model.max_context >= model.native_context, model_id
        if model.yarn_factor is not None:
            assert model.max_context == int(model.native_context * model.yarn_factor), model_id
        assert model.params_active <= model.params_total, model_id


def test_moe_fields_are_consistent(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        if model.is_moe:
            assert 0 < model.experts_active < model.experts_total, model_id
            assert 0.5 < model.expert_params_fraction < 1, model_id
            assert model.params_active < model.params_total, model_id
        else:
            assert model.experts_active == 0 and model.expert_params_fraction == 0, model_id
            assert model.params_active == model.params_total, model_id


def test_every_mode_has_sampling(catalog: Catalog) -> None:
    for model_id, model in catalog.models.items():
        # none at all where the card recommends none: the engine keeps the model's defaults
        assert not model.sampling or set(model.sampling) == set(model.modes), model_id
        if "thinking" in model.modes and model.reasoning_parser is None:
            pytest.fail(f"{model_id} thinks but names no vLLM reasoning parser")


def test_engine_versions_have_core_flags(catalog: Catalog) -> None:
    context_flag = {"llama.cpp": "ctx_size", "vllm": "max_model_len", "ollama": "context_length"}
    for engine_id, engine in catalog.engines.items():
        for version, spec in engine.versions.items():
            flags = spec.flags
            where = f"{engine_id} {version}"
            assert context_flag[engine_id] in flags, where
            assert "host" in flags, where
            if engine_id == "ollama":
                assert flags["host"].env == "OLLAMA_HOST", where
            else:
                assert "model" in flags and "port" in flags, where


def test_engine_flags_have_a_spelling(catalog: Catalog) -> None:
    for engine_id, engine in catalog.engines.items():
        for version, spec in engine.versions.items():
            for name, flag in spec.flags.items():
                where = f"{engine_id} {version} {name}"
                assert _ID.match(name.replace("_", "-")), where
                if flag.flag is None and flag.env is None:
                    # no server spelling: the note says where it is set instead
                    assert flag.note and ("Modelfile" in flag.note or "per request" in flag.note), where
                if flag.flag is not None:
                    assert flag.flag.startswith("--"), where
                if flag.values is not None and flag.default is not None:
                    assert str(flag.default) in flag.values, where


def test_engine_kv_cache_types_match_cache_flags(catalog: Catalog) -> None:
    for engine_id, engine in catalog.engines.items():
        for version, spec in engine.versions.items():
            for name in ("cache_type_k", "cache_type_v", "kv_cache_type", "kv_cache_dtype"):
                flag = spec.flags.get(name)
                if flag is not None and flag.values is not None:
                    assert flag.values == spec.kv_cache_types, f"{engine_id} {version} {name}"


def test_api_keys_come_from_the_environment(catalog: Catalog) -> None:
    expected = {"llama.cpp": "LLAMA_API_KEY", "vllm": "VLLM_API_KEY"}
    for engine_id, env in expected.items():
        for version, spec in catalog.engines[engine_id].versions.items():
            assert spec.flags["api_key"].env == env, f"{engine_id} {version}"


def test_model_parsers_exist_in_a_vllm_version(catalog: Catalog) -> None:
    known: set[str] = set()
    for spec in catalog.engines["vllm"].versions.values():
        for name in ("reasoning_parser", "tool_call_parser"):
            flag = spec.flags.get(name)
            if flag is not None:
                known.update(flag.values or [])
                known.update(re.findall(r"[a-z0-9_]+", flag.note or ""))
    for model_id, model in catalog.models.items():
        for parser in (model.reasoning_parser, model.tool_call_parser):
            if parser is not None:
                assert parser in known, f"{model_id}: {parser}"


def test_the_model_catalog_covers_the_open_model_families(catalog: Catalog) -> None:
    assert len(catalog.models) >= 30
    wanted = {"glm-4.5", "glm-4.5-air", "glm-4.6", "kimi-k2-instruct", "deepseek-v3.1", "llama-4-scout",
              "llama-4-maverick", "gemma-3-27b", "mistral-small-3.2-24b", "devstral-small-2507",
              "magistral-small-2506", "qwen3-8b", "qwen3-30b-a3b-instruct-2507", "minimax-m2"}
    assert wanted <= set(catalog.models)
    # the KV layouts fit models, each present: GQA, MLA, sliding window (Gemma 3, Llama 4 chunks)
    assert {m.attention for m in catalog.models.values()} == {"gqa", "mla", "gqa-sliding"}
