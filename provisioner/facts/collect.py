"""The one round trip that reads a host: the gather script (facts/gather.py) with the
probes a caller picks riding along, run through a transport. Everything it calls to
understand the output is pure."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from provisioner.errors import ProvisionError
from provisioner.facts.gather import Gathered, gather_script, parse_gather
from provisioner.facts.gpu_probe import GPU_PROBE
from provisioner.facts.host import HOST_PROBE, HostFacts
from provisioner.facts.host_load import fit_probe
from provisioner.facts.probe import Probe, snippets
from provisioner.facts.speed_record import READ_SNIPPET

if TYPE_CHECKING:  # the protocol only: facts sits below transport/, which imports facts
    from provisioner.transport import Transport


def run_gather(transport: Transport, probes: Sequence[Probe[object]] = (), *, paths: Sequence[str] = (),
               service: str = "", host_paths: list[str] | None = None, extra: str = "",
               known: Mapping[str, bytes] | None = None) -> Gathered:
    """Facts, every managed path, provision's state and what ``probes`` print, in one exec on
    the host. ``extra``: more sh whose lines other code parses (install items, verify's live
    values), after the probes. ``known``: managed path -> bytes provision has (what it will
    write); a file on the host with the same sha256 is not sent back, and its content here
    is these bytes, as if it had been."""
    digests = {path: hashlib.sha256(data).hexdigest() for path, data in (known or {}).items()}
    script = gather_script(list(paths), transport.root, service, transport.state_dir, host_paths,
                           snippets(probes) + extra, expect=digests)
    result = transport.run(script)
    if result.returncode != 0 and "@done" not in result.stdout:
        raise ProvisionError(f"gathering facts on {transport.name} failed: "
                             f"{(result.stderr or result.stdout).strip()[:300]}",
                             hint="the target needs a POSIX sh with stat, sha256sum and base64")
    gathered = parse_gather(result.stdout)
    if not digests:
        return gathered
    paths_read = {path: dataclasses.replace(state, content=(known or {})[path])
                  if state.kind == "file" and state.content is None and path in digests
                  and state.sha256 == digests[path] else state
                  for path, state in gathered.paths.items()}
    return dataclasses.replace(gathered, paths=paths_read)


def gather_host(transport: Transport) -> HostFacts:
    """One round trip: the base facts, the GPU probe and the host probe (`provision init`)."""
    return HostFacts.from_gathered(run_gather(transport, [GPU_PROBE, HOST_PROBE]))


def gather_fit_host(transport: Transport, service: str) -> tuple[HostFacts, Gathered]:
    """ONE round trip for `fit --host/--here`: base facts, the GPU probe, the host probe and
    the fit probe (processes on the GPUs, hugepages, peer access, ``service``'s processes)."""
    # the speeds earlier verify runs recorded ride along, for fit --calibrate
    gathered = run_gather(transport, [GPU_PROBE, HOST_PROBE, fit_probe(service)], extra=READ_SNIPPET)
    return HostFacts.from_gathered(gathered), gathered
