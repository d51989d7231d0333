"""Sampling a serving box: what to watch on each target (from its profile), one sample
per remote command (``facts.sample.sample_script``), two samples judged into checks
(``checks.evaluate``), once or as a stream. Printing is the command's (cli/monitor.py).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provisioner.converge.fleet import Target, map_targets
from provisioner.errors import Problem, ProvisionError
from provisioner.facts.check import Check, Status, worst
from provisioner.facts.sample import SAMPLE_PROBE, Sample, sample_script
from provisioner.monitor.checks import evaluate
from provisioner.monitor.probe import Rates, rates
from provisioner.profile.cluster import node_spec
from provisioner.profile.thresholds import Thresholds
from provisioner.render.engine_command import engine_command
from provisioner.render.files import model_path
from provisioner.transport import Transport


@dataclass(frozen=True)
class Watch:
    """What to look for on one target, from its profile (defaults without one)."""

    service: str = "llm-server"
    thresholds: Thresholds = field(default_factory=Thresholds)
    model_bytes: int = 0


def watch_for(target: Target) -> Watch:
    if str(target.profile) == "-":
        return Watch(thresholds=Thresholds(expect_server=False))
    built = target.build(ignore_fit=True)
    spec, placement = built.spec, built.placement
    if spec.profile.cluster is not None:  # a cluster node watches its own GPUs
        spec = node_spec(spec, target.node_of(built.nodes) or spec.profile.cluster.head.name)
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


def report_of(host: str, seq: int, prev: Sample | None, cur: Sample, watch: Watch) -> Report:
    checks = evaluate(prev, cur, watch.thresholds, watch.model_bytes)
    return Report(host, seq, cur, rates(prev, cur), tuple(checks))


def error_report(host: str, problem: Problem, seq: int = 0) -> Report:
    return Report(host, seq, None, Rates(), (), problem)


def sample_once(targets: list[Target], forks: int, watches: dict[str, Watch | Problem],
                interval: float) -> list[Report]:
    """Two samples ``interval`` apart per target, in parallel: one report each."""

    def work(target: Target, transport: Transport) -> Report:
        watch = watches[target.name]
        if isinstance(watch, Problem):
            return error_report(target.name, watch)
        first = take_sample(transport, watch.service)
        time.sleep(max(0.0, interval))
        return report_of(target.name, 1, first, take_sample(transport, watch.service), watch)

    return map_targets(targets, forks, work, lambda t, exc: error_report(t.name, exc.first))


def sample_stream(targets: list[Target], forks: int, watches: dict[str, Watch | Problem], interval: float,
                  samples: int | None, on_report: Callable[[Report], None]) -> bool:
    """Sample every target every ``interval`` seconds (``samples`` times, or until Ctrl-C),
    handing each report to ``on_report`` in this thread. True when a host errored."""
    stop = threading.Event()
    out: queue.Queue[Report | None] = queue.Queue()

    def work(target: Target, transport: Transport) -> bool:
        watch = watches[target.name]
        if isinstance(watch, Problem):
            out.put(error_report(target.name, watch))
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
            out.put(report_of(target.name, seq, prev, cur, watch))
            prev = cur
        return True

    def failed(target: Target, exc: ProvisionError) -> bool:
        out.put(error_report(target.name, exc.first))
        return False

    def run_all() -> None:
        try:
            map_targets(targets, forks, work, failed)
        finally:
            out.put(None)

    runner = threading.Thread(target=run_all, daemon=True)
    runner.start()
    errored = False
    try:
        while (report := out.get()) is not None:
            errored = errored or report.error is not None
            on_report(report)
    except KeyboardInterrupt:
        stop.set()
    finally:
        stop.set()
        runner.join(timeout=max(5.0, interval + 5.0))
    return errored
