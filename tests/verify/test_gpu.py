"""GPU and driver checks on recorded real outputs (tests/cases/gpu/*.yaml).

Each case holds the raw text of one or more commands as a public report showed
it (with its source URL) and one or more profile scenarios with the status
expected per check id. The raw sections are wrapped into the GPU probe's line
format exactly as its snippet would print them (the parser's own tests:
tests/facts/test_gpu_probe.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.catalog import load_catalog
from provisioner.facts.gpu_probe import GPU_PROBE
from provisioner.verify.gpu import gpu_checks
from tests.support.probe_lines import gpu_lines

CASES = Path(__file__).resolve().parents[1] / "cases" / "gpu"


def scenarios() -> list[Any]:
    params = []
    for path in sorted(CASES.glob("*.yaml")):
        case = yaml.safe_load(path.read_text())
        assert case.get("source"), f"{path.name}: every case cites its source"
        for n, scenario in enumerate(case["scenarios"]):
            params.append(pytest.param(case, scenario, id=f"{path.stem}-{n}"))
    return params


@pytest.mark.parametrize(("case", "scenario"), scenarios())
def test_recorded_case(case: dict[str, Any], scenario: dict[str, Any]) -> None:
    text = case["gather"] if "gather" in case else gpu_lines(case["raw"])
    report = GPU_PROBE.read("unrelated line\n@fact kernel x\n" + text)
    catalog = load_catalog()
    profile = scenario["profile"]
    expected = [(catalog.gpus[model], count) for model, count in profile["gpus"]]
    checks = gpu_checks(report, expected, profile["kernel_module"], profile["min_driver"],
                        profile["persistence"], profile["power_limit_w"])
    by_id = {c.id: c for c in checks}
    assert len(by_id) == len(checks) == 10
    got = {cid: by_id[cid].status for cid in scenario["expect"]}
    assert got == scenario["expect"], "\n".join(f"{c.id}: {c.status} {c.observed} | {c.hint}" for c in checks)
    for cid, needle in scenario.get("observed_contains", {}).items():
        assert needle in (by_id[cid].observed or ""), by_id[cid]
    for cid, needle in scenario.get("hint_contains", {}).items():
        assert needle in (by_id[cid].hint or ""), by_id[cid]
    for check in checks:
        if check.status == "skip":
            assert check.hint, f"{check.id} skipped without a reason"


def test_throttle_mask_warns_on_hardware_slowdown() -> None:
    """The H100 recording with a clocks_throttle_reasons.active row of an older driver: warn."""
    text = gpu_lines({"smi": "present", "csv": [
        {"name": "csv-clocks", "fields": "pci.bus_id,clocks_throttle_reasons.active",
         "rows": "00000000:00:09.0, 0x0000000000000048"}]})
    case = yaml.safe_load((CASES / "h100-sxm-590.yaml").read_text())
    report = GPU_PROBE.read(gpu_lines(case["raw"]) + text)
    catalog = load_catalog()
    checks = {c.id: c for c in gpu_checks(report, [(catalog.gpus["h100-sxm"], 1)], "open", "0", True, None)}
    assert checks["gpu.clocks"].status == "warn"
    assert "HW Thermal Slowdown" in (checks["gpu.clocks"].observed or "")


def test_unreadable_log_skips_with_reason() -> None:
    report = GPU_PROBE.read("@gpu smi missing\n@gpu log unreadable\n")
    catalog = load_catalog()
    checks = {c.id: c for c in gpu_checks(report, [(catalog.gpus["rtx-5090"], 1)], "open", "0", True, None)}
    assert checks["gpu.xid"].status == "skip"
    assert "not readable" in (checks["gpu.xid"].hint or "")
    assert checks["gpu.present"].status == "fail"
    assert "install the NVIDIA driver" in (checks["gpu.present"].hint or "")


def test_checks_of_this_gpu_less_machine_all_skip() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the test expects a GPU-less host")
    result = subprocess.run(["sh", "-c", "set -u\n" + GPU_PROBE.snippet], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    checks = gpu_checks(GPU_PROBE.read(result.stdout), [], "open", "0", True, None)
    assert {c.status for c in checks} == {"skip"}
