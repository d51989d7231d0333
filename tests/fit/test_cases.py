"""Published measurements vs the fit model (tests/cases/fit/*.yaml).

Each case is a real measurement with its source. The factors in
provisioner/catalog/fit.yaml were set on the `train` cases; `held-out` cases were
not looked at while setting them (scripts/fit-factors builds only train cases).
`pytest -s` prints the error tables; docs/fit.md carries them (scripts/fit-tables).

A case measures decode (`measured.decode_tokens_per_s` at `depth` cached tokens),
prefill (`measured.prefill_tokens_per_s` for `prefill.prompt_tokens`, processed in
physical batches of `prefill.ubatch` on llama.cpp/Ollama), memory, or several of these.
`xfail` marks a decode (or memory) prediction the model is known to miss,
`prefill_xfail` a prefill one; both name what the model lacks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.fit_cases import (
    MEMORY_KEYS,
    build,
    error_tables,
    load_cases,
    memory_numbers,
    predicted_decode,
    predicted_prefill,
    replace_bands,
    replace_tables,
    speed_bands,
)

ROOT = Path(__file__).resolve().parents[2]

TOLERANCE = 0.25  # decode tok/s
PREFILL_TOLERANCE = 0.35  # prompt tok/s: compute efficiency and batch effects are coarser
MEMORY_TOLERANCE = 0.10


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


def test_print_error_tables(tmp_path: Path) -> None:
    tables = error_tables(tmp_path)
    print("\n" + "\n\n".join(tables.values()))


def test_docs_carry_the_current_tables(tmp_path: Path) -> None:
    """docs/fit.md's tables are what the cases and the model give now."""
    doc = ROOT / "docs" / "fit.md"
    text = doc.read_text()
    assert replace_tables(text, error_tables(tmp_path)) == text, \
        "docs/fit.md's error tables are stale: run scripts/fit-tables"


def test_verify_bands_follow_the_case_table(tmp_path: Path) -> None:
    """verify's speed thresholds (catalog/fit.yaml verify_speed.band) are the case table's
    lowest measured/predicted ratio per kind of placement."""
    path = ROOT / "provisioner" / "catalog" / "fit.yaml"
    text = path.read_text()
    assert replace_bands(text, speed_bands(tmp_path)) == text, \
        "catalog/fit.yaml's verify_speed bands are stale: run scripts/fit-tables"


def test_factors_are_the_train_fit() -> None:
    """catalog/fit.yaml's fitted speed factors are what scripts/fit-factors finds on the
    train cases (it never builds a held-out case)."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fit-factors"), "--check"],
                         capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(("name", "case"), SPEED, ids=[n for n, _ in SPEED])
def test_decode_speed_within_tolerance(name: str, case: dict[str, Any], tmp_path: Path) -> None:
    if case.get("xfail"):
        pytest.xfail(case["xfail"])
    spec, placement = build(name, case, tmp_path)
    predicted = predicted_decode(spec, placement, case)
    measured = case["measured"]["decode_tokens_per_s"]
    assert abs(predicted / measured - 1) <= TOLERANCE, f"{name}: predicted {predicted:.1f}, measured {measured}"


@pytest.mark.parametrize(("name", "case"), PREFILL, ids=[n for n, _ in PREFILL])
def test_prefill_speed_within_tolerance(name: str, case: dict[str, Any], tmp_path: Path) -> None:
    if case.get("prefill_xfail"):
        pytest.xfail(case["prefill_xfail"])
    spec, placement = build(name, case, tmp_path)
    predicted = predicted_prefill(spec, placement, case)
    measured = case["measured"]["prefill_tokens_per_s"]
    assert abs(predicted / measured - 1) <= PREFILL_TOLERANCE, \
        f"{name}: predicted {predicted:.1f}, measured {measured}"


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
