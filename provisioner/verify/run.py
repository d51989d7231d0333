"""verify on one target: one gather (files, facts, live values, model hashes, GPU
probe), then pure checks; the endpoint, if asked, over HTTP from here."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from provisioner.converge.plan import make_plan
from provisioner.facts.check import Check
from provisioner.facts.collect import run_gather
from provisioner.facts.gather import Gathered
from provisioner.facts.gpu_probe import GPU_PROBE
from provisioner.facts.model_files import (
    MODEL_DIR_PROBE,
    MODEL_FILES_PROBE,
    ModelDir,
    model_dir_probe,
    model_files_probe,
    ollama_probe,
)
from provisioner.facts.probe import Probe
from provisioner.facts.speed_record import SpeedRecord, write_script
from provisioner.facts.vllm_log import VLLM_LOG_PROBE, vllm_log_probe
from provisioner.fit.calibrate import memory_settings
from provisioner.fit.predict import predict
from provisioner.install.secret import generated_key_path
from provisioner.profile.cluster import head_address, node_spec
from provisioner.render.files import render, sysctl_settings
from provisioner.render.pipeline import Built
from provisioner.transport import Transport
from provisioner.transport.local import LocalTransport
from provisioner.verify import drift as drift_checks
from provisioner.verify import endpoint, ray_status
from provisioner.verify import install as install_checks
from provisioner.verify import model as model_checks
from provisioner.verify.canary import QualityOptions, verify_quality
from provisioner.verify.gpu import gpu_checks
from provisioner.verify.vllm_pool import pool_checks

GROUPS = ("gpu", "drift", "model", "install", "endpoint", "cluster", "quality")


@dataclass(frozen=True)
class VerifyOptions:
    only: frozenset[str] = frozenset(GROUPS)
    endpoint: str | None = None  # URL; default: the profile's address, on a local live target
    needle: bool = True
    rebaseline: bool = False  # quality: record this run's fingerprint as the host's baseline


def verify_target(built: Built, transport: Transport, options: VerifyOptions,
                  node: str | None = None) -> list[Check]:
    """``node``: on a cluster profile, the node this target is (default: the head)."""
    cluster = built.spec.profile.cluster
    if cluster is not None:
        node = node or cluster.head.name
        role = next(n.role for n in cluster.nodes if n.name == node)
        view = node_spec(built.spec, node)
        built = Built(view, built.placement, built.rendered_for(node=node), built.installs)
        if role == "worker":
            # the head serves the endpoint and sees the cluster; an RPC worker holds no model file
            options = replace(options, only=options.only - {"endpoint", "quality"} - (
                {"model"} if cluster.backend == "rpc" else set()))
    spec, placement = built.spec, built.placement
    root_mode = bool(transport.root)
    wanted_sysctl = sysctl_settings(spec)
    ray_probe = cluster is not None and cluster.backend == "ray" and not root_mode \
        and node == cluster.head.name and "cluster" in options.only
    probes, snippets = _probes(built, transport, options, list(wanted_sysctl), ray_probe)
    gathered = run_gather(transport, probes, paths=[f.path for f in built.rendered.files],
                          service=spec.profile.service.name, extra="\n".join(snippets))
    checks: list[Check] = []
    if ray_probe:
        assert cluster is not None
        checks += ray_status.checks(gathered.output, len(cluster.nodes), sum(n.gpu_count for n in cluster.nodes))
    elif cluster is not None and "cluster" in options.only and node == cluster.head.name:
        checks.append(Check("cluster", "skip", hint="--root: a tree runs no cluster" if root_mode else
                            "llama.cpp RPC: the head's endpoint check shows the workers answer"))
    if "drift" in options.only:
        rendered = render(spec, placement, gathered.facts.values, node=node)
        plan = make_plan(rendered, gathered, root_mode=root_mode)
        checks += drift_checks.file_checks(plan)
        checks += drift_checks.live_checks(spec, wanted_sysctl, drift_checks.parse_live(gathered.output),
                                           root_mode=root_mode)
    if "model" in options.only:
        checks += _model(built, transport, gathered)
    if "install" in options.only:
        checks += install_checks.checks(built.rendered.installs, gathered.output, transport.root,
                                        gathered.facts.values)
    if "gpu" in options.only:
        checks += [Check("gpu", "skip", hint="--root: a tree has no GPU to look at")] if root_mode \
            else _gpu(built, gathered)
    if "endpoint" in options.only:
        checks += _endpoint(built, transport, options, gathered)
    if "quality" in options.only:  # last: it records a baseline only when every other check passed
        checks += _quality(built, transport, options, gathered, checks)
    return checks


def _probes(built: Built, transport: Transport, options: VerifyOptions, sysctl_keys: list[str],
            ray_probe: bool) -> tuple[list[Probe[object]], list[str]]:
    """What rides in the one gather: typed probes, and snippets whose lines other code parses."""
    spec = built.spec
    probes: list[Probe[object]] = []
    snippets: list[str] = []
    if "drift" in options.only:
        snippets.append(drift_checks.live_probe(spec, sysctl_keys))
    if "model" in options.only or "quality" in options.only:  # quality records the served file's sha256
        files = spec.profile.model.source.files or []
        if files and isinstance(transport, LocalTransport):
            # big shards take minutes: hash them here with a progress bar on a terminal
            model_checks.prehash([f.path for f in files], transport.root, transport.state_dir,
                                 show_progress=sys.stderr.isatty())
        probes += _model_probes(built, transport)
    if "install" in options.only:
        snippets += install_checks.probes(built.rendered.installs, transport.root)
    if "gpu" in options.only and not transport.root and spec.gpus:
        probes.append(GPU_PROBE)
    if ray_probe:
        snippets.append(ray_status.probe(head_address(spec)))
    if _serves_vllm_here(built, transport, options):
        probes.append(vllm_log_probe(spec.profile.service.name))
    return probes, snippets


def _serves_vllm_here(built: Built, transport: Transport, options: VerifyOptions) -> bool:
    """The profile's own vLLM server on this target, whose start-up log verify reads."""
    # not a Ray cluster's head: its workers' pools are logged on their own nodes
    return ("endpoint" in options.only and options.endpoint is None and not transport.root
            and built.spec.profile.runtime.engine == "vllm" and built.spec.profile.cluster is None)


def _model_probes(built: Built, transport: Transport) -> list[Probe[object]]:
    source, runtime = built.spec.profile.model.source, built.spec.profile.runtime
    if source.files:
        return [model_files_probe([f.path for f in source.files], transport.root, transport.state_dir)]
    if source.directory is not None:
        return [model_dir_probe(source.directory, transport.root)]
    if source.hf is not None:
        return [model_dir_probe(source.hf.dest, transport.root, source.hf.file)]
    if source.ollama is not None and not transport.root:
        return [ollama_probe(f"{runtime.local_address}:{runtime.port}")]
    return []


def _model(built: Built, transport: Transport, gathered: Gathered) -> list[Check]:
    spec = built.spec
    source = spec.profile.model.source
    if source.ollama is not None:
        if transport.root:
            return [Check("model.ollama", "skip", hint="--root: a tree runs no Ollama to list the tag (with "
                          "install.model, install.download:model compares its manifest with the lock)")]
        return model_checks.ollama_checks(source.ollama, gathered.read(MODEL_DIR_PROBE), source.ollama_digest)
    if source.directory is not None or source.hf is not None:
        return _model_dir(built, transport, gathered.read(MODEL_DIR_PROBE))
    if not source.files:  # pragma: no cover - the profile validates to one source
        return []
    checks = model_checks.file_checks(spec, gathered.read(MODEL_FILES_PROBE))
    return [*checks, *_header(built, transport, source.files[0].path, len(source.files))]


def _model_dir(built: Built, transport: Transport, seen: ModelDir) -> list[Check]:
    source = built.spec.profile.model.source
    if source.hf is not None and source.hf.file:  # llama.cpp: one GGUF inside dest, not a safetensors repo
        if seen.gguf is None:
            return [Check("model.file", "skip", hint="the model file was not gathered")]
        name, size = seen.gguf
        return [model_checks.gguf_file_check(name, size),
                *_header(built, transport, f"{source.hf.dest}/{source.hf.file}", None)]
    return model_checks.dir_checks(built.spec, source.hf.dest if source.hf else str(source.directory), seen)


def _header(built: Built, transport: Transport, first: str, shard_count: int | None) -> list[Check]:
    """The GGUF header's checks, read here (local and --root targets). ``shard_count`` None: the
    header's own split.count is trusted (an hf file names only the first shard)."""
    spec = built.spec
    if not isinstance(transport, LocalTransport):
        return [Check("model.header", "skip",
                      hint="the GGUF header is read where provision runs: local and --root targets")]
    path = Path(transport.root + first)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    try:
        facts = model_checks.header_facts(path)
    except (ValueError, OSError, KeyError, IndexError) as exc:
        return [Check("model.header", "fail", f"not a readable GGUF file: {exc}", "a GGUF header",
                      "the file is damaged or not GGUF")]
    count = shard_count if shard_count is not None else int(facts.get("split_count") or 1)
    return model_checks.header_checks(spec, facts, count)


def _gpu(built: Built, gathered: Gathered) -> list[Check]:
    spec = built.spec
    if not spec.gpus:
        return [Check("gpu.present", "skip", hint="the profile has no GPU")]
    expected = [(g.spec, g.count) for g in spec.gpus]
    driver = spec.profile.driver
    return gpu_checks(gathered.read(GPU_PROBE), expected, driver.kernel_module, spec.min_driver, driver.persistence,
                      driver.power_limit_w)


def _endpoint(built: Built, transport: Transport, options: VerifyOptions, gathered: Gathered) -> list[Check]:
    spec = built.spec
    url = options.endpoint
    if url is None:
        if transport.root:
            return [Check("endpoint", "skip", hint="--root: a tree serves nothing; give --endpoint URL to check one")]
        runtime = spec.profile.runtime
        host = runtime.local_address
        forward = getattr(transport, "forward", None)
        if forward is not None:  # a remote host: through the SSH connection, to its own loopback
            with forward(host, runtime.port) as local_port:
                checks = _endpoint_at(built, f"http://127.0.0.1:{local_port}", options, transport)
        else:
            checks = _endpoint_at(built, f"http://{host}:{runtime.port}", options, transport)
        if _serves_vllm_here(built, transport, options):
            checks += pool_checks(gathered.read(VLLM_LOG_PROBE), built.placement)
        # the profile's own server on this host: keep what it measured for fit --calibrate
        return [*checks, _record_speed(built, transport, checks)]
    return _endpoint_at(built, url, options, transport)


def _record_speed(built: Built, transport: Transport, checks: list[Check]) -> Check:
    """Append the endpoint's measured decode and prefill, with fit's predictions for them,
    to the last generation's speed.jsonl in the host's state."""
    measured = {k: v for c in checks for k, v in c.measured}
    if not {"decode_tokens_per_s", "prefill_tokens_per_s", "kv_pool_gib_per_gpu"} & measured.keys():
        return Check("endpoint.recorded", "skip", hint="no speed was measured")
    spec = built.spec
    prompt = int(measured["prompt_tokens"]) if "prompt_tokens" in measured else None
    record = SpeedRecord(
        generation=0, engine=spec.profile.runtime.engine, engine_version=spec.profile.runtime.version,
        gpus=tuple(g.id for g in spec.gpus for _ in range(g.count)), model=spec.profile.model.id,
        quant=spec.profile.model.quant, decode_tokens_per_s=measured.get("decode_tokens_per_s"),
        predicted_decode_tokens_per_s=measured.get("predicted_decode_tokens_per_s"),
        prefill_tokens_per_s=measured.get("prefill_tokens_per_s"),
        predicted_prefill_tokens_per_s=(predict(spec, built.placement, prompt_tokens=prompt).prefill_tokens_per_s
                                        if prompt else None),
        prompt_tokens=prompt, time=datetime.now(UTC).isoformat(timespec="seconds"),
        kv_pool_gib_per_gpu=measured.get("kv_pool_gib_per_gpu"),
        predicted_kv_pool_gib_per_gpu=measured.get("predicted_kv_pool_gib_per_gpu"),
        memory_settings=memory_settings(spec, built.placement) if "kv_pool_gib_per_gpu" in measured else "")
    done = transport.run(write_script(transport.state_dir, record))
    where = next((line.split(" ", 1)[1] for line in done.stdout.split("\n") if line.startswith("@recorded ")), None)
    if where is not None:
        return Check("endpoint.recorded", "pass", f"measured speeds appended to {where}",
                     hint="provision fit --host H --calibrate corrects its predictions with them")
    why = next((line.split(" ", 1)[1] for line in done.stdout.split("\n") if line.startswith("@not-recorded ")),
               done.stderr.strip() or "the write failed")
    return Check("endpoint.recorded", "skip", hint=f"speeds not recorded: {why}")


def _endpoint_at(built: Built, url: str, options: VerifyOptions, transport: Transport) -> list[Check]:
    spec = built.spec
    speed = predict(spec, built.placement).decode_tokens_per_s
    checks: list[Check] = endpoint.endpoint_checks(spec, built.placement, speed, url, _api_key(built, transport),
                                                   needle=options.needle)
    return checks


def _quality(built: Built, transport: Transport, options: VerifyOptions, gathered: Gathered,
             earlier: list[Check]) -> list[Check]:
    quality = QualityOptions(needle=options.needle, rebaseline=options.rebaseline, api_key=_api_key(built, transport))
    url = options.endpoint
    if url is None:
        if transport.root:
            return [Check("quality", "skip", hint="--root: a tree serves nothing; give --endpoint URL to check one")]
        runtime = built.spec.profile.runtime
        forward = getattr(transport, "forward", None)
        if forward is not None:
            with forward(runtime.local_address, runtime.port) as local_port:
                return verify_quality(built, transport, f"http://127.0.0.1:{local_port}", gathered, earlier, quality)
        url = f"http://{runtime.local_address}:{runtime.port}"
    return verify_quality(built, transport, url, gathered, earlier, quality)


def _api_key(built: Built, transport: Transport) -> str | None:
    ref = built.spec.profile.secrets.api_key
    if ref is None:
        return None
    if ref.generate:
        # read on the target (root's file: the transport's become), kept in memory only
        path = transport.root + generated_key_path(built.spec.profile.service.name)
        done = transport.run(f"cat {shlex.quote(path)} 2>/dev/null || true")
        return done.stdout.strip() or None
    if ref.from_env:
        return os.environ.get(ref.from_env)
    if ref.from_file and Path(ref.from_file).is_file():
        return Path(ref.from_file).read_text().strip()
    return None
