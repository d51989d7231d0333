#!/usr/bin/env python3
"""Growth and start-up benchmark of an installed `provision` (standard library only).

    bench/growth.py [--provision PATH] [--hosts 1,10,50] [--reps 3] [--startup-reps 20] [-- ARGS]

1. Start-up: `provision validate <library profile>` against `python -c 'import yaml'`
   run by the same interpreter, alternating, after one warm-up run of each.
2. Growth: N private sshds on 127.0.0.(40+i) (tests/support/sshd.py, port
   $PROVISION_TEST_SSH_PORT), the quickstart profile applied under a target root
   per host: a cold apply, then REPS no-op applies, for each N; the per-host slope
   is the least-squares line through the medians. A no-op is also timed with an
   empty build cache (PROVISION_CACHE pointing at a fresh folder) to show a miss.

ARGS after `--` go to every plan/apply (e.g. `-- --transport openssh`). Prints a
markdown report; raw numbers go to bench/.work/growth.json. Only loopback addresses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from tests.support import sshd  # noqa: E402 - the repository root is put on the path first

WORK = HERE / ".work"
PROFILE = REPO / "examples" / "quickstart.yaml"
LIBRARY_PROFILE = "rtx-4090-qwen3-30b-a3b-llamacpp"  # validated by name, as a user would


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the process tree, exit code, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, proc.returncode, proc.stderr


def interpreter_of(provision: str) -> str:
    """The Python a console script runs on (its #! line)."""
    first = Path(shutil.which(provision) or provision).read_text().splitlines()[0]
    return first[2:].strip() if first.startswith("#!") else sys.executable


def startup(provision: str, reps: int) -> dict[str, object]:
    python = interpreter_of(provision)
    commands = {"import yaml": [python, "-c", "import yaml"],
                "provision validate": [provision, "validate", LIBRARY_PROFILE]}
    for cmd in commands.values():  # warm-up: fills the build cache, the page cache
        wall, _, code, err = timed(cmd)
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(reps):
        for name, cmd in commands.items():
            wall, cpu, _, _ = timed(cmd)
            walls[name].append(wall)
            cpus[name].append(cpu)
    ratios = [v / y for v, y in zip(walls["provision validate"], walls["import yaml"], strict=True)]
    return {"python": python, "walls": walls, "cpus": cpus, "ratios": ratios}


def inventory(folder: Path, farm: sshd.SshFarm, count: int) -> Path:
    lines = ["hosts:"]
    for host in farm.hosts[:count]:
        lines.append(f"  h{host.index}: {{address: {host.address}, port: {sshd.PORT}, user: root, "
                     f"key: {farm.client_key}, root: {folder}/root-{host.index}, "
                     f"state_dir: {folder}/state-{host.index}, profile: {PROFILE}}}")
    path = folder / f"inventory-{count}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def apply(provision: str, inv: Path, farm: sshd.SshFarm, count: int, extra: list[str],
          env: dict[str, str] | None = None) -> tuple[float, float]:
    cmd = [provision, "apply", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--forks", str(count),
           "--yes", *extra]
    wall, cpu, code, err = timed(cmd, env)
    if code != 0:
        raise SystemExit(f"apply on {count} hosts failed ({code}): {err[-2000:]}")
    return wall, cpu


def growth(provision: str, counts: list[int], reps: int, extra: list[str]) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="provision-growth-"))
    farm = sshd.start_farm(folder / "ssh", max(counts))
    results: dict[str, object] = {}
    try:
        for count in counts:
            inv = inventory(folder, farm, count)
            for index in range(1, count + 1):
                shutil.rmtree(folder / f"root-{index}", ignore_errors=True)
                shutil.rmtree(folder / f"state-{index}", ignore_errors=True)
            cold = apply(provision, inv, farm, count, extra)
            noops = [apply(provision, inv, farm, count, extra) for _ in range(reps)]
            misses = []
            for _ in range(reps):
                with tempfile.TemporaryDirectory(prefix="provision-cache-") as empty:
                    misses.append(apply(provision, inv, farm, count, extra, {**os.environ, "PROVISION_CACHE": empty}))
            results[str(count)] = {"cold": cold, "noop": noops, "noop_empty_cache": misses}
            print(f"  {count} hosts: cold {cold[0]:.2f}s, no-op {[round(w, 2) for w, _ in noops]}, "
                  f"no-op with an empty cache {[round(w, 2) for w, _ in misses]}", file=sys.stderr)
    finally:
        farm.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return results


def slope(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares: (seconds per host, seconds at zero hosts)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    per_host = (sum((x - mean_x) * (y - mean_y) for x, y in points)
                / sum((x - mean_x) ** 2 for x in xs))
    return per_host, mean_y - per_host * mean_x


def report(start: dict[str, object], grown: dict[str, object], reps: int) -> str:
    walls, cpus, ratios = start["walls"], start["cpus"], start["ratios"]
    assert isinstance(walls, dict) and isinstance(cpus, dict) and isinstance(ratios, list)
    ms = {k: 1000 * statistics.median(v) for k, v in walls.items()}
    out = [f"### Start-up: validate of a library profile vs `python -c 'import yaml'` ({len(ratios)} runs each, "
           "alternating, warm cache)", "",
           "| command | wall ms (median) | wall ms (min) | CPU ms (median) |", "|---|--:|--:|--:|"]
    out += [f"| {k} | {ms[k]:.1f} | {1000 * min(walls[k]):.1f} | {1000 * statistics.median(cpus[k]):.1f} |"
            for k in walls]
    out += ["", f"Ratio of medians: {ms['provision validate'] / ms['import yaml']:.2f}x; per run: "
            + " / ".join(f"{r:.2f}" for r in ratios), ""]
    out += [f"### Growth: apply over N loopback sshds (quickstart profile, --forks N; {reps} no-ops per N)", "",
            "| hosts | cold apply s | no-op s (median) | no-op s per rep | no-op CPU s "
            "| no-op, empty cache s (median) |",
            "|--:|--:|--:|---|--:|--:|"]
    noop_points, cold_points, miss_points = [], [], []
    for count, data in grown.items():
        assert isinstance(data, dict)
        cold, noops, misses = data["cold"], data["noop"], data["noop_empty_cache"]
        noop = statistics.median(w for w, _ in noops)
        miss = statistics.median(w for w, _ in misses)
        noop_points.append((int(count), noop))
        cold_points.append((int(count), cold[0]))
        miss_points.append((int(count), miss))
        out.append(f"| {count} | {cold[0]:.2f} | {noop:.2f} | {' / '.join(f'{w:.2f}' for w, _ in noops)} | "
                   f"{statistics.median(c for _, c in noops):.2f} | {miss:.2f} |")
    out.append("")
    for name, points in (("no-op", noop_points), ("cold apply", cold_points), ("no-op, empty cache", miss_points)):
        per_host, base = slope(points)
        out.append(f"- {name}: {1000 * per_host:.1f} ms per host + {base:.2f} s")
    by_count = dict(noop_points)
    if 10 in by_count and 50 in by_count:
        out.append(f"- no-op on 50 hosts / no-op on 10 hosts: {by_count[50] / by_count[10]:.2f}x")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provision", default="provision", help="the provision executable to measure")
    parser.add_argument("--hosts", default="1,10,50")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--startup-reps", type=int, default=20)
    parser.add_argument("extra", nargs="*", help="after --: more arguments for every apply")
    args = parser.parse_args()
    problem = sshd.available()
    if problem:
        raise SystemExit(problem)
    counts = [int(n) for n in args.hosts.split(",")]
    if max(counts) > 200:
        raise SystemExit("at most 200 hosts (127.0.0.41-240)")
    start = startup(args.provision, args.startup_reps)
    grown = growth(args.provision, counts, args.reps, args.extra)
    WORK.mkdir(exist_ok=True)
    (WORK / "growth.json").write_text(json.dumps({"startup": start, "growth": grown}, indent=1))
    sys.stdout.write(report(start, grown, args.reps))


if __name__ == "__main__":
    main()
