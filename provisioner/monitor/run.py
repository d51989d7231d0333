"""`provision monitor`: swap, temperatures, PCIe and memory pressure while the model serves.

One remote command per sample and host (``SAMPLE_PROBE``, facts/sample.py), parsed
into a ``Sample``; ``evaluate`` (monitor/checks.py) turns two samples into
ok/warn/fail checks with hints; ``prometheus_text`` writes the same numbers for
node_exporter's textfile collector, and ``PROM_SCRIPT`` (templates/monitor-metrics.sh.j2)
is the sh/awk script apply installs to write a subset of them on the host itself.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.errors import Problem, ProvisionError
from provisioner.facts.check import ORDER, Check, Status, worst
from provisioner.facts.sample import SAMPLE_PROBE, Sample, sample_script
from provisioner.monitor.checks import evaluate, gib, mbs
from provisioner.monitor.probe import Rates, rates
from provisioner.profile.thresholds import Thresholds

if TYPE_CHECKING:
    from provisioner.converge.fleet import Target
    from provisioner.transport import Transport


# --------------------------------------------------------------------------- Prometheus text

# name -> (type, help); the metrics script (PROM_SCRIPT) writes a subset under the same names.
METRICS: dict[str, tuple[str, str]] = {
    "provision_gpu_temperature_celsius": ("gauge", "GPU core temperature (nvidia-smi temperature.gpu)."),
    "provision_gpu_power_watts": ("gauge", "GPU board power draw (nvidia-smi power.draw)."),
    "provision_gpu_power_limit_watts": ("gauge", "GPU software power limit (nvidia-smi power.limit)."),
    "provision_gpu_sm_clock_hertz": ("gauge", "GPU SM clock (nvidia-smi clocks.sm)."),
    "provision_gpu_clock_event_reasons": ("gauge", "Active clock event (throttle) reasons bitmask, NVML bits."),
    "provision_gpu_memory_used_bytes": ("gauge", "GPU memory used (nvidia-smi memory.used)."),
    "provision_gpu_memory_total_bytes": ("gauge", "GPU memory total (nvidia-smi memory.total)."),
    "provision_gpu_utilization_ratio": ("gauge", "Fraction of time a kernel ran (nvidia-smi utilization.gpu)."),
    "provision_gpu_pcie_link_generation": ("gauge", "Current PCIe link generation."),
    "provision_gpu_pcie_link_width": ("gauge", "Current PCIe link width (lanes)."),
    "provision_gpu_pcie_rx_bytes_per_second": ("gauge", "PCIe bytes received by the GPU per second (dmon rxpci)."),
    "provision_gpu_pcie_tx_bytes_per_second": ("gauge", "PCIe bytes sent by the GPU per second (dmon txpci)."),
    "provision_swap_in_bytes_per_second": ("gauge", "Bytes swapped in per second (/proc/vmstat pswpin)."),
    "provision_swap_out_bytes_per_second": ("gauge", "Bytes swapped out per second (/proc/vmstat pswpout)."),
    "provision_major_faults_per_second": ("gauge", "Major page faults per second (the server's, else the host's)."),
    "provision_memory_pressure_some_avg10": ("gauge", "PSI memory some avg10, percent of time."),
    "provision_memory_pressure_full_avg10": ("gauge", "PSI memory full avg10, percent of time."),
    "provision_io_pressure_some_avg10": ("gauge", "PSI io some avg10, percent of time."),
    "provision_io_pressure_full_avg10": ("gauge", "PSI io full avg10, percent of time."),
    "provision_cpu_pressure_some_avg10": ("gauge", "PSI cpu some avg10, percent of time."),
    "provision_memory_total_bytes": ("gauge", "MemTotal of /proc/meminfo."),
    "provision_memory_available_bytes": ("gauge", "MemAvailable of /proc/meminfo."),
    "provision_page_cache_bytes": ("gauge", "Cached of /proc/meminfo."),
    "provision_server_rss_bytes": ("gauge", "Model server resident set size (VmRSS)."),
    "provision_server_locked_bytes": ("gauge", "Model server locked memory (VmLck)."),
    "provision_server_swap_bytes": ("gauge", "Model server memory in swap (VmSwap)."),
    "provision_check_status": ("gauge", "provision monitor check: 0 pass, 1 warn, 2 fail (skipped checks absent)."),
}
STATUS_VALUE: dict[str, int] = {"pass": 0, "warn": 1, "fail": 2}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def prometheus_text(samples: dict[str, Sample], checks: dict[str, list[Check]],
                    previous: dict[str, Sample] | None = None) -> str:
    """node_exporter textfile-collector text: # HELP / # TYPE, then the samples of each metric.

    ``previous`` (the host's earlier sample) gives the rates; without it they are left out."""
    series: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in METRICS}

    def put(name: str, labels: dict[str, str], value: float | None) -> None:
        if value is not None:
            series[name].append((labels, value))

    for host, s in sorted(samples.items()):
        h = {"host": host}
        for g in s.gpus:
            gl = {**h, "gpu": str(g.index)}
            put("provision_gpu_temperature_celsius", gl, g.temperature_c)
            put("provision_gpu_power_watts", gl, g.power_w)
            put("provision_gpu_power_limit_watts", gl, g.power_limit_w)
            put("provision_gpu_sm_clock_hertz", gl, None if g.sm_clock_mhz is None else g.sm_clock_mhz * 1e6)
            put("provision_gpu_clock_event_reasons", gl, g.clock_mask)
            put("provision_gpu_memory_used_bytes", gl, None if g.memory_used_mib is None else g.memory_used_mib * 2**20)
            put("provision_gpu_memory_total_bytes", gl,
                None if g.memory_total_mib is None else g.memory_total_mib * 2**20)
            put("provision_gpu_utilization_ratio", gl, None if g.utilization_pct is None else g.utilization_pct / 100)
            put("provision_gpu_pcie_link_generation", gl, g.pcie_gen_current)
            put("provision_gpu_pcie_link_width", gl, g.pcie_width_current)
            put("provision_gpu_pcie_rx_bytes_per_second", gl, None if g.pcie_rx_mbs is None else g.pcie_rx_mbs * 1e6)
            put("provision_gpu_pcie_tx_bytes_per_second", gl, None if g.pcie_tx_mbs is None else g.pcie_tx_mbs * 1e6)
        r = rates((previous or {}).get(host), s)
        put("provision_swap_in_bytes_per_second", h, r.swap_in_bps)
        put("provision_swap_out_bytes_per_second", h, r.swap_out_bps)
        put("provision_major_faults_per_second", h, r.major_faults_per_s)
        for resource, kind in (("memory", "some"), ("memory", "full"), ("io", "some"), ("io", "full"),
                               ("cpu", "some")):
            p = s.pressure(resource, kind)
            put(f"provision_{resource}_pressure_{kind}_avg10", h, None if p is None else p.avg10)
        kb = {"provision_memory_total_bytes": s.mem_total_kb, "provision_memory_available_bytes": s.mem_available_kb,
              "provision_page_cache_bytes": s.cached_kb}
        for name, value in kb.items():
            put(name, h, None if value is None else value * 1024)
        if s.server_pid is not None:
            sl = {**h, "service": s.service or ""}
            for name, value in (("provision_server_rss_bytes", s.server_rss_kb),
                                ("provision_server_locked_bytes", s.server_locked_kb),
                                ("provision_server_swap_bytes", s.server_swap_kb)):
                put(name, sl, None if value is None else value * 1024)
        for check in checks.get(host, []):
            if check.status in STATUS_VALUE:
                put("provision_check_status", {**h, "check": check.id}, STATUS_VALUE[check.status])
    lines: list[str] = []
    for name, (kind, help_text) in METRICS.items():
        if not series[name]:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, number in series[name]:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {_value(number)}")
    return "\n".join(lines) + ("\n" if lines else "")


def prom_script_path() -> Path:
    from provisioner.datadir import data_dir

    return data_dir("templates") / "monitor-metrics.sh.j2"


def _prom_script() -> str:
    """templates/monitor-metrics.sh.j2 with its one templated line replaced by an
    environment default (the template is the single source of the script)."""
    text = prom_script_path().read_text(encoding="utf-8")
    text = text.replace("{% raw %}", "").replace("{% endraw %}\n", "")
    text = re.sub(r"^# Managed by provision.*\n", "", text, flags=re.M)
    return re.sub(r"^service=.*$", "service=${PROVISION_SERVICE:-llm-server}", text, count=1, flags=re.M)


def __getattr__(name: str) -> str:
    """``PROM_SCRIPT``: the metrics script apply installs as /opt/provision/bin/<service>-metrics.sh,
    read lazily from its template (a POSIX sh script; no Python on the target)."""
    if name == "PROM_SCRIPT":
        return _prom_script()
    raise AttributeError(name)


# --------------------------------------------------------------------------- the command

@dataclass(frozen=True)
class Watch:
    """What to look for on one target, from its profile (defaults without one)."""

    service: str = "llm-server"
    thresholds: Thresholds = field(default_factory=Thresholds)
    model_bytes: int = 0


def watch_for(target: Target) -> Watch:
    if str(target.profile) == "-":
        return Watch(thresholds=Thresholds(expect_server=False))
    from provisioner.render.engine_command import engine_command
    from provisioner.render.files import model_path

    built = target.build(ignore_fit=True)
    spec, placement = built.spec, built.placement
    if spec.profile.cluster is not None:  # a cluster node watches its own GPUs
        from provisioner.profile.cluster import node_spec

        spec = node_spec(spec, target.node_of(built) or spec.profile.cluster.head.name)
    command = engine_command(spec, placement, model_path(spec))
    locked = any("mlock" in word for arg in command.args for word in arg.words)
    ram = placement.devices[-1]  # "CPU RAM" is always last
    overrides: dict[str, Any] = dict(spec.profile.verify.thresholds)  # names checked when it was loaded
    thresholds = dataclasses.replace(
        Thresholds(require_locked=locked, cpu_governor=spec.profile.os.cpu_governor, gpus_expected=spec.gpu_count),
        **overrides)
    return Watch(spec.profile.service.name, thresholds, ram.weights_bytes)


def take_sample(transport: Transport, service: str) -> Sample:
    result = transport.run(sample_script(service, transport.root))
    if "@mon time" not in result.stdout:
        raise ProvisionError(f"{transport.name}: sampling failed: "
                             f"{(result.stderr or result.stdout).strip()[:300] or f'exit code {result.returncode}'}",
                             hint="the target needs a POSIX sh and a readable /proc")
    return SAMPLE_PROBE.read(result.stdout)


@dataclass(frozen=True)
class Report:
    host: str
    seq: int
    sample: Sample | None
    rates: Rates
    checks: tuple[Check, ...]
    error: Problem | None = None

    @property
    def status(self) -> Status:
        """The worst finding; skipped checks (nothing to look at) do not make a sample "skip"."""
        return worst([c for c in self.checks if c.status != "skip"])

    def as_json(self) -> dict[str, Any]:
        return {"command": "monitor", "ok": self.error is None,
                "error": self.error.as_json() if self.error else None, "host": self.host, "seq": self.seq,
                "status": None if self.error else self.status,
                "sample": self.sample.as_json() if self.sample else None, "rates": self.rates.as_json(),
                "checks": [c.as_json() for c in sorted(self.checks, key=lambda c: (ORDER[c.status], c.id))]}


def _report(host: str, seq: int, prev: Sample | None, cur: Sample, watch: Watch) -> Report:
    checks = evaluate(prev, cur, watch.thresholds, watch.model_bytes)
    return Report(host, seq, cur, rates(prev, cur), tuple(checks))


def _error(host: str, problem: Problem, seq: int = 0) -> Report:
    return Report(host, seq, None, Rates(), (), problem)


def monitor_command(targets: list[Target], forks: int, once: bool, interval: float, as_json: bool,
                    samples: int | None) -> int:
    """Sample every target; exit 1 if a host could not be read, else with --once 2 if a check failed, else 0."""
    from provisioner.converge.fleet import map_targets

    watches: dict[str, Watch | Problem] = {}
    for target in targets:
        try:
            watches[target.name] = watch_for(target)
        except ProvisionError as exc:
            watches[target.name] = exc.first
    human = not as_json and sys.stderr.isatty()
    if once:
        def work(target: Target, transport: Transport) -> Report:
            watch = watches[target.name]
            if isinstance(watch, Problem):
                return _error(target.name, watch)
            first = take_sample(transport, watch.service)
            time.sleep(max(0.0, interval))
            return _report(target.name, 1, first, take_sample(transport, watch.service), watch)

        reports = map_targets(targets, forks, work, lambda t, exc: _error(t.name, exc.first))
        for report in reports:
            _emit(report, human)
        if any(r.error for r in reports):
            return 1
        return 2 if any(r.status == "fail" for r in reports) else 0
    return _loop(targets, forks, watches, interval, samples, human)


def _loop(targets: list[Target], forks: int, watches: dict[str, Watch | Problem], interval: float,
          samples: int | None, human: bool) -> int:
    from provisioner.converge.fleet import map_targets

    stop = threading.Event()
    out: queue.Queue[Report | None] = queue.Queue()

    def work(target: Target, transport: Transport) -> bool:
        watch = watches[target.name]
        if isinstance(watch, Problem):
            out.put(_error(target.name, watch))
            return False
        prev: Sample | None = None
        seq = 0
        while not stop.is_set() and (samples is None or seq < samples):
            if seq:
                stop.wait(max(0.0, interval))
                if stop.is_set():
                    break
            cur = take_sample(transport, watch.service)
            seq += 1
            out.put(_report(target.name, seq, prev, cur, watch))
            prev = cur
        return True

    def failed(target: Target, exc: ProvisionError) -> bool:
        out.put(_error(target.name, exc.first))
        return False

    def run_all() -> None:
        try:
            map_targets(targets, forks, work, failed)
        finally:
            out.put(None)

    runner = threading.Thread(target=run_all, daemon=True)
    runner.start()
    errored = False
    live = _Live() if human else None
    try:
        while (report := out.get()) is not None:
            errored = errored or report.error is not None
            if live is not None:
                live.update(report)
            else:
                _emit(report, False)
    except KeyboardInterrupt:
        stop.set()
    finally:
        stop.set()
        if live is not None:
            live.close()
        runner.join(timeout=max(5.0, interval + 5.0))
    return 1 if errored else 0


def _emit(report: Report, human: bool) -> None:
    if not human:
        sys.stdout.write(json.dumps(report.as_json(), separators=(",", ":")) + "\n")
        sys.stdout.flush()
        return
    from provisioner.cli._output import print_table, say

    if report.error:
        say(f"error: {report.error.one_line()}")
        return
    rows = [[c.id, c.status, c.observed or "", c.hint or ""]
            for c in sorted(report.checks, key=lambda c: (ORDER[c.status], c.id))]
    print_table(f"{report.host}: {report.status}", ["check", "status", "observed", "hint"], rows)


class _Live:
    """The rich Live view: one row per host, its latest sample."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.latest: dict[str, Report] = {}
        self.live = Live(console=Console(stderr=True), auto_refresh=False)
        self.live.start()

    def update(self, report: Report) -> None:
        from rich.table import Table

        self.latest[report.host] = report
        table = Table(title="provision monitor (Ctrl-C stops)", title_justify="left")
        for column in ("host", "status", "swap in/out", "mem PSI", "GPU temp", "GPU power", "server RSS",
                       "findings"):
            table.add_column(column)
        for host, r in sorted(self.latest.items()):
            table.add_row(*_row(host, r))
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()


def _row(host: str, r: Report) -> list[str]:
    if r.error or r.sample is None:
        return [host, "error", "", "", "", "", "", r.error.message if r.error else ""]
    s = r.sample
    swap = f"{mbs(r.rates.swap_in_bps)} / {mbs(r.rates.swap_out_bps)}" \
        if r.rates.swap_in_bps is not None and r.rates.swap_out_bps is not None else "-"
    psi = s.pressure("memory", "some")
    temps = " ".join(f"{g.temperature_c:g}C" for g in s.gpus if g.temperature_c is not None) or "-"
    power = " ".join(f"{g.power_w:g}/{g.power_limit_w:g}W" for g in s.gpus
                     if g.power_w is not None and g.power_limit_w is not None) or "-"
    rss = gib((s.server_rss_kb or 0) * 1024) if s.server_pid else "-"
    findings = ", ".join(f"{c.id.removeprefix('monitor.')}={c.status}" for c in r.checks
                         if c.status in {"warn", "fail"}) or "none"
    return [host, r.status, swap, f"{psi.avg10:g}%" if psi else "-", temps, power, rss, findings]


__all__ = ["METRICS", "Rates", "Sample", "Thresholds", "evaluate", "monitor_command", "prometheus_text", "rates"]
