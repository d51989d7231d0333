#!/usr/bin/env python3
"""Two installed provisions compared under the same load: no-op applies, alternating.

    bench/ab.py --before OLD/bin/provision --after NEW/bin/provision [--hosts 1,10,50] [--reps 5]

N private sshds on 127.0.0.(40+i) (tests/support/sshd.py, port $PROVISION_TEST_SSH_PORT),
the quickstart profile under a target root per host, converged by each tool first; then
REPS no-op applies of each, the order swapped every repetition, on both SSH transports.
The OpenSSH masters are stopped before every run, as the peer harness does, so every run
connects anew. On a shared machine whose load comes and goes, this pairs the two in time
where two separate benchmark runs would not. Prints a markdown table; only loopback.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(HERE.parent))
from tests.support import sshd  # noqa: E402 - the repository root is put on the path first

PROFILE = HERE.parent / "examples" / "quickstart.yaml"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the process tree); a failed run stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def inventory(folder: Path, farm: sshd.SshFarm, count: int) -> Path:
    lines = ["hosts:"] + [
        f"  h{host.index}: {{address: {host.address}, port: {sshd.PORT}, user: root, key: {farm.client_key}, "
        f"root: {folder}/root-{host.index}, state_dir: {folder}/state-{host.index}, profile: {PROFILE}}}"
        for host in farm.hosts[:count]]
    path = folder / f"inventory-{count}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def compare(tools: dict[str, str], counts: list[int], reps: int) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="provision-ab-"))
    masters = folder / "run"  # XDG_RUNTIME_DIR: the openssh transport's sockets
    masters.mkdir(mode=0o700)
    farm = sshd.start_farm(folder / "ssh", max(counts))
    rows = []
    try:
        for count in counts:
            inv = inventory(folder, farm, count)
            for transport in ("fabric", "openssh"):
                env = {**os.environ, "PROVISION_TRANSPORT": transport, "XDG_RUNTIME_DIR": str(masters)}

                def command(tool: str, inv: Path = inv, count: int = count) -> list[str]:
                    return [tools[tool], "apply", "-i", str(inv), "--known-hosts", str(farm.known_hosts),
                            "--forks", str(max(count, 20)), "--yes"]

                for tool in tools:  # converge, and fill each tool's build cache
                    timed(command(tool), env)
                walls: dict[str, list[float]] = {tool: [] for tool in tools}
                cpus: dict[str, list[float]] = {tool: [] for tool in tools}
                for rep in range(reps):
                    for tool in (list(tools) if rep % 2 == 0 else list(tools)[::-1]):
                        sshd.stop_masters(masters)
                        wall, cpu = timed(command(tool), env)
                        walls[tool].append(wall)
                        cpus[tool].append(cpu)
                sshd.stop_masters(masters)
                old, new = statistics.median(walls["before"]), statistics.median(walls["after"])
                rows.append(f"| {count} | {transport} | {old:.3f} | {new:.3f} | {new / old:.2f} | "
                            + " ".join(f"{w:.2f}" for w in walls["before"]) + " | "
                            + " ".join(f"{w:.2f}" for w in walls["after"]) + " | "
                            + f"{statistics.median(cpus['before']):.2f} -> {statistics.median(cpus['after']):.2f} |")
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        sshd.stop_masters(masters)
        farm.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the provision executable to compare against")
    parser.add_argument("--after", required=True, help="the provision executable measured")
    parser.add_argument("--hosts", default="1,10,50")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    problem = sshd.available()
    if problem:
        raise SystemExit(problem)
    counts = [int(n) for n in args.hosts.split(",")]
    if max(counts) > 200:
        raise SystemExit("at most 200 hosts (127.0.0.41-240)")
    rows = compare({"before": args.before, "after": args.after}, counts, args.reps)
    print("| hosts | transport | before s (median) | after s (median) | after / before | before per rep "
          "| after per rep | CPU s of the tool's tree, before -> after |")
    print("|--:|---|--:|--:|--:|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
