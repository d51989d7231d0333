"""`provision monitor`: watch the serving model (samples judged pass/warn/fail)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli import _output
from provisioner.cli._common import EXIT_ERROR, EXIT_FINDING, EXIT_OK, NO_PROFILE, command, target_options, targets
from provisioner.errors import Problem, ProvisionError

if TYPE_CHECKING:
    from provisioner.monitor.run import Report, Watch


@command("monitor")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@click.option("--once", is_flag=True, help="Two samples INTERVAL apart, print, exit (2 if a check failed).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True, metavar="S",
              help="Seconds between samples.")
@click.option("--samples", type=click.IntRange(1), default=None, metavar="N", help="Stop after N samples per host.")
def monitor(profile: Path | None, once: bool, interval: float, samples: int | None, as_json: bool,
            **opts: Any) -> int:
    """Watch the serving model: swap, memory/IO pressure, page cache vs model, the server's RSS,
    locked memory and major faults, GPU temperature, power vs limit, clocks and throttle reasons,
    VRAM, PCIe link and RX/TX, CPU governor. Each sample is pass/warn/fail with a hint.

    Without PROFILE the defaults apply and no server is expected. On a terminal a live view,
    otherwise one JSON object per sample and host. --once exits 0 ok, 2 a check failed,
    1 a host could not be read.

    \b
    Example:
      provision monitor examples/quickstart.yaml --once
      provision monitor --host admin@gpu-box --interval 2
      provision monitor -i examples/fleet/inventory.yaml --once --json
      provision monitor my.yaml --samples 10 --json > samples.jsonl
    """
    return monitor_command(targets(profile or NO_PROFILE, opts), opts["forks"], once, interval, as_json, samples)


def monitor_command(chosen: list[Any], forks: int, once: bool, interval: float, as_json: bool,
                    samples: int | None) -> int:
    """Sample every target; exit 1 if a host could not be read, else with --once 2 if a check failed, else 0."""
    from provisioner.monitor.run import sample_once, sample_stream, watch_for  # loads the profiles: only when run

    watches: dict[str, Watch | Problem] = {}
    for target in chosen:
        try:
            watches[target.name] = watch_for(target)
        except ProvisionError as exc:
            watches[target.name] = exc.first
    human = not as_json and sys.stderr.isatty()
    if once:
        reports = sample_once(chosen, forks, watches, interval)
        for report in reports:
            _emit(report, human)
        if any(r.error for r in reports):
            return EXIT_ERROR
        return EXIT_FINDING if any(r.status == "fail" for r in reports) else EXIT_OK
    live = _output.LiveTable("provision monitor (Ctrl-C stops)", _COLUMNS) if human else None
    try:
        errored = sample_stream(chosen, forks, watches, interval, samples,
                                lambda r: live.update(r.host, _row(r)) if live is not None else _emit(r, False))
    finally:
        if live is not None:
            live.close()
    return EXIT_ERROR if errored else EXIT_OK


def report_json(report: Report) -> dict[str, Any]:
    """One sample of one host, in the envelope (one object per line)."""
    from provisioner.facts.check import failures_first

    return _output.envelope(
        "monitor", report.error is None, report.error, host=report.host, seq=report.seq,
        status=None if report.error else report.status,
        sample=_output.sample_json(report.sample) if report.sample else None,
        rates=_output.dataclass_json(report.rates),
        checks=[_output.check_json(c) for c in failures_first(list(report.checks))])


def _emit(report: Report, human: bool) -> None:
    from provisioner.facts.check import failures_first

    if not human:
        _output.print_json_line(report_json(report))
        return
    if report.error:
        _output.say(f"error: {report.error.one_line()}")
        return
    rows = [[c.id, c.status, c.observed or "", c.hint or ""] for c in failures_first(list(report.checks))]
    _output.print_table(f"{report.host}: {report.status}", ["check", "status", "observed", "hint"], rows)


_COLUMNS = ("host", "status", "swap in/out", "mem PSI", "GPU temp", "GPU power", "server RSS", "findings")


def _row(r: Report) -> list[str]:
    from provisioner.monitor.checks import gib, mbs

    if r.error or r.sample is None:
        return [r.host, "error", "", "", "", "", "", r.error.message if r.error else ""]
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
    return [r.host, r.status, swap, f"{psi.avg10:g}%" if psi else "-", temps, power, rss, findings]
