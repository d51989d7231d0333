"""The GPU probe's parser on recorded real outputs (tests/cases/gpu/*.yaml, each with
its source) and its snippet run by the real sh of this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.facts.gpu_probe import GPU_PROBE, proc_driver_version
from tests.support.probe_lines import gpu_lines

CASES = Path(__file__).resolve().parents[1] / "cases" / "gpu"


def test_h100_parsed_fields() -> None:
    case = yaml.safe_load((CASES / "h100-sxm-590.yaml").read_text())
    report = GPU_PROBE.read(gpu_lines(case["raw"]))
    assert report.driver_version == "590.48.01"
    (gpu,) = report.gpus
    assert (gpu.bus_id, gpu.device_id, gpu.name) == ("00000000:00:09.0", "0x2330", "NVIDIA H100 80GB HBM3")
    assert (gpu.pcie_gen_max, gpu.pcie_width_max, gpu.power_limit_w, gpu.persistence) == (5, 16, 700.0, True)
    assert gpu.clock_reasons == ("Idle",)
    assert (gpu.ecc_uncorrected, gpu.remapped_uncorrectable, gpu.remap_pending) == (0, 0, False)


def test_csv_merges_with_q_and_decodes_throttle_mask() -> None:
    """Older drivers answer clocks_throttle_reasons.active; the bitmask decodes to NVML's names
    and replaces what -q said, on the same GPU (matched by bus id)."""
    text = gpu_lines({"smi": "present", "csv": [
        {"name": "csv-clocks", "fields": "pci.bus_id,clocks_throttle_reasons.active",
         "rows": "00000000:00:09.0, 0x0000000000000048"}]})
    case = yaml.safe_load((CASES / "h100-sxm-590.yaml").read_text())
    (gpu,) = GPU_PROBE.read(gpu_lines(case["raw"]) + text).gpus
    assert gpu.clock_reasons == ("HW Slowdown", "HW Thermal Slowdown")
    assert gpu.clock_mask == 0x48
    assert gpu.name == "NVIDIA H100 80GB HBM3"  # from -q, kept


def test_csv_only_host_keeps_nvidia_smi_order_and_driver() -> None:
    case = yaml.safe_load((CASES / "rtx-pro-6000-4x-610-csv.yaml").read_text())
    report = GPU_PROBE.read(gpu_lines(case["raw"]))
    assert report.smi == "ok" and report.driver_version == "610.43.02"
    assert [g.bus_id for g in report.gpus] == [f"00000000:0{n}:00.0" for n in (3, 4, 5, 6)]
    assert [g.index for g in report.gpus] == [0, 1, 2, 3]
    assert {(g.power_limit_w, g.pcie_gen_current, g.pcie_width_current, g.device_id) for g in report.gpus} \
        == {(600.0, 5, 16, None)}


def test_a_failed_query_is_not_a_gpu() -> None:
    report = GPU_PROBE.read("@gpu smi present\n@gpu rc csv-core 9\n@gpu fields csv-core pci.bus_id,name\n"
                            "@gpu line csv-core |NVIDIA-SMI has failed because it couldn't communicate with the "
                            "NVIDIA driver.\n")
    assert report.smi == "failed" and report.gpus == ()
    assert report.smi_error is not None and report.smi_error.startswith("NVIDIA-SMI has failed")


def test_driver_version_of_proc_version() -> None:
    """The recorded open 565 module: the version sits after "Kernel Module for x86_64"."""
    case = yaml.safe_load((CASES / "open-565-proc-version.yaml").read_text())
    report = GPU_PROBE.read(gpu_lines(case["raw"]))
    assert report.module_flavour == "open"
    assert proc_driver_version(report.proc_version) == "565.57.01"


def test_the_snippet_runs_here_and_every_line_is_marked() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the test expects a GPU-less host")
    result = subprocess.run(["sh", "-c", "set -u\n" + GPU_PROBE.snippet], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(ln.startswith("@gpu ") for ln in lines), result.stdout
    report = GPU_PROBE.read(result.stdout)
    assert report.smi == "missing" and report.gpus == ()
    assert report.kernel == subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
