#!/usr/bin/env python3
"""Where one `provision plan|apply` run spends its time: a timestamp (ms since start, and
the thread) at each phase, printed to stderr.

    PYTHON bench/phases.py apply -i INVENTORY --known-hosts FILE --yes

Run it with the Python of the installation to measure (it imports that provision).
Phases: the cli imported; the build looked up (hit or miss); each host's connection
opened; each exec sent and answered; exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import sys
import threading
import time
from typing import Any

START = time.perf_counter()


def mark(what: str) -> None:
    sys.stderr.write(f"{1000 * (time.perf_counter() - START):7.1f} ms  {threading.current_thread().name:<24} {what}\n")


from provisioner import cli  # noqa: E402 - timed from before this import

mark("cli imported")

import provisioner.cli._common as common  # noqa: E402
from provisioner.converge import fleet  # noqa: E402

_cached_build = fleet.cached_build  # type: ignore[attr-defined]  # wrapped, to time it


def cached_build(request: Any) -> Any:
    mark("build lookup")
    built = _cached_build(request)
    mark(f"build ready ({'hit' if built.hit else 'miss: built'})")
    return built


fleet.cached_build = cached_build  # type: ignore[attr-defined]
_ssh_target = common.ssh_target


def ssh_target(host: Any, profile: Any, ssh: Any) -> Any:
    target = _ssh_target(host, profile, ssh)
    factory = target.transport_factory

    def connect() -> Any:
        mark(f"{host.name}: connecting (imports the transport on first use)")
        transport = factory()
        mark(f"{host.name}: connected")
        run = transport.run

        def timed_run(script: str, env: dict[str, str] | None = None) -> Any:
            mark(f"{host.name}: exec")
            result = run(script, env)
            mark(f"{host.name}: exec answered ({len(result.stdout)} bytes)")
            return result

        transport.run = timed_run  # type: ignore[method-assign]  # wrapped, to time it
        return transport

    return dataclasses.replace(target, transport_factory=connect)


common.ssh_target = ssh_target
atexit.register(lambda: mark("exit"))
cli.main(sys.argv[1:], prog_name="provision")
