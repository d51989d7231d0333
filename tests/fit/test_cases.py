"""Published measurements vs the fit model (tests/cases/fit/*.yaml).

Each case is a real measurement with its source. The factors in
provisioner/catalog/fit.yaml were set on the `train` cases; `held-out` cases were
not looked at while setting them. `pytest -s` prints the error tables (docs/fit.md
has a copy).

A case measures decode (`measured.decode_tokens_per_s` at `depth` cached tokens),
prefill (`measured.prefill_tokens_per_s` for `prefill.prompt_tokens`, processed in
physical batches of `prefill.ubatch` on llama.cpp/Ollama), memory, or several of these.
`xfail` marks a decode (or memory) prediction the model is known to miss,
`prefill_xfail` a prefill one; both name what the model lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.catalog import load_catalog
from provisioner.fit import fit
from provisioner.fit.placement import Placement
from provisioner.fit.predict import predict
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import Spec, resolve

CASES = Path(__file__).resolve().parents[1] / "cases" / "fit"
TOLERANCE = 0.25  # decode tok/s
PREFILL_TOLERANCE = 0.35  # prompt tok/s: compute efficiency and batch effects are coarser
MEMORY_TOLERANCE = 0.10
GIB = 2**30
ENGINE_VERSION = {"llama.cpp": "b11312", "vllm": "0.11.0", "ollama": "0.34.4"}
SHA = "0" * 64


def load_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, yaml.safe_load(p.read_text())) for p in sorted(CASES.glob("*.yaml"))]


def case_profile(name: str, case: dict[str, Any]) -> dict[str, Any]:
    """A minimal valid profile for the case's hardware, model and flags."""
    engine = case["runtime"]["engine"]
    source: dict[str, Any]
    if engine == "vllm":
        source = {"directory": f"/srv/models/{name}"}
    elif engine == "ollama":
        source = {"ollama": "model:tag"}
    else:
        source = {"files": [{"path": f"/srv/models/{name}.gguf", "bytes": 1, "sha256": SHA}]}
    runtime = {"version": ENGINE_VERSION[engine], **case["runtime"]}
    mode = load_catalog().models[case["model"]["id"]].modes[0]
    profile = {
        "metadata": {"name": name.lower()[:60], "sources": [case["source"]]},
        "hardware": case["hardware"],
        "model": {"mode": mode, **case["model"], "source": source},
        "runtime": runtime,
    }
    if "cluster" in case:  # a multi-node case: the GPUs are the nodes' (profile.cluster)
        profile["cluster"] = case["cluster"]
    return profile


def build(name: str, case: dict[str, Any], tmp_path: Path) -> tuple[Spec, Placement]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(case_profile(name, case), sort_keys=False))
    spec = resolve(load_profile(path))
    return spec, fit(spec)


def _row(name: str, case: dict[str, Any], predicted: float, measured: float) -> str:
    error = predicted / measured - 1
    mark = " (xfail)" if case.get("xfail") else ""
    return (f"| {name} | {case['split']} | {case['kind']} | {measured:g} | {predicted:.1f} | "
            f"{error:+.0%}{mark} |")


MEMORY_KEYS = ("kv_cache_bytes", "kv_bytes_per_token_per_gpu", "available_kv_cache_gib_per_gpu")
SPEED = [(n, c) for n, c in load_cases() if "decode_tokens_per_s" in c["measured"]]
PREFILL = [(n, c) for n, c in load_cases() if "prefill_tokens_per_s" in c["measured"]]
MEMORY = [(n, c) for n, c in load_cases() if any(k in c["measured"] for k in MEMORY_KEYS)]


def test_case_files_are_complete() -> None:
    assert len(SPEED) >= 40
    assert len(PREFILL) >= 12
    assert len(MEMORY) >= 5
    for cases in (SPEED, PREFILL):
        held_out = [n for n, c in cases if c["split"] == "held-out"]
        assert len(held_out) * 3 >= len(cases), "at least a third of the cases are held out"
    for name, case in load_cases():
        assert case["split"] in {"train", "held-out"}
        assert case["source"].startswith("https://")
        assert (name, case) in SPEED + PREFILL + MEMORY, f"{name} measures nothing the tests compare"


@pytest.mark.parametrize(("name", "case"), PREFILL, ids=[n for n, _ in PREFILL])
def test_prefill_cases_state_what_was_processed(name: str, case: dict[str, Any]) -> None:
    """A prompt speed means little without its length and (llama.cpp, Ollama) the
    physical batch it was cut into: the ubatch decides how often weights in RAM cross
    PCIe and how well the GPU's matrix units are fed."""
    prefill = case["prefill"]
    assert prefill["prompt_tokens"] > 0
    if case["runtime"]["engine"] != "vllm":
        assert prefill["ubatch"] > 0, f"{name}: llama.cpp/Ollama prefill needs the ubatch it ran with"


def test_print_error_table(tmp_path: Path) -> None:
    lines = ["| case | split | kind | measured tok/s | predicted | error |", "|---|---|---|---|---|---|"]
    for name, case in SPEED:
        spec, placement = build(name, case, tmp_path)
        predicted = predict(spec, placement, depth=case["depth"]).decode_tokens_per_s
        lines.append(_row(name, case, predicted, case["measured"]["decode_tokens_per_s"]))
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize(("name", "case"), SPEED, ids=[n for n, _ in SPEED])
def test_decode_speed_within_tolerance(name: str, case: dict[str, Any], tmp_path: Path) -> None:
    if case.get("xfail"):
        pytest.xfail(case["xfail"])
    spec, placement = build(name, case, tmp_path)
    predicted = predict(spec, placement, depth=case["depth"]).decode_tokens_per_s
    measured = case["measured"]["decode_tokens_per_s"]
    assert abs(predicted / measured - 1) <= TOLERANCE, f"{name}: predicted {predicted:.1f}, measured {measured}"


def _prefill_row(name: str, case: dict[str, Any], predicted: float) -> str:
    measured = case["measured"]["prefill_tokens_per_s"]
    error = predicted / measured - 1
    mark = " (xfail)" if case.get("prefill_xfail") else ""
    ubatch = case["prefill"].get("ubatch", "-")
    return (f"| {name} | {case['split']} | {case['prefill']['prompt_tokens']} | {ubatch} | {measured:g} | "
            f"{predicted:.1f} | {error:+.0%}{mark} |")


def test_print_prefill_table(tmp_path: Path) -> None:
    lines = ["| case | split | prompt tokens | ubatch | measured tok/s | predicted | error |",
             "|---|---|---|---|---|---|---|"]
    for name, case in PREFILL:
        spec, placement = build(name, case, tmp_path)
        lines.append(_prefill_row(name, case, predict(spec, placement).prefill_tokens_per_s))
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize(("name", "case"), PREFILL, ids=[n for n, _ in PREFILL])
def test_prefill_speed_within_tolerance(name: str, case: dict[str, Any], tmp_path: Path) -> None:
    if case.get("prefill_xfail"):
        pytest.xfail(case["prefill_xfail"])
    spec, placement = build(name, case, tmp_path)
    predicted = predict(spec, placement).prefill_tokens_per_s
    measured = case["measured"]["prefill_tokens_per_s"]
    assert abs(predicted / measured - 1) <= PREFILL_TOLERANCE, \
        f"{name}: predicted {predicted:.1f}, measured {measured}"


def memory_numbers(spec: Spec, placement: Placement, measured: dict[str, Any]) -> tuple[float, float, str]:
    """(predicted, measured, unit) of a memory case."""
    if "available_kv_cache_gib_per_gpu" in measured:
        # vLLM's "Available KV cache memory" log line: what is left of vram x utilisation
        # after weights and the profiled overhead, on the tightest GPU
        assert spec.profile.runtime.engine == "vllm"
        pool = min(d.capacity_bytes - d.weights_bytes - d.buffers_bytes for d in placement.gpus)
        return pool / GIB, measured["available_kv_cache_gib_per_gpu"], "GiB/GPU"
    if "kv_bytes_per_token_per_gpu" in measured:
        gpus = spec.gpu_count
        replicas = max(1.0, gpus / spec.model.kv_heads)
        return (placement.kv_bytes_per_token * replicas / gpus, measured["kv_bytes_per_token_per_gpu"],
                "B/token/GPU")
    return placement.kv_bytes_per_sequence, measured["kv_cache_bytes"], "bytes"


def test_print_memory_table(tmp_path: Path) -> None:
    lines = ["| case | split | measured | predicted | error |", "|---|---|---|---|---|"]
    for name, case in MEMORY:
        spec, placement = build(name, case, tmp_path)
        predicted, expected, unit = memory_numbers(spec, placement, case["measured"])
        mark = " (xfail)" if case.get("xfail") else ""
        digits = 2 if unit == "GiB/GPU" else 0
        lines.append(f"| {name} | {case['split']} | {expected:,.{digits}f} {unit} | {predicted:,.{digits}f} | "
                     f"{predicted / expected - 1:+.1%}{mark} |")
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize(("name", "case"), MEMORY, ids=[n for n, _ in MEMORY])
def test_memory_within_tolerance(name: str, case: dict[str, Any], tmp_path: Path) -> None:
    if case.get("xfail"):
        pytest.xfail(case["xfail"])
    spec, placement = build(name, case, tmp_path)
    predicted, expected, _ = memory_numbers(spec, placement, case["measured"])
    assert abs(predicted / expected - 1) <= MEMORY_TOLERANCE, f"{name}: {predicted} vs {expected}"


CLUSTER = [(n, c) for n, c in SPEED if "cluster" in c]


@pytest.mark.parametrize(("name", "case"), CLUSTER, ids=[n for n, _ in CLUSTER])
def test_cluster_case_is_placed_over_its_nodes(name: str, case: dict[str, Any], tmp_path: Path) -> None:
    """A multi-node case is fitted as a cluster (even when its speed is xfail): every node
    holds weights and the token pays the network, so the error table compares the
    cluster model and not a single machine with the same GPUs."""
    _, placement = build(name, case, tmp_path)
    nodes = {n["name"] for n in case["cluster"]["nodes"]}
    holding = {d.node for d in placement.gpus if d.weights_bytes > 0}
    assert holding == nodes
    assert placement.interconnect_s_per_token > 0
    assert placement.interconnect_bytes_per_token > 0
