"""Unified memory (DGX Spark): one pool for weights, KV cache and the OS, no PCIe hop."""

from __future__ import annotations

from pathlib import Path

import yaml

from provisioner.catalog import load_catalog
from provisioner.fit import fit
from provisioner.fit.placement import GPU_MARGIN_FRACTION, RAM_RESERVE
from provisioner.fit.predict import pcie_gb_s
from provisioner.fit.suggest import suggestions
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from tests.conftest import ROOT, make_profile

SPARK = load_catalog().gpus["dgx-spark-gb10"]


def own_files(quant: str) -> dict[str, object]:
    """The quickstart's model source pointed at ``quant``'s own file (files must be the quant)."""
    return {"model.quant": quant, "model.source": {
        "files": [{"path": f"/srv/models/qwen3-235b-a22b/{quant}/Qwen3-235B-A22B-{quant}-00001-of-00003.gguf"}]}}


def _spark(tmp_path: Path, quant: str, engine: dict[str, object] | None = None) -> Path:
    patch: dict[str, object] = {"hardware.gpus": [{"model": "dgx-spark-gb10", "count": 1}],
                                "hardware.ram": "128GiB", **own_files(quant)}
    if engine:
        patch.update(engine)
    return make_profile(tmp_path, patch, name=f"{quant}.yaml")


def test_the_pool_less_the_os_is_the_gpus_capacity_and_ram_is_its_rest(tmp_path: Path) -> None:
    spec = resolve(load_profile(_spark(tmp_path, "UD-Q2_K_XL")))
    placed = fit(spec)
    gpu, ram = placed.gpus[0], placed.ram
    assert placed.fits and placed.gpu_layers == spec.model.layers + 1 and placed.cpu_moe_layers == 0
    assert gpu.capacity_bytes == int((SPARK.vram - RAM_RESERVE) * (1 - GPU_MARGIN_FRACTION))
    # the RAM row is the same pool: what the GPU leaves, read at the pool's bandwidth
    assert ram.capacity_bytes == gpu.free_bytes and ram.bandwidth_gb_s == SPARK.memory_bandwidth_gb_s
    assert "unified" in ram.name
    # no PCIe link: weights "from the host" come at the pool's bandwidth
    assert pcie_gb_s(spec) == SPARK.memory_bandwidth_gb_s


def test_a_model_larger_than_the_pool_is_not_offloaded_to_the_same_pool(tmp_path: Path) -> None:
    spec = resolve(load_profile(_spark(tmp_path, "Q4_K_M")))  # 142.7 GB > 128 GiB
    placed = fit(spec)
    assert not placed.fits and placed.missing_bytes > 0
    # a discrete GPU would move experts to RAM; here that frees nothing
    assert placed.cpu_moe_layers == 0 and placed.gpu_layers == spec.model.layers + 1
    assert placed.ram.weights_bytes == 0 and placed.ram.capacity_bytes == 0
    assert all("cpu_moe" not in str(h.get("change", "")) for h in suggestions(spec, placed))
    # the same profile on a 96 GiB discrete GPU with 192 GiB RAM fits by moving experts
    discrete = fit(resolve(load_profile(make_profile(tmp_path, own_files("Q4_K_M")))))
    assert discrete.fits and discrete.cpu_moe_layers > 0


def test_vllm_never_offloads_into_the_same_pool(tmp_path: Path) -> None:
    path = _spark(tmp_path, "FP8", {"model.id": "qwen3-30b-a3b", "runtime.engine": "vllm",
                                    "runtime.version": "0.11.0", "model.context": 32768, "model.kv_cache": "auto",
                                    "model.source": {"directory": "/srv/models/qwen3-30b-fp8"}})
    placed = fit(resolve(load_profile(path)))
    assert placed.fits and placed.cpu_offload_bytes == 0
    assert placed.gpus[0].capacity_bytes == int(SPARK.vram * 0.9)


def test_the_library_profile_puts_480b_in_two_sparks() -> None:
    spec = resolve(load_profile(ROOT / "profiles" / "2x-dgx-spark-qwen3-coder-480b-q2-llamacpp.yaml"))
    placed = fit(spec)
    assert placed.fits and len(placed.gpus) == 2
    assert sum(d.weights_bytes for d in placed.gpus) >= 150 * 10**9  # >= 150 GB in unified memory
    assert placed.ram.weights_bytes == 0
    # the head's RAM row is the head Spark's pool only
    assert placed.ram.capacity_bytes == placed.gpus[0].free_bytes


def test_a_ray_cluster_of_sparks_leaves_the_os_its_share_of_each_pool(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml").read_text())
    for node in data["cluster"]["nodes"]:
        node["gpus"] = [{"model": "dgx-spark-gb10", "count": 1}]
    data["runtime"]["gpu_memory_utilization"] = 0.97  # above the pool less the OS's share
    path = tmp_path / "sparks.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    placed = fit(resolve(load_profile(path)))
    assert [d.capacity_bytes for d in placed.gpus] == [SPARK.vram - RAM_RESERVE] * 2
