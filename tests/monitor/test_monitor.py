"""provision monitor: checks of samples parsed from recorded real outputs
(tests/cases/monitor/*.yaml, each with its source), the Prometheus text through
prometheus_client's parser, monitor_command against this machine and a --root tree,
and the metrics script + units apply installs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from provisioner.cli.monitor import monitor_command
from provisioner.converge.fleet import Target
from provisioner.datadir import data_dir
from provisioner.errors import ProvisionError
from provisioner.facts.check import Check
from provisioner.facts.sample import SAMPLE_PROBE, Sample
from provisioner.monitor.checks import evaluate
from provisioner.monitor.probe import rates
from provisioner.monitor.prometheus import METRICS, prometheus_text
from provisioner.profile.thresholds import Thresholds
from provisioner.transport import Completed
from provisioner.transport.local import LocalTransport
from tests.support.probe_lines import sample_lines

CASES = Path(__file__).resolve().parents[1] / "cases" / "monitor"
ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def case(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CASES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.id: c.status for c in checks}


def test_every_case_cites_its_source() -> None:
    files = sorted(CASES.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        assert yaml.safe_load(path.read_text()).get("source"), path.name


# --------------------------------------------------------------------------- checks of the recorded outputs

def test_gpu_capture_checks_and_thresholds() -> None:
    data = case("rtx-4080-super-595-capture")
    sample = SAMPLE_PROBE.read(sample_lines(gpu=(data["gpu"]["header"], data["gpu"]["load"])))
    checks = statuses(evaluate(None, sample, Thresholds(), 0))
    for check_id, want in data["expect"]["checks_load"].items():
        assert checks[check_id] == want, check_id
    # the same 46 C sample against tighter limits: warn, then fail
    assert statuses(evaluate(None, sample, Thresholds(gpu_temp_warn_c=45), 0))["monitor.gpu_temperature"] == "warn"
    tight = Thresholds(gpu_temp_warn_c=40, gpu_temp_fail_c=46, gpu_power_warn_fraction=0.25)
    checks = statuses(evaluate(None, sample, tight, 0))
    assert checks["monitor.gpu_temperature"] == "fail"
    assert checks["monitor.gpu_power"] == "warn"


def test_clock_reasons_from_the_bitmask() -> None:
    data = case("rtx-4080-super-595-capture")
    mask = "0x00000000000001FF, 0x0000000000000000"
    row = data["gpu"]["load"].replace(mask, "0x00000000000001FF, 0x0000000000000060")
    sample = SAMPLE_PROBE.read(sample_lines(gpu=(data["gpu"]["header"], row)))
    assert sample.gpus[0].clock_reasons == ("SW Thermal Slowdown", "HW Thermal Slowdown")
    check = next(c for c in evaluate(None, sample, Thresholds(), 0) if c.id == "monitor.gpu_clocks")
    assert check.status == "fail" and check.hint and "heat" in check.hint
    soft = row.replace("0x0000000000000060", "0x0000000000000020")
    check = next(c for c in evaluate(None, SAMPLE_PROBE.read(sample_lines(gpu=(data["gpu"]["header"], soft))),
                                     Thresholds(), 0) if c.id == "monitor.gpu_clocks")
    assert check.status == "warn"


def test_dmon_pcie_throughput() -> None:
    data = case("l40s-dmon")
    caps = case("rtx-4080-super-595-capture")
    sample = SAMPLE_PROBE.read(sample_lines(gpu=(caps["gpu"]["header"], caps["gpu"]["load"]), dmon=data["dmon_t"]))
    assert (sample.gpus[0].pcie_rx_mbs, sample.gpus[0].pcie_tx_mbs) == (72.0, 12.0)
    pcie = next(c for c in evaluate(None, sample, Thresholds(), 0) if c.id == "monitor.gpu_pcie")
    assert pcie.observed == "GPU0: Gen4 x16, RX 72 MB/s, TX 12 MB/s"


@pytest.mark.parametrize("name", ["psi-thrashing", "psi-idle"])
def test_memory_pressure(name: str) -> None:
    data = case(name)
    sample = SAMPLE_PROBE.read(sample_lines(psi_memory=data["psi_memory"]))
    checks = statuses(evaluate(None, sample, Thresholds(), 0))
    for check_id, want in data["expect"]["checks"].items():
        assert checks[check_id] == want


def test_memory_pressure_thresholds_warn() -> None:
    sample = SAMPLE_PROBE.read(sample_lines(psi_memory=case("psi-thrashing")["psi_memory"]))
    lax = Thresholds(psi_memory_some_fail=90, psi_memory_full_fail=90)
    assert statuses(evaluate(None, sample, lax, 0))["monitor.memory_pressure"] == "warn"


def test_server_status_and_stat() -> None:
    data = case("proc-188-bash")
    sample = SAMPLE_PROBE.read(sample_lines(status=data["status"], stat=data["stat"], pid=188))
    got = asdict(sample)
    for key, want in data["expect"]["server"].items():
        assert got[key] == want, key
    locked = statuses(evaluate(None, sample, Thresholds(require_locked=True), 0))
    for check_id, want in data["expect"]["checks_locked"].items():
        assert locked[check_id] == want
    unlocked = statuses(evaluate(None, sample, Thresholds(), 0))
    for check_id, want in data["expect"]["checks_unlocked"].items():
        assert unlocked[check_id] == want


def _later_vmstat(text: str, add: dict[str, int]) -> str:
    out = []
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out.append(f"{key} {int(value) + add[key]}" if key in add else line)
    return "\n".join(out)


def test_two_vmstat_samples_give_a_swap_rate() -> None:
    data = case("vmstat-swapping")
    first = SAMPLE_PROBE.read(sample_lines(vmstat=data["vmstat"], time_s=1000.0))
    for key, want in data["expect"]["parsed"].items():
        assert getattr(first, key) == want
    later = data["later"]
    add = {k: later[k] for k in ("pswpin", "pswpout", "pgmajfault")}
    second = SAMPLE_PROBE.read(sample_lines(vmstat=_later_vmstat(data["vmstat"], add), time_s=1000.0 + later["dt"]))
    got = rates(first, second)
    for key, want in data["expect"]["swapping"].items():
        assert getattr(got, key) == pytest.approx(want), key
    checks = evaluate(first, second, Thresholds(), 0)
    for check_id, want in data["expect"]["checks_swapping"].items():
        assert statuses(checks)[check_id] == want
    swap = next(c for c in checks if c.id == "monitor.swap")
    assert swap.hint is not None and swap.hint.startswith("swapping 52 MB/s while serving: the KV cache outgrew RAM")
    quiet = SAMPLE_PROBE.read(sample_lines(vmstat=data["vmstat"], time_s=1000.0 + later["dt"]))
    for check_id, want in data["expect"]["checks_quiet"].items():
        assert statuses(evaluate(first, quiet, Thresholds(), 0))[check_id] == want
    # one sample alone cannot give a rate
    assert statuses(evaluate(None, first, Thresholds(), 0))["monitor.swap"] == "skip"


def test_host_without_gpu_recorded_here() -> None:
    data = case("no-gpu-host-recorded-here")
    sample = SAMPLE_PROBE.read(data["probe"])
    got = asdict(sample)
    for key, want in data["expect"]["sample"].items():
        assert got[key] == (tuple(want) if isinstance(want, list) else want), key
    checks = statuses(evaluate(None, sample, Thresholds(), 0))
    for check_id, want in data["expect"]["checks"].items():
        assert checks[check_id] == want, check_id
    expecting = statuses(evaluate(None, sample, Thresholds(gpus_expected=1), 0))
    for check_id, want in data["expect"]["checks_gpus_expected"].items():
        assert expecting[check_id] == want


def test_page_cache_smaller_than_the_model() -> None:
    sample = SAMPLE_PROBE.read(sample_lines(meminfo="Cached:          1587204 kB"))
    low = next(c for c in evaluate(None, sample, Thresholds(), 40 * 2**30) if c.id == "monitor.page_cache")
    assert low.status == "warn" and low.hint and "evicted" in low.hint
    ok = next(c for c in evaluate(None, sample, Thresholds(), 2**30) if c.id == "monitor.page_cache")
    assert ok.status == "pass"


# --------------------------------------------------------------------------- Prometheus text

def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_text_parses() -> None:
    caps = case("rtx-4080-super-595-capture")
    swapping = case("vmstat-swapping")
    first = SAMPLE_PROBE.read(sample_lines(gpu=(caps["gpu"]["header"], caps["gpu"]["load"]),
                                    dmon=case("l40s-dmon")["dmon_t"], vmstat=swapping["vmstat"],
                                    psi_memory=case("psi-thrashing")["psi_memory"], time_s=1000.0))
    add = {k: swapping["later"][k] for k in ("pswpin", "pswpout", "pgmajfault")}
    second = SAMPLE_PROBE.read(sample_lines(
        gpu=(caps["gpu"]["header"], caps["gpu"]["load"]), dmon=case("l40s-dmon")["dmon_t"],
        vmstat=_later_vmstat(swapping["vmstat"], add), psi_memory=case("psi-thrashing")["psi_memory"],
        status=case("proc-188-bash")["status"], stat=case("proc-188-bash")["stat"], pid=188, time_s=1005.0))
    checks = evaluate(first, second, Thresholds(), 0)
    cpu_box = SAMPLE_PROBE.read(case("no-gpu-host-recorded-here")["probe"])
    text = prometheus_text({"gpu-box": second, "cpu-box": cpu_box}, {"gpu-box": checks}, previous={"gpu-box": first})
    families = _families(text)
    assert set(families) <= set(METRICS)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert line == f"# HELP {name} {METRICS[name][1]}"
    temp = families["provision_gpu_temperature_celsius"].samples[0]
    assert temp.labels == {"host": "gpu-box", "gpu": "0"} and temp.value == 46
    swap_in = {s.labels["host"]: s.value for s in families["provision_swap_in_bytes_per_second"].samples}
    assert swap_in == {"gpu-box": pytest.approx(41943040.0)}  # cpu-box has one sample: no rate
    assert families["provision_gpu_pcie_rx_bytes_per_second"].samples[0].value == 72e6
    assert {s.labels["host"] for s in families["provision_memory_pressure_some_avg10"].samples} == \
        {"gpu-box", "cpu-box"}
    rss = families["provision_server_rss_bytes"].samples[0]
    assert rss.labels == {"host": "gpu-box", "service": "llm-server"} and rss.value == 3720 * 1024
    status = {s.labels["check"]: s.value for s in families["provision_check_status"].samples}
    assert status["monitor.swap"] == 2 and status["monitor.memory_pressure"] == 2
    assert status["monitor.gpu_temperature"] == 0
    assert "monitor.governor" not in status  # skipped checks are left out


def test_prometheus_label_values_are_escaped() -> None:
    sample = Sample(time_s=1.0, service='we"ird\\name', server="systemd", server_pid=1, server_rss_kb=1)
    text = prometheus_text({'h"1': sample}, {})
    (rss,) = _families(text)["provision_server_rss_bytes"].samples
    assert rss.labels == {"host": 'h"1', "service": 'we"ird\\name'}


# --------------------------------------------------------------------------- the command

def _local(name: str = "local", profile: str = "-", root: Path | None = None) -> Target:
    return Target(name, Path(profile), lambda: LocalTransport(root))


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_monitor_once_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    code = monitor_command([_local()], forks=2, once=True, interval=0.3, as_json=True, samples=None)
    (report,) = _json_lines(capsys.readouterr().out)
    assert report["command"] == "monitor" and report["ok"] and report["error"] is None
    assert report["status"] in {"pass", "warn", "fail"}, "skipped checks do not make the sample skip"
    assert code == (2 if report["status"] == "fail" else 0)
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["monitor.swap"]["status"] != "skip", "two samples give a rate"
    assert report["rates"]["interval_s"] > 0
    assert report["sample"]["mem_total_kb"] > 0
    if report["sample"]["server"] == "no-systemd":
        assert "systemd is not running" in checks["monitor.server"]["hint"]


def test_monitor_once_on_a_root_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = _local("local:tree", str(ROOT / "examples" / "quickstart.yaml"), tmp_path)
    code = monitor_command([target], forks=1, once=True, interval=0.2, as_json=True, samples=None)
    (report,) = _json_lines(capsys.readouterr().out)
    checks = {c["id"]: c for c in report["checks"]}
    assert checks["monitor.server"]["status"] == "skip"
    assert checks["monitor.server"]["hint"] == "--root: a tree runs no model server"
    assert checks["monitor.page_cache"]["status"] in {"pass", "warn"}, "the profile's RAM weights are compared"
    assert "--root" in checks["monitor.gpu_temperature"]["hint"]
    assert code == (2 if report["status"] == "fail" else 0)


def test_monitor_loop_stops_after_samples(capsys: pytest.CaptureFixture[str]) -> None:
    code = monitor_command([_local("a"), _local("b")], forks=2, once=False, interval=0.1, as_json=True, samples=2)
    reports = _json_lines(capsys.readouterr().out)
    assert code == 0
    assert sorted((r["host"], r["seq"]) for r in reports) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    second = next(r for r in reports if r["host"] == "a" and r["seq"] == 2)
    assert second["rates"]["swap_in_bps"] is not None


class _Broken:
    name = "broken"
    root = ""
    state_dir = "/var/lib/provision"

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        return Completed(127, "", "sh: not found")

    def close(self) -> None:
        pass


def _unreachable() -> LocalTransport:
    raise ProvisionError("gpu9: connection refused", hint="is sshd running?")


def test_monitor_host_that_cannot_be_read(capsys: pytest.CaptureFixture[str]) -> None:
    targets = [_local("ok"), Target("broken", Path("-"), _Broken), Target("gpu9", Path("-"), _unreachable)]
    code = monitor_command(targets, forks=3, once=True, interval=0.1, as_json=True, samples=None)
    reports = {r["host"]: r for r in _json_lines(capsys.readouterr().out)}
    assert code == 1
    assert reports["ok"]["ok"]
    assert not reports["broken"]["ok"] and "sampling failed" in reports["broken"]["error"]["message"]
    assert reports["gpu9"]["error"]["hint"] == "is sshd running?"


# --------------------------------------------------------------------------- what apply installs

def _render(template: str) -> str:
    from provisioner.render.files import _environment

    env = _environment(str(data_dir("templates")))
    return env.get_template(template).render(service={"name": "llm-server"}, name="quickstart")


@pytest.fixture
def metrics_script(tmp_path: Path) -> Path:
    path = tmp_path / "llm-server-metrics.sh"
    path.write_text(_render("monitor-metrics.sh.j2"))
    path.chmod(0o755)
    return path


def test_metrics_script_passes_sh_n_and_shellcheck(metrics_script: Path) -> None:
    syntax = subprocess.run(["sh", "-n", str(metrics_script)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(metrics_script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_prom_script_is_the_template() -> None:
    from provisioner.monitor import prometheus as monitor

    rendered = _render("monitor-metrics.sh.j2")
    assert "service=llm-server\n" in rendered
    body = rendered.split("service=llm-server\n", 1)[1]
    assert monitor.PROM_SCRIPT.split("service=${PROVISION_SERVICE:-llm-server}\n", 1)[1] == body
    assert monitor.PROM_SCRIPT.startswith("#!/bin/sh\n")


def test_metrics_script_writes_what_the_parser_accepts(metrics_script: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "textfile"
    server = subprocess.Popen(["sleep", "30"])
    try:
        env = {**os.environ, "PROVISION_TEXTFILE_DIR": str(out_dir), "PROVISION_METRICS_INTERVAL": "0.3",
               "PROVISION_SERVER_PID": str(server.pid)}
        result = subprocess.run(["sh", str(metrics_script)], env=env, capture_output=True, text=True, check=False)
    finally:
        server.kill()
        server.wait()
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out_dir.iterdir()] == ["provision.prom"], "no temp file left behind"
    text = (out_dir / "provision.prom").read_text()
    families = _families(text)
    assert set(families) <= set(METRICS)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert line == f"# HELP {name} {METRICS[name][1]}", "the same help text as prometheus_text"
    expected = {"provision_swap_in_bytes_per_second", "provision_swap_out_bytes_per_second",
                "provision_server_rss_bytes"}
    if Path("/proc/pressure/memory").exists():
        expected |= {"provision_memory_pressure_some_avg10", "provision_memory_pressure_full_avg10"}
    assert expected <= set(families)
    rss = families["provision_server_rss_bytes"].samples[0]
    assert rss.labels["service"] == "llm-server" and rss.value > 0
    assert (out_dir / "provision.prom").stat().st_mode & 0o777 == 0o644


def test_metrics_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    from tests.render.test_rendered_files import verify_problems

    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/test installs it (package systemd)")
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "llm-server-metrics.service").write_text(_render("monitor-metrics.service.j2"))
    (units / "llm-server-metrics.timer").write_text(_render("monitor-metrics.timer.j2"))
    script = tmp_path / "opt" / "provision" / "bin" / "llm-server-metrics.sh"
    script.parent.mkdir(parents=True)
    script.write_text(_render("monitor-metrics.sh.j2"))
    script.chmod(0o755)
    for stub in ("bin/sh", "usr/bin/sh"):
        (tmp_path / stub).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stub).write_text("#!/bin/sh\n")
        (tmp_path / stub).chmod(0o755)
    for unit in ("/etc/systemd/system/llm-server-metrics.service", "/etc/systemd/system/llm-server-metrics.timer"):
        problems = verify_problems(tmp_path, unit)
        assert not problems, f"{unit}:\n" + "\n".join(problems)


def test_profile_thresholds_replace_the_defaults_and_unknown_names_are_refused(tmp_path: Path) -> None:
    from provisioner.converge.fleet import Target
    from provisioner.errors import ProfileError
    from provisioner.monitor.run import watch_for
    from provisioner.profile.loader import load_profile
    from tests.conftest import make_profile

    profile = make_profile(tmp_path, {"verify.thresholds": {"swap_fail_mbs": 5, "gpu_temp_warn_c": 78}})
    watch = watch_for(Target("t", profile, lambda: None))  # type: ignore[arg-type,return-value]
    assert watch.thresholds.swap_fail_mbs == 5 and watch.thresholds.gpu_temp_warn_c == 78
    assert watch.thresholds.swap_warn_mbs == 1.0  # the rest keep their defaults
    bad = make_profile(tmp_path, {"verify.thresholds": {"swap_fail_mb": 5}}, name="bad.yaml")
    with pytest.raises(ProfileError, match="did you mean 'swap_fail_mbs'"):
        load_profile(bad)


def test_new_xid_events_between_samples_fail_with_their_meaning() -> None:
    """The Xid line is the real one of tests/cases/gpu/rtx-5080-xid79.yaml
    (https://github.com/NVIDIA/open-gpu-kernel-modules/issues/1151)."""
    from provisioner.facts.sample import SAMPLE_PROBE
    from provisioner.monitor.checks import evaluate
    from provisioner.profile.thresholds import Thresholds

    xid = "May 18 19:02:39 kernel: NVRM: Xid (PCI:0000:2b:00): 79, GPU has fallen off the bus."
    before = SAMPLE_PROBE.read("@mon time 100.0\n@mon xid-log readable\n")
    after = SAMPLE_PROBE.read(f"@mon time 105.0\n@mon xid-log readable\n@mon xid |{xid}\n")
    checks = {c.id: c for c in evaluate(before, after, Thresholds(expect_server=False), 0)}
    assert checks["monitor.xid"].status == "fail"
    assert "Xid 79 on PCI:0000:2b:00" in (checks["monitor.xid"].observed or "")
    again = {c.id: c for c in evaluate(after, after, Thresholds(expect_server=False), 0)}
    assert again["monitor.xid"].status == "pass"  # the same event is not new any more
    unreadable = SAMPLE_PROBE.read("@mon time 105.0\n@mon xid-log unreadable\n")
    assert {c.id: c for c in evaluate(before, unreadable, Thresholds(expect_server=False), 0)}[
        "monitor.xid"].status == "skip"


def test_nvlink_links_up_pass_and_a_down_link_warns() -> None:
    """Real `nvidia-smi nvlink -s` output (tests/cases/monitor/gb200-nvlink-status.yaml); the
    down-link variant replaces one link's speed with nvidia-smi's `<inactive>`."""
    import yaml

    from provisioner.facts.sample import SAMPLE_PROBE
    from provisioner.monitor.checks import evaluate
    from provisioner.profile.thresholds import Thresholds

    case = yaml.safe_load((Path(__file__).resolve().parents[1] / "cases/monitor/gb200-nvlink-status.yaml").read_text())
    lines = "".join(f"@mon nvlink |{line}\n" for line in case["nvlink_s"].splitlines())
    sample = SAMPLE_PROBE.read("@mon time 1.0\n" + lines)
    assert len(sample.nvlink) == 18 and sample.nvlink[0] == (0, 0, 53.125)
    check = {c.id: c for c in evaluate(None, sample, Thresholds(expect_server=False), 0)}["monitor.nvlink"]
    assert check.status == "pass" and "18/18 links up, 956.25 GB/s" in (check.observed or "")
    down = SAMPLE_PROBE.read("@mon time 1.0\n" + lines.replace("Link 7: 53.125 GB/s", "Link 7: <inactive>"))
    check = {c.id: c for c in evaluate(None, down, Thresholds(expect_server=False), 0)}["monitor.nvlink"]
    assert check.status == "warn" and "GPU0 link 7" in (check.observed or "")
    none = {c.id: c for c in evaluate(None, SAMPLE_PROBE.read("@mon time 1.0\n"), Thresholds(expect_server=False), 0)}
    assert none["monitor.nvlink"].status == "skip"
