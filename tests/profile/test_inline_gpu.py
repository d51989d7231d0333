"""A GPU the catalog lacks, described in the profile: checked like a catalog entry, and
fit and render treat it exactly as the catalog board with the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.catalog import load_catalog
from provisioner.errors import ProvisionError
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.render.pipeline import build
from tests.conftest import make_profile

RTX_4090 = load_catalog().gpus["rtx-4090"]
# the catalog's RTX 4090, spelled as a profile describes a board
AS_INLINE = {"name": RTX_4090.name, "memory": "24GiB", "bandwidth_gb_s": RTX_4090.memory_bandwidth_gb_s,
             "bf16_tflops": RTX_4090.fp16_dense_tflops, "fp8_tflops": RTX_4090.fp8_dense_tflops,
             "pcie": {"gen": 4, "lanes": 16}, "compute_capability": "8.9", "pci_device_id": "0x2684"}
SMALL = {"model.id": "qwen3-30b-a3b", "model.quant": "UD-Q4_K_XL", "model.context": 16384,
         "hardware.ram": "64GiB"}


def _profile(tmp_path: Path, gpu: dict[str, object], name: str) -> Path:
    return make_profile(tmp_path, {**SMALL, "hardware.gpus": [{**gpu, "count": 2}],
                                   "driver.power_limit_w": None}, name=name)


def test_inline_spec_places_and_renders_like_the_catalog_board(tmp_path: Path) -> None:
    catalog = build(_profile(tmp_path, {"model": "rtx-4090"}, "catalog.yaml"))
    inline = build(_profile(tmp_path, {"spec": AS_INLINE}, "inline.yaml"))
    assert inline.spec.gpus[0].spec.architecture == "ada"
    assert inline.spec.gpus[0].spec.kernel_modules == ["open", "proprietary"]
    assert inline.placement == catalog.placement
    # every rendered file is the same, byte for byte, but for the driver minimum the GPU
    # check holds the host to: the catalog knows the 4090's, a profile's own board has none
    files = {f.path: f.content for f in catalog.rendered.files}
    check = "/opt/provision/bin/llm-server-check-gpu.sh"
    files[check] = files[check].replace(f"min_driver={RTX_4090.min_driver}\n".encode(), b"min_driver=''\n")
    assert {f.path: f.content for f in inline.rendered.files} == files


@pytest.mark.parametrize(("change", "message"), [
    ({"compute_capability": "7.0"}, "compute capability 7.0 is not one provision supports"),
    ({"pcie": None}, "a board without unified memory needs pcie: {gen, lanes}"),
    ({"pci_device_id": None}, "a discrete board needs pci_device_id"),
    ({"bandwidth_gb_s": "FILL-IN: the bandwidth"}, "bandwidth_gb_s: not filled in yet"),
    ({"bf16_tflops": 0}, "bf16_tflops: Input should be greater than 0"),
    ({"memory": "lots"}, "spec.memory"),
])
def test_a_bad_inline_spec_is_refused_with_where(tmp_path: Path, change: dict[str, object], message: str) -> None:
    spec = {k: v for k, v in {**AS_INLINE, **change}.items() if v is not None}
    with pytest.raises(ProvisionError) as info:
        build(_profile(tmp_path, {"spec": spec}, "bad.yaml"))
    assert message in str(info.value)
    assert "hardware.gpus[0].spec" in str(info.value)


def test_model_and_spec_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError) as info:
        build(_profile(tmp_path, {"model": "rtx-4090", "spec": AS_INLINE}, "both.yaml"))
    assert "exactly one of model (a catalog id) or spec" in str(info.value)


def test_turing_runs_where_the_engine_version_says_so(tmp_path: Path) -> None:
    base = {**SMALL, "hardware.gpus": [{"model": "rtx-2080-ti", "count": 2}], "driver.power_limit_w": None,
            "model.context": 8192}
    # llama.cpp b11312 builds sm_75 by default (engines.yaml cites its CMakeLists.txt)
    assert build(make_profile(tmp_path, base, name="llama.yaml")).spec.gpus[0].spec.architecture == "turing"
    # so does Ollama 0.34.4 (docs/gpu.mdx: compute capability 5.0+)
    ollama = {**base, "runtime.engine": "ollama", "runtime.version": "0.34.4", "model.quant": "qwen3:30b-a3b",
              "model.source": {"ollama": "qwen3:30b-a3b"}, "secrets.api_key": None}
    assert build(make_profile(tmp_path, ollama, name="ollama.yaml")).spec.gpus[0].spec.architecture == "turing"
    # and vLLM 0.33.0 (its wheel's kernels include sm_75 cubins: engines.yaml)
    vllm = {**base, "runtime.engine": "vllm", "runtime.version": "0.33.0", "model.quant": "BF16",
            "model.kv_cache": "auto", "install.model": False,
            "model.source": {"hf": {"repo": "Qwen/Qwen3-30B-A3B", "revision": "main", "dest": "/srv/models/q"}}}
    loaded = load_profile(make_profile(tmp_path, vllm, name="vllm.yaml"))
    assert resolve(loaded).gpus[0].spec.architecture == "turing"
    # a version whose architectures leave a board's out is refused, naming the versions that run it
    catalog = load_catalog()
    engine = catalog.engines["vllm"]
    without = engine.versions["0.33.0"].model_copy(update={"architectures": ["ampere", "ada", "hopper", "blackwell"]})
    versions = {**engine.versions, "0.33.0": without}
    engines = {**catalog.engines, "vllm": engine.model_copy(update={"versions": versions})}
    with pytest.raises(ProvisionError) as info:
        resolve(loaded, catalog.model_copy(update={"engines": engines}))
    assert "0.33.0 does not support NVIDIA GeForce RTX 2080 Ti (turing)" in str(info.value)
    assert "0.11.0 runs turing boards" in str(info.value)
