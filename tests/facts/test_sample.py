"""The sample probe of `provision monitor`: its parser on recorded real outputs
(tests/cases/monitor/*.yaml, each with its source) and its script as run on a host.
The monitor.* checks of the parsed samples: tests/monitor/test_monitor.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.cli._output import monitor_gpu_json, sample_json
from provisioner.facts.sample import SAMPLE_PROBE, parse_dmon, sample_script
from tests.support.probe_lines import sample_lines

CASES = Path(__file__).resolve().parents[1] / "cases" / "monitor"
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def case(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CASES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("state", ["idle", "load"])
def test_gpu_csv_capture(state: str) -> None:
    """The capture's full header and row: what monitor's JSON says of the GPU (the keys the
    sample probe reads, whatever else the row held)."""
    data = case("rtx-4080-super-595-capture")
    sample = SAMPLE_PROBE.read(sample_lines(gpu=(data["gpu"]["header"], data["gpu"][state])))
    assert sample.smi == "present"
    (gpu,) = sample.gpus
    got = monitor_gpu_json(gpu)
    assert sample_json(sample)["gpus"] == [got]
    for key, want in data["expect"][state].items():
        assert got[key] == (tuple(want) if isinstance(want, list) else want), key


def test_dmon_pcie_throughput() -> None:
    data = case("l40s-dmon")
    assert parse_dmon(data["dmon_t"].splitlines()) == {k: tuple(v) for k, v in data["expect"]["dmon_t"].items()}
    assert parse_dmon(data["dmon_default"].splitlines()) == {}
    caps = case("rtx-4080-super-595-capture")
    sample = SAMPLE_PROBE.read(sample_lines(gpu=(caps["gpu"]["header"], caps["gpu"]["load"]), dmon=data["dmon_t"]))
    assert (sample.gpus[0].pcie_rx_mbs, sample.gpus[0].pcie_tx_mbs) == (72.0, 12.0)


def test_failed_query_is_reported_not_a_gpu() -> None:
    sample = SAMPLE_PROBE.read("@mon smi present\n@mon smi-rc 9\n@mon gpu-fields index,temperature.gpu\n"
                               "@mon gpu |Failed to initialize NVML: Driver/library version mismatch\n")
    assert sample.smi == "failed" and sample.gpus == ()
    assert sample.smi_error == "Failed to initialize NVML: Driver/library version mismatch"


def test_sample_script_sets_its_inputs() -> None:
    script = sample_script("my server", "/srv/tree")
    assert script.startswith("MON_SERVICE='my server'\nMON_ROOT=/srv/tree\n") and script.endswith(SAMPLE_PROBE.snippet)
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, check=True).stdout
    assert "@mon server root" in out and "@mon service my server" in out
    sample = SAMPLE_PROBE.read(out)
    assert (sample.service, sample.server, sample.server_pid) == ("my server", "root", None)


def test_script_passes_sh_n_and_shellcheck(tmp_path: Path) -> None:
    path = tmp_path / "probe.sh"
    path.write_text("#!/bin/sh\n" + sample_script("llm-server"))
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0
    result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout
