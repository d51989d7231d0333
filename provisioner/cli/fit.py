"""`provision fit`: the placement table, the flags chosen, predicted speed, what would fit.

Works on profiles that do NOT fit (that is its point), so it never goes through
pipeline.build(), which refuses them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli._common import command, ignore_fit_option, one_target, target_options
from provisioner.cli._output import Block, Result, Table, device_json, emit, lines, prediction_json
from provisioner.errors import UsageError
from provisioner.units import format_size

if TYPE_CHECKING:
    from provisioner.facts.host import HostFacts
    from provisioner.facts.host_load import HostLoad
    from provisioner.fit.placement import Placement
    from provisioner.fit.predict import Prediction
    from provisioner.profile.resolve import Spec
    from provisioner.transport import Transport


def gather_fit_host(transport: Transport, profile: Path) -> tuple[HostFacts, str]:
    """ONE round trip (facts/collect.py): the host's facts and the gather's output, whose fit
    probe lines tell what the profile's service does not hold."""
    from provisioner.facts import collect
    from provisioner.profile.loader import load_profile

    facts, gathered = collect.gather_fit_host(transport, load_profile(profile).profile.service.name)
    return facts, gathered.output


def fit_command(profile: Path, context: int | None, as_json: bool, ignore_fit: bool = False,
                host_facts: HostFacts | None = None, host: str | None = None, host_output: str | None = None,
                root: str = "", read_model_files: bool = True, settings: dict[str, Any] | None = None,
                calibrate: bool = False) -> int:
    """The command's body: print the result and return the exit code."""
    result = fit_result(profile, context, ignore_fit, host_facts=host_facts, host=host, host_output=host_output,
                        root=root, read_model_files=read_model_files, settings=settings, calibrate=calibrate)
    emit("fit", result, as_json)
    return result.code


def fit_result(profile: Path, context: int | None, ignore_fit: bool = False,
               host_facts: HostFacts | None = None, host: str | None = None, host_output: str | None = None,
               root: str = "", read_model_files: bool = True, settings: dict[str, Any] | None = None,
               calibrate: bool = False) -> Result:
    """Exit 0 if the profile fits (or ignore_fit), 2 if it does not. With ``host_facts``
    the host's real GPUs, RAM and cores replace the profile's hardware numbers; with
    ``host_output`` (the gather's text) the memory other processes hold and reserved
    hugepages are subtracted. Model files on this machine (under ``root``) give the
    real per-layer sizes (``read_model_files``: not for a remote host's facts). ``settings``
    (--set) change profile fields before the host's hardware is applied; ``calibrate`` scales
    the prediction by the host's own recorded verify runs (fit/calibrate.py)."""
    from provisioner.facts.gguf_layout import local_layout  # pydantic: only when run
    from provisioner.facts.host_load import FIT_PROBE, host_load
    from provisioner.fit import fit
    from provisioner.fit.host import hardware_overrides
    from provisioner.fit.predict import predict
    from provisioner.fit.suggest import suggestions
    from provisioner.fit.whatif import sets_quant
    from provisioner.render.engine_command import chosen_flags
    from provisioner.render.files import model_path, model_path_notes

    overrides = hardware_overrides(host_facts) if host_facts is not None else None
    spec = _resolved(profile, settings, overrides)
    load: HostLoad | None = None
    if host_facts is not None and host_output is not None:
        load = host_load(FIT_PROBE.read(host_output), host_facts.gpu_order)
    # a what-if quant is priced by the catalog: the files on disk are the profile's own quant
    layout, layout_note = (local_layout(spec, root) if read_model_files and not sets_quant(settings)
                           else (None, None))
    spec = dataclasses.replace(spec, host=load, layout=layout or spec.layout)
    if context is not None and context > spec.model.max_context:
        raise UsageError(f"--context {context} exceeds {spec.model.name}'s maximum of "
                         f"{spec.model.max_context}", hint=f"use at most {spec.model.max_context}")
    placement = fit(spec, context)
    if layout_note:
        placement = dataclasses.replace(placement, warnings=(layout_note, *placement.warnings))
    placement = dataclasses.replace(placement, warnings=(*placement.warnings, *model_path_notes(spec)))
    speed = predict(spec, placement)
    placement, speed, cal = _calibrate(spec, placement, speed, host_output) if calibrate else (placement, speed, None)
    chosen = chosen_flags(spec, placement, model_path(spec))
    hints = suggestions(spec, placement)
    code = 0 if placement.fits or ignore_fit else 2
    fields = dict(
            fits=placement.fits,
            devices=[device_json(d) for d in placement.devices],
            kv_bytes_per_token=placement.kv_bytes_per_token, context=placement.context,
            parallel=placement.parallel, missing_bytes=placement.missing_bytes,
            max_concurrency=(round(placement.max_concurrency, 2)
                             if placement.max_concurrency is not None else None),
            flags=chosen, **prediction_json(speed), decode_ms=speed.decode_ms,
            warnings=list(placement.warnings), suggestions=hints, weights_from=placement.weights_from,
            weights_size=_weights_size(spec, placement),
            host_load=_load_json(load), cluster=_cluster_json(spec, placement),
            ubatch_options=[dataclasses.asdict(o) for o in placement.ubatch_options],
            calibration=dataclasses.asdict(cal) if cal is not None else None,
            hardware_from=host, hardware=overrides["hardware"] if overrides else None)
    return Result(code, fields, (*_hardware_from(host, overrides), *_human(spec, placement, speed, chosen, hints)))


def _resolved(profile: Path, settings: dict[str, Any] | None, overrides: dict[str, Any] | None) -> Spec:
    """The profile with --set values and a host's hardware, resolved against the catalog."""
    from provisioner.fit.whatif import sets_quant
    from provisioner.install.model_fetch import fetch_model_shape
    from provisioner.lock import apply_lock, profile_lock
    from provisioner.lock.sizes import real_size
    from provisioner.profile.loader import deep_merge, load_profile
    from provisioner.profile.resolve import resolve

    loaded = load_profile(profile, deep_merge(settings or {}, overrides or {}) or None)
    lock = profile_lock(loaded)
    # the file a fresh PROFILE.lock pins is the one llama.cpp loads (the --model fit shows)
    loaded = apply_lock(loaded, lock, required=False)
    fetch_model_shape(loaded.profile)  # a model the catalog lacks: read once from the Hub, then cached
    if overrides is not None and loaded.profile.cluster is not None:
        raise UsageError(f"fit reads one host's hardware; {profile} describes a cluster of "
                         f"{len(loaded.profile.cluster.nodes)} nodes",
                         hint="run `provision fit` without --host/--here: each node's GPUs are in cluster.nodes")
    spec = resolve(loaded, what_if_quant=sets_quant(settings))
    if sets_quant(settings):
        return spec  # a what-if quant is priced by the catalog: the lock and files are the profile's quant
    return real_size(spec, lock)


def _hardware_from(host: str | None, overrides: dict[str, Any] | None) -> tuple[Block, ...]:
    if overrides is None:
        return ()
    hw = overrides["hardware"]
    gpus = ", ".join(f"{g['count']}x {g['model']}" for g in hw["gpus"]) or "no GPU in the catalog"
    return (lines(f"hardware from {host}: {gpus}, {format_size(hw['ram'])} RAM, {hw['cpu']['cores']} "
                  "cores (the profile's values replaced)"),)


def _calibrate(spec: Spec, placement: Placement, speed: Prediction,
               host_output: str | None) -> tuple[Placement, Prediction, Any]:
    """The prediction scaled by the runs recorded on the host (its gather's output), the
    placement with the note saying so, and the fit/calibrate.Calibration."""
    from provisioner.facts.speed_record import parse_records
    from provisioner.fit.calibrate import calibrated, calibrated_placement, calibration

    if host_output is None:
        raise UsageError("--calibrate uses the runs recorded on a host",
                         hint="add --host H (or --here) with --calibrate")
    cal = calibration(spec, placement, parse_records(host_output))
    placement = calibrated_placement(spec, placement, cal)
    return dataclasses.replace(placement, warnings=(cal.note, *placement.warnings)), calibrated(speed, cal), cal


def _load_json(load: HostLoad | None) -> dict[str, Any] | None:
    if load is None:
        return None
    return {"gpu_used_by_others_bytes": list(load.gpu_used_by_others),
            "other_processes": [{"bus_id": p.bus_id, "pid": p.pid, "used_bytes": p.used_bytes}
                                for p in load.others],
            "server_processes": [p.pid for p in load.processes if p.server],
            "hugepages_bytes": load.hugepages_bytes,
            "p2p_missing": [{"gpus": [i, j], "status": code} for i, j, code in load.p2p.missing]
            if load.p2p is not None else None}


def _gib(num: int) -> str:
    return format_size(num)


def _weights_size(spec: Spec, placement: Placement) -> dict[str, Any]:
    """The size fit placed: exact (a GGUF header, a lock, the files' bytes, a listed catalog
    figure) or a catalog estimate nobody re-read (catalog bytes_verified: false)."""
    from provisioner.profile.weights_size import estimate_note

    read = placement.weights_from != "catalog"
    return {"bytes": int(spec.layout.total) if spec.layout else spec.quant.bytes,
            "exact": read or spec.quant.bytes_verified,
            "note": None if read else estimate_note(spec)}


def _human(spec: Spec, placement: Placement, speed: Prediction, chosen: dict[str, Any],
           hints: list[dict[str, Any]]) -> tuple[Block, ...]:
    from provisioner.profile.weights_size import estimate_note

    p = spec.profile
    table = Table(f"{p.metadata.name}: {spec.model.name} {p.model.quant}, {p.runtime.engine} "
                f"{p.runtime.version}, {placement.context} tokens x {placement.parallel}",
                ["device", "capacity", "weights", "KV cache", "buffers", "free"],
                [[d.name, _gib(d.capacity_bytes), _gib(d.weights_bytes), _gib(d.kv_cache_bytes),
                  _gib(d.buffers_bytes), _gib(d.free_bytes)] for d in placement.devices])
    note = estimate_note(spec) if placement.weights_from == "catalog" else None
    said = [f"weights: {placement.weights_from}" + (f" ({note})" if note else "")]
    said.append(f"KV cache: {placement.kv_bytes_per_token} bytes per token, "
        f"{_gib(placement.kv_bytes_per_sequence)} per sequence at {placement.context} tokens")
    if p.cluster is not None:
        said.append(_cluster_line(spec, placement))
    if placement.max_concurrency is not None:
        said.append(f"vLLM KV pool: room for {placement.max_concurrency:.1f} sequences at full context")
    said.append("flags: " + " ".join(f"{k}" if v is True else f"{k}={v}" for k, v in chosen.items()
                             if k.startswith("-") and k not in {"--override-generation-config"}))
    said.append(f"predicted: {speed.decode_tokens_per_s:.1f} tok/s decode (short prompt), "
        f"{speed.decode_tokens_per_s_at_context:.1f} tok/s with {placement.context} tokens cached, "
        f"{speed.prefill_tokens_per_s:.0f} tok/s prefill; bottleneck: {speed.bottleneck}")
    if placement.ubatch_options:
        weighed = "; ".join(f"{o.ubatch}: {o.prefill_tokens_per_s:.0f} prefill, {o.decode_tokens_per_s:.1f} decode"
                            if o.fits else f"{o.ubatch}: does not fit" for o in placement.ubatch_options)
        # a choice among sizes none of which fits is no choice: say the size the flags carry and why
        chosen_how = ("fit's choice: the fastest prefill that keeps decode within a few percent"
                      if any(o.fits for o in placement.ubatch_options) else "no size fits; the flag keeps it")
        said.append(f"ubatch {placement.ubatch} ({chosen_how}): {weighed}")
    if speed.streams > 1:
        said.append(f"with {speed.streams} streams decoding at once: {speed.decode_aggregate_tokens_per_s:.1f} "
                    f"tok/s in all, {speed.decode_per_stream_tokens_per_s:.1f} tok/s each (short prompts)")
    said += [f"warning: {warning}" for warning in placement.warnings]
    if placement.fits:
        said.append("fits")
        return table, lines(*said)
    said.append(f"does NOT fit: {_gib(placement.missing_bytes)} missing")
    if not hints:
        said.append("no single change in the catalog makes it fit: more VRAM or RAM is needed")
    for hint in hints:
        note = f" ({hint['note']})" if "note" in hint else ""
        said.append(f"  would fit: {hint['change']} -> {hint['decode_tokens_per_s']} tok/s{note}")
    return table, lines(*said)


def _cluster_json(spec: Spec, placement: Placement) -> dict[str, Any] | None:
    """Per-node devices and the network's share of a decode step (None on one machine)."""
    cluster = spec.profile.cluster
    if cluster is None:
        return None
    nodes = [{"name": n.name, "host": n.host, "role": n.role, "address": n.address,
              "devices": [device_json(d) for d in placement.devices if d.node == n.name]} for n in cluster.nodes]
    return {"backend": cluster.backend, "nodes": nodes,
            "interconnect": {"type": cluster.interconnect.type, "gbit_s": cluster.interconnect.gbit_s,
                             "bytes_per_token": placement.interconnect_bytes_per_token,
                             "ms_per_token": round(placement.interconnect_s_per_token * 1e3, 3)}}


def _cluster_line(spec: Spec, placement: Placement) -> str:
    cluster = spec.profile.cluster
    assert cluster is not None
    link = f"{cluster.interconnect.gbit_s:g} Gbit/s {cluster.interconnect.type}"
    shape = (f"tensor parallel {cluster.head.gpu_count} x pipeline parallel {len(cluster.nodes)}"
             if cluster.backend == "ray" else f"llama.cpp RPC to {len(cluster.workers)} worker(s)")
    return (f"cluster: {len(cluster.nodes)} nodes, {shape}; interconnect {link}: "
            f"{placement.interconnect_bytes_per_token} bytes and "
            f"{placement.interconnect_s_per_token * 1e3:.3f} ms per token")


def compare_command(profile: Path, settings: dict[str, Any], compares: list[str], as_json: bool,
                    root: str = "") -> int:
    """One row per combination of the --compare values: fits, margin, speeds, quality."""
    from provisioner.facts.gguf_layout import local_layout
    from provisioner.fit import fit
    from provisioner.fit.whatif import combinations, ordered, row_of, sets_quant, with_settings
    from provisioner.lock import locked
    from provisioner.profile.loader import load_profile
    from provisioner.profile.resolve import resolve

    rows = []
    for combo in combinations(compares):
        combined = with_settings(settings, combo)
        spec = resolve(locked(load_profile(profile, combined or None)), what_if_quant=sets_quant(combined))
        if not sets_quant(combined):  # the files on disk are the profile's quant, not this one
            spec = dataclasses.replace(spec, layout=local_layout(spec, root)[0])
        rows.append(row_of(spec, fit(spec), combo))
    rows = ordered(rows)
    many = any(r.streams > 1 for r in rows)
    columns = [*(f for f, _ in rows[0].settings), "fits", "margin", "decode", "decode at context", "prefill",
               *(["all streams", "per stream"] if many else []), "quality"]
    table = Table(f"{profile.stem}: {len(rows)} combinations, best pick first", columns, [
        [*(str(v) for _, v in r.settings), "yes" if r.fits else "NO",
         format_size(r.margin_bytes) if r.margin_bytes >= 0 else "-" + format_size(-r.margin_bytes),
         f"{r.decode_tokens_per_s:.1f}", f"{r.decode_tokens_per_s_at_context:.1f} @ {r.context}",
         f"{r.prefill_tokens_per_s:.0f}",
         *([f"{r.decode_aggregate_tokens_per_s:.1f} x{r.streams}", f"{r.decode_per_stream_tokens_per_s:.1f}"]
           if many else []), r.quality] for r in rows])
    note = lines("tok/s; margin: least free memory on any device (negative: missing); decode at a short "
                 "prompt and with the cache filled to the context")
    result = Result(0 if any(r.fits for r in rows) else 2, {"rows": [r.as_dict() for r in rows]}, (table, note))
    emit("fit", result, as_json)
    return result.code


@command("fit")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--context", type=click.IntRange(256, 10_000_000), default=None,
              help="Fit at this context instead of the profile's.")
@click.option("--here", is_flag=True, help="Use this machine's real GPUs, RAM and cores instead of the profile's.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Change a profile field for this run only (repeatable), e.g. model.quant=Q4_K_M.")
@click.option("--compare", "compares", multiple=True, metavar="FIELD=V1,V2",
              help="Fit each value (repeatable: every combination) and print one row each.")
@click.option("--calibrate", is_flag=True,
              help="With --host/--here: scale the prediction by that host's own recorded verify runs "
                   "(and, for vLLM, plan with the KV pool its server logged).")
@target_options
@ignore_fit_option
def fit(profile: Path, context: int | None, here: bool, as_json: bool, ignore_fit: bool,
        sets: tuple[str, ...], compares: tuple[str, ...], calibrate: bool, **opts: Any) -> int:
    """Where every byte goes and how fast it will run.

    Prints the placement per device (weights, KV cache, buffers, free) for each
    GPU and for system RAM, the engine flags chosen (the same ones the run
    script states), and the predicted decode speed (short prompt, and with the
    cache filled to the context) and prefill speed, with the bottleneck. When
    the model does not fit, says how much is missing and the cheapest changes
    that would fit (smaller quant, shorter context, fewer slots, experts on the
    CPU, quantised KV cache, another engine), each checked.

    With --host (or -i with --limit, or --here for this machine) the host's real
    GPUs (by PCI device id), installed RAM, cores and NUMA nodes replace the
    profile's hardware numbers: will it fit *that* box. What other processes
    hold on each GPU (not the profile's own server and its children) and RAM
    reserved as hugepages are subtracted; GPU pairs without peer-to-peer
    access are reported and priced. Model files on this machine (or under
    --root) give the real per-layer sizes from their GGUF header.

    Exit codes: 0 fits, 2 does not fit, 1 bad input.

    \b
    Example:
      provision fit examples/quickstart.yaml
      provision fit profiles/rtx-3090-gpt-oss-120b-llamacpp.yaml --context 65536 --json
      provision fit rtx-4090-qwen3-30b-a3b-llamacpp --host admin@gpu-box   # that box's GPUs and RAM
      provision fit examples/quickstart.yaml --here   # this machine, minus what others hold
      provision fit examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml --json   # devices per node
      provision fit rtx-4090-qwen3-30b-a3b-llamacpp --set runtime.parallel=2   # what if, no file written
      provision fit rtx-4090-qwen3-30b-a3b-llamacpp --compare model.quant=Q4_K_M,Q8_0 \\
          --compare model.context=32768,65536   # one row per combination
    """
    from provisioner.cli.fit import compare_command, fit_command, gather_fit_host
    from provisioner.fit.whatif import overrides_of

    root = str(opts["root"]) if opts.get("root") else ""
    settings = overrides_of(list(sets))
    remote = here or opts["host"] is not None or opts["inventory"] is not None
    if compares:
        if remote or context is not None:
            raise UsageError("--compare fits the profile's own hardware at each value's context",
                             hint="drop --host/--here/--context, or give model.context as a --compare axis")
        return compare_command(profile, settings, list(compares), as_json, root=root)
    if not remote:
        if calibrate:
            raise UsageError("--calibrate uses the runs recorded on a host",
                             hint="add --host H (or --here) with --calibrate")
        return fit_command(profile, context, as_json, ignore_fit, root=root, settings=settings)
    target = one_target(profile, opts, "fit reads one host's hardware")
    with target.opened() as transport:
        facts, output = gather_fit_host(transport, profile)
    return fit_command(profile, context, as_json, ignore_fit, host_facts=facts, host=target.name,
                       host_output=output, root=root, read_model_files=here or bool(root), settings=settings,
                       calibrate=calibrate)
