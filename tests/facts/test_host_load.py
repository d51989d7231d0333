"""fit --host/--here: what other processes hold, hugepages and GPU peer access.

Parsers run on recorded real outputs (tests/cases/fit_host/, each with its URL) and
on this machine's real /proc and ps through the real gather; the fit arithmetic on
the recorded facts of an RTX 4090 desktop (tests/cases/init/rtx-4090-64g.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from provisioner.cli.fit import fit_command
from provisioner.facts.collect import run_gather
from provisioner.facts.host import HostFacts, host_facts, parse_dimms
from provisioner.facts.host_load import FIT_PROBE, HostLoad, P2p, descendants, fit_probe, host_load, parse_p2p
from provisioner.fit import fit
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.transport.local import LocalTransport
from provisioner.units import GIB
from tests.conftest import ROOT, make_profile

CASES = sorted((ROOT / "tests" / "cases" / "fit_host").glob("p2p-*.yaml"))
MIB = 2**20
BUS = "00000000:01:00.0"  # the RTX 4090 of tests/cases/init/rtx-4090-64g.yaml


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_p2p_matrix_from_recorded_output(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    assert case["source"].startswith("https://")
    found = parse_p2p(case["raw"].splitlines())
    if case["expect"]["missing"] is None:
        assert found is None
        return
    assert found is not None
    gpus = {i for pair in found.status for i in pair}
    assert len(gpus) == case["expect"]["gpus"]
    assert [list(m) for m in found.missing] == case["expect"]["missing"]


def _fit_lines(apps: list[str], *, mainpid: int = 0, ps: dict[int, int] | None = None,
               hugepages: tuple[int, int] = (0, 2048), p2p: str = "", rc: int = 0) -> str:
    """The fit probe's output, line for line as its snippet prints it."""
    lines = [f"@fit apps-rc {rc}"] + [f"@fit app |{a}" for a in apps]
    lines += [f"@fit p2p |{line}" for line in p2p.splitlines()]
    lines += [f"@fit meminfo HugePages_Total:    {hugepages[0]}", f"@fit meminfo Hugepagesize:    {hugepages[1]} kB",
              f"@fit mainpid {mainpid}"]
    lines += [f"@fit ps {pid} {ppid}" for pid, ppid in (ps or {}).items()]
    return "\n".join(lines) + "\n"


def test_the_servers_own_processes_are_not_others() -> None:
    """vLLM's engine core and Ollama's runners are children of the unit's MainPID: a second
    apply must not see its own server as a stranger holding the GPU."""
    ps = {1: 0, 500: 1, 501: 500, 502: 501, 900: 1}
    out = _fit_lines([f"{BUS}, 502, 20000", f"{BUS}, 900, 3000", f"{BUS}, 500, 400"], mainpid=500, ps=ps)
    load = host_load(FIT_PROBE.read(out), [BUS])
    assert load.gpu_used_by_others == (3000 * MIB,)
    assert sorted(p.pid for p in load.processes if p.server) == [500, 502]
    # the same output without the service running: everything is someone else's
    idle = FIT_PROBE.read(out.replace("@fit mainpid 500", "@fit mainpid 0"))
    assert host_load(idle, [BUS]).gpu_used_by_others == (23400 * MIB,)


def test_failed_query_is_unknown_not_zero() -> None:
    out = _fit_lines(["Failed to initialize NVML: Driver/library version mismatch"], rc=18)
    load = host_load(FIT_PROBE.read(out), [BUS])
    assert load.apps_error and "mismatch" in load.apps_error
    assert load.gpu_used_by_others == (0,)


def test_hugepages_prefer_hugetlb_over_the_default_size() -> None:
    assert FIT_PROBE.read(_fit_lines([], hugepages=(1024, 2048))).hugepages_bytes == 2 * GIB
    # Hugetlb (Linux 4.16+) also counts 1 GiB pages, which HugePages_Total does not
    both = _fit_lines([], hugepages=(1024, 2048)) + "@fit meminfo Hugetlb:        6291456 kB\n"
    assert FIT_PROBE.read(both).hugepages_bytes == 6 * GIB


def test_the_snippet_runs_here_and_reads_real_proc(tmp_path: Path) -> None:
    """The real gather with fit's snippet on this machine: a real process tree is found
    below its parent, and hugepages match /proc/meminfo."""
    tree = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while True:
            gathered = run_gather(LocalTransport(), [fit_probe("provision-test-no-such-unit")])
            reading = gathered.read(FIT_PROBE)
            main, parents = reading.main_pid, reading.parents
            kids = descendants(tree.pid, parents) - {tree.pid}
            if len(kids) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        tree.kill()
        tree.wait()
    assert main == 0  # no such unit: nothing is the server
    assert parents[os.getpid()] == os.getppid()
    assert len(kids) == 2 and all(parents[k] == tree.pid for k in kids)
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    expected = (int(meminfo["Hugetlb"].split()[0]) * 1024 if "Hugetlb" in meminfo
                else int(meminfo["HugePages_Total"]) * int(meminfo["Hugepagesize"].split()[0]) * 1024)
    assert reading.hugepages_bytes == expected


def _desk(extra: str) -> tuple[HostFacts, str]:
    case = yaml.safe_load((ROOT / "tests/cases/init/rtx-4090-64g.yaml").read_text())
    output = case["facts"].replace("@done", extra + "@done")
    return host_facts(output), output


def test_vram_held_by_others_moves_experts_to_ram(capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded RTX 4090 desktop with 6 GiB held by another process: fit keeps more
    experts in RAM than on the idle card, and says why."""
    profile = ROOT / "profiles/rtx-4090-qwen3-30b-a3b-llamacpp.yaml"
    facts, idle_out = _desk(_fit_lines([]))
    assert fit_command(profile, None, True, host_facts=facts, host="desk", host_output=idle_out) == 0
    idle = json.loads(capsys.readouterr().out)
    _, busy_out = _desk(_fit_lines([f"{BUS}, 4242, 6144"], ps={4242: 1}))
    assert fit_command(profile, None, True, host_facts=facts, host="desk", host_output=busy_out) == 0
    busy = json.loads(capsys.readouterr().out)
    assert busy["host_load"]["gpu_used_by_others_bytes"] == [6 * GIB]
    assert busy["devices"][0]["capacity_bytes"] == idle["devices"][0]["capacity_bytes"] - 6 * GIB
    assert int(busy["flags"].get("--n-cpu-moe", 0)) > int(idle["flags"].get("--n-cpu-moe", 0))
    assert any("held by other processes" in w for w in busy["warnings"])
    assert busy["decode_tokens_per_s"] < idle["decode_tokens_per_s"]


def test_reserved_hugepages_come_out_of_ram(capsys: pytest.CaptureFixture[str]) -> None:
    profile = ROOT / "profiles/rtx-4090-qwen3-30b-a3b-llamacpp.yaml"
    facts, out = _desk(_fit_lines([], hugepages=(8192, 2048)))  # 16 GiB of 2 MiB pages
    fit_command(profile, None, True, host_facts=facts, host="desk", host_output=out)
    data = json.loads(capsys.readouterr().out)
    facts0, out0 = _desk(_fit_lines([]))
    fit_command(profile, None, True, host_facts=facts0, host="desk", host_output=out0)
    plain = json.loads(capsys.readouterr().out)
    assert data["devices"][-1]["capacity_bytes"] == plain["devices"][-1]["capacity_bytes"] - 16 * GIB
    assert any("hugepages" in w for w in data["warnings"])


def test_vllm_loses_what_others_hold_beyond_its_share(tmp_path: Path) -> None:
    """vLLM takes vram x utilisation; another process within the remaining 10% costs nothing,
    beyond it the excess comes out of vLLM's share."""
    spec = resolve(load_profile(ROOT / "profiles/4x-h100-qwen3-235b-fp8-vllm.yaml"))
    base = fit(spec).devices[0].capacity_bytes
    vram = spec.gpus[0].spec.vram
    small = dataclasses.replace(spec, host=HostLoad(gpu_used_by_others=(GIB, 0, 0, 0)))
    assert fit(small).devices[0].capacity_bytes == base
    big = dataclasses.replace(spec, host=HostLoad(gpu_used_by_others=(20 * GIB, 0, 0, 0)))
    assert fit(big).devices[0].capacity_bytes == vram - 20 * GIB
    assert fit(big).devices[1].capacity_bytes == base


def test_missing_p2p_is_warned_and_priced(tmp_path: Path) -> None:
    path = make_profile(tmp_path, {"hardware.gpus": [{"model": "rtx-4090", "count": 2}]})
    spec = resolve(load_profile(path))
    no_p2p = dataclasses.replace(spec, host=HostLoad(gpu_used_by_others=(0, 0),
                                                     p2p=P2p({(0, 1): "GNS", (1, 0): "GNS"})))
    with_p2p = dataclasses.replace(spec, host=HostLoad(gpu_used_by_others=(0, 0),
                                                       p2p=P2p({(0, 1): "OK", (1, 0): "OK"})))
    from provisioner.fit.predict import predict

    slow, fast = fit(no_p2p), fit(with_p2p)
    assert slow.p2p_missing and not fast.p2p_missing
    assert any("GNS" in w and "peer-to-peer" in w for w in slow.warnings)
    assert predict(no_p2p, slow).decode_tokens_per_s < predict(with_p2p, fast).decode_tokens_per_s


DIMMS = sorted((ROOT / "tests" / "cases" / "fit_host").glob("dimm-*.yaml"))


@pytest.mark.parametrize("path", DIMMS, ids=lambda p: p.stem)
def test_ram_speed_is_the_configured_one(path: Path) -> None:
    """dmidecode's "Configured Memory Speed" (two DIMMs per channel run below the rating,
    XMP/EXPO above it) sets the RAM bandwidth fit uses; the recordings are real outputs."""
    case = yaml.safe_load(path.read_text())
    memory_type, size, _ = parse_dimms(case["dmidecode"].splitlines())
    assert (memory_type, size) == (case["expect"]["memory_type"], case["expect"]["bytes"])


def test_configured_speed_reaches_the_cpu_bandwidth(capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded desktop with the 2-DIMM-per-channel DDR5 of club-3090#1130: fit plans
    the RAM at 4200 MT/s x 2 channels, not the DIMMs' rated 5600."""
    from provisioner.fit.predict import cpu_bandwidth_gb_s

    case = yaml.safe_load((ROOT / "tests/cases/init/rtx-4090-64g.yaml").read_text())
    dimm = yaml.safe_load((ROOT / "tests/cases/fit_host/dimm-ddr5-2dpc-4200.yaml").read_text())
    lines = [line for line in case["facts"].splitlines() if not line.startswith("@init dimm ")]
    lines[-1:-1] = [f"@init dimm {line}" for line in dimm["dmidecode"].splitlines()]
    facts = host_facts("\n".join(lines) + "\n")
    assert facts.memory_type == "ddr5-4200"
    from provisioner.fit.host import hardware_overrides

    profile = ROOT / "profiles/rtx-4090-qwen3-30b-a3b-llamacpp.yaml"
    spec = resolve(load_profile(profile, hardware_overrides(facts)))
    assert spec.profile.hardware.memory.bandwidth() == 4200 * 8 * 2 / 1000
    assert cpu_bandwidth_gb_s(spec) == pytest.approx(67.2)


def test_recorded_geforce_matrix_reaches_the_prediction(tmp_path: Path) -> None:
    """The recorded 2x RTX 5090 matrix (GNS) through the snippet's line format into fit."""
    from provisioner.fit.predict import predict

    raw = yaml.safe_load((ROOT / "tests/cases/fit_host/p2p-2x5090-gns.yaml").read_text())["raw"]
    load = host_load(FIT_PROBE.read(_fit_lines([], p2p=raw)), ["00000000:01:00.0", "00000000:02:00.0"])
    assert load.p2p is not None and load.p2p.missing == ((0, 1, "GNS"),)
    path = make_profile(tmp_path, {"hardware.gpus": [{"model": "rtx-5090", "count": 2}]})
    spec = resolve(load_profile(path))
    placed = fit(dataclasses.replace(spec, host=load))
    assert any("GPU0 and GPU1 (GNS: GPU not supported)" in w for w in placed.warnings)
    slower = predict(dataclasses.replace(spec, host=load), placed).decode_ms["compute"]
    assert slower == pytest.approx(predict(spec, fit(spec)).decode_ms["compute"] + 0.030, abs=1e-6)
