"""Spec + Placement -> the files to install, through the Jinja templates (pure).

``templates/manifest.yaml`` is the table of managed files: template, destination,
mode, the condition under which it is installed, how it is validated, and the
handlers it notifies. Every value a template writes passes through a filter
for that file's format, and ``finalize`` refuses any interpolated value with a
newline or control character, so a profile cannot smuggle an extra line (a
command, a setting, a key) into any file.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from provisioner.catalog import load_bundled_yaml
from provisioner.datadir import data_dir
from provisioner.errors import RenderError
from provisioner.facts.gather import STATE_DIR, template_facts
from provisioner.fit.placement import Placement
from provisioner.install import Install, fabricmanager
from provisioner.install.secret import key_script, key_unit
from provisioner.install.select import api_key_file, service_user
from provisioner.profile.cluster import cluster_of, node_named, node_spec
from provisioner.profile.install_section import ContainerEngine
from provisioner.profile.resolve import Spec
from provisioner.render.cluster import ray_command, rpc_server_command
from provisioner.render.engine_command import engine_command
from provisioner.render.resources import Directory, File, Rendered

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SYSCTL_VALUE = re.compile(r"^[A-Za-z0-9_.:/ -]{1,256}$")
BIN_DIR = "/opt/provision/bin"


def _finalize(value: Any) -> Any:
    if isinstance(value, str) and _CONTROL.search(value):
        raise RenderError(f"refusing to write a value with a newline or control character: "
                          f"{value[:40]!r}", hint="remove the control character from the profile")
    return value


def sh_quote(value: object) -> str:
    """One shell word, quoted for POSIX sh."""
    return shlex.quote(str(value))


def systemd_word(value: object) -> str:
    """One word of a unit file's Exec/Environment line: quoted, specifiers escaped."""
    text = str(value)
    if _CONTROL.search(text):
        raise RenderError(f"control character in unit file value {text[:40]!r}")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def env_value(value: object) -> str:
    """A value of an EnvironmentFile line, double-quoted (systemd.exec(5))."""
    text = str(value)
    if _CONTROL.search(text):
        raise RenderError(f"control character in environment value {text[:40]!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def sysctl_value(value: object) -> str:
    text = str(value)
    if not _SYSCTL_VALUE.match(text):
        raise RenderError(f"sysctl value {text[:40]!r} has characters sysctl.d cannot hold")
    return text


class _TreeLoader(FileSystemLoader):
    """Templates from one folder only: a template or an include that is a link to a file
    elsewhere (a 0600 key) would otherwise be rendered into a world-readable file."""

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if not any(Path(filename).resolve().is_relative_to(Path(folder).resolve())
                                            for folder in self.searchpath):
            raise RenderError(f"template {template} leads outside its folder ({Path(filename).resolve()})",
                              hint="copy the file into the profile's folder instead of linking it")
        return source, filename, uptodate


@functools.cache
def _environment(folder: str) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=_TreeLoader(folder),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters.update(sh=sh_quote, systemd=systemd_word, env=env_value, sysctl=sysctl_value)
    return env


@functools.cache
def _condition(text: str) -> Any:
    """A manifest `when:` compiled once per process (a fleet renders once per host)."""
    return _environment(str(data_dir("templates"))).compile_expression(text)


@functools.cache
def _dest(text: str) -> Any:
    return _environment(str(data_dir("templates"))).from_string(text)


@functools.cache
def manifest() -> list[dict[str, Any]]:
    text = (data_dir("templates") / "manifest.yaml").read_text(encoding="utf-8")
    entries = load_bundled_yaml(text)
    assert isinstance(entries, list)
    return entries


def model_path(spec: Spec) -> str:
    source = spec.profile.model.source
    if source.files:
        return source.files[0].path
    if source.hf is not None:
        return f"{source.hf.dest}/{source.hf.file}" if source.hf.file else source.hf.dest
    if source.directory is not None:
        return source.directory
    return source.ollama or ""


def model_path_notes(spec: Spec) -> tuple[str, ...]:
    """A preview (validate, render, fit) of a branch not locked yet: llama.cpp's --model is
    the folder until the lock names the first shard. Every other way to a folder is refused
    (profile/resolve.py), and plan and apply require the lock."""
    p = spec.profile
    hf = p.model.source.hf
    if p.runtime.engine != "llama.cpp" or hf is None or hf.file is not None or not p.builtin_files:
        return ()
    return (f"llama.cpp's --model is the folder {hf.dest} until `provision lock` pins the files and "
            "names the first shard; plan and apply require that lock",)


def sysctl_settings(spec: Spec) -> dict[str, str]:
    """The sysctl values the profile asks for, with the swap policy folded in."""
    os_ = spec.profile.os
    values: dict[str, str] = {}
    if os_.swap == "avoid":
        values["vm.swappiness"] = "1"  # swap only to avoid the OOM killer
    if os_.hugepages.count and os_.hugepages.size == "2MiB":
        values["vm.nr_hugepages"] = str(os_.hugepages.count)
    values.update({k: str(v) for k, v in os_.sysctl.items()})
    return dict(sorted(values.items()))


def context(spec: Spec, placement: Placement) -> dict[str, Any]:
    p = spec.profile
    service = p.service
    command = engine_command(spec, placement, model_path(spec))
    devices = [f"/dev/nvidia{i}" for i in range(spec.gpu_count)]
    return {
        "profile": p,
        "name": p.metadata.name,
        "service": service,
        "group": service.group or service.user,
        "gpus": spec.gpus,
        "gpu_count": spec.gpu_count,
        "gpu_devices": devices,
        "model": spec.model,
        "model_id": spec.model_id,
        "quant": spec.quant,
        "engine": spec.engine,
        "engine_version": p.runtime.version,
        "command": command,
        "placement": placement,
        "sysctl": sysctl_settings(spec),
        "bin_dir": BIN_DIR,
        "run_script": f"{BIN_DIR}/{service.name}-run.sh",
        "check_script": f"{BIN_DIR}/{service.name}-check-gpu.sh",
        "env_file": f"/etc/default/{service.name}",
        "secrets_env_file": f"/etc/provision/{service.name}/secrets.env",
        "min_driver": spec.min_driver,
        "driver_floor": spec.driver_floor,
        "sampling": spec.model.sampling.get(p.model.mode),
        "hugepages_kb": spec.profile.os.hugepages.size_bytes // 1024,
        "container": p.install.engine if isinstance(p.install.engine, ContainerEngine) else None,
        "model_dir": _model_dir(spec),
        "sysusers": _sysusers_lines(spec),
        "api_key_file": api_key_file(p),
        **_key_unit_context(spec),
        **_cluster_context(spec),
    }


def _key_unit_context(spec: Spec) -> dict[str, Any]:
    """secrets.api_key.generate: the first-boot oneshot that makes the key (install/secret.py)."""
    p = spec.profile
    if p.secrets.api_key is None or not p.secrets.api_key.generate:
        return {"api_key_unit": None}
    return {"api_key_unit": key_unit(p.service.name),
            "api_key_script": f"{BIN_DIR}/{p.service.name}-api-key.sh",
            "api_key_lines": key_script('"$key"', 'echo "could not read /dev/urandom" >&2; exit 1').splitlines()}


def _sysusers_lines(spec: Spec) -> list[str]:
    user = service_user(spec)
    return user.sysusers_lines() if user is not None else []


def _cluster_context(spec: Spec) -> dict[str, Any]:
    """role single | head | worker, and the node's own process (Ray, rpc-server)."""
    cluster = spec.profile.cluster
    name = spec.profile.service.name
    out: dict[str, Any] = {"cluster": cluster, "node": None, "role": "single", "node_command": None,
                           "ray_unit": f"{name}-ray.service", "ray_script": f"{BIN_DIR}/{name}-ray.sh"}
    if cluster is None:
        return out
    node = node_named(spec, spec.node or cluster.head.name)
    out.update(node=node, role=node.role)
    if cluster.backend == "ray":
        out["node_command"] = ray_command(spec, node, f"/var/lib/{name}/ray")
    elif node.role == "worker":
        out["node_command"] = rpc_server_command(spec, node)
    return out


def _model_dir(spec: Spec) -> str:
    """The folder holding the model on the host (a container mounts it read-only)."""
    source = spec.profile.model.source
    if source.files:
        return str(PurePosixPath(source.files[0].path).parent)
    if source.hf is not None:
        return source.hf.dest
    return source.directory or ""


def profile_facts(spec: Spec) -> dict[str, str]:
    """The facts a host would report, taken from the profile (render without a host)."""
    hardware = spec.profile.hardware
    return {"mem_total_kb": str(hardware.ram // 1024), "cpus": str(hardware.cpu.cores)}


def render(spec: Spec, placement: Placement, facts: dict[str, str] | None = None,
           node: str | None = None, installs: tuple[Install, ...] = ()) -> Rendered:
    """Everything a target needs for this profile: its files byte for byte, handlers,
    directories, readiness, and what to install (``installs``: the profile's items, as
    ``install.select.install_items`` resolved them).

    ``facts`` are the host's (from gathering), else the profile's hardware. On a
    cluster profile ``node`` names whose files to render (default: the head's)."""
    cluster = spec.profile.cluster
    if cluster is not None:
        node = node or cluster.head.name
        installs = node_installs(spec, node, installs)
        spec = node_spec(spec, node)
    ctx = context(spec, placement)
    ctx["facts"] = {**profile_facts(spec), **template_facts(facts or {})}
    # the same decision as the fabric manager install item's (install/fabricmanager.py): the
    # server waits for it only where it is installed
    ctx["fabricmanager"] = bool(spec.gpus) and fabricmanager.wanted(spec.profile.install.fabricmanager, facts or {})
    env = _environment(str(data_dir("templates")))
    files: list[File] = []
    for entry in manifest() if spec.profile.builtin_files else []:
        when = entry.get("when")
        if when and not _condition(when)(**ctx):
            continue
        files.append(_render_one(env, entry["template"], entry, ctx))
    files += _user_files(spec, ctx)
    directories = (Directory(BIN_DIR), Directory(f"/etc/provision/{spec.profile.service.name}"))
    _owned_once([f.path for f in files], [d.path for d in directories])
    handlers = _handlers(spec)
    runtime = spec.profile.runtime
    host = runtime.local_address
    host = f"[{host}]" if ":" in host else host
    readiness: tuple[str, int] | None = (f"http://{host}:{runtime.port}{spec.engine.health_path}",
                                         spec.profile.service.start_timeout_s)
    if cluster is not None and ctx["role"] == "worker":
        readiness = None  # a worker serves no HTTP: Ray and rpc-server have no health endpoint
    return Rendered(files=tuple(sorted(files, key=lambda f: f.path)), directories=directories,
                    handlers=handlers, warnings=placement.warnings + model_path_notes(spec), readiness=readiness,
                    installs=installs)


def _owned_once(paths: list[str], directories: list[str]) -> None:
    """Each path has one owner: no two files at one path, no file where a managed folder or
    provision's own state is, none inside another managed file."""
    seen: set[str] = set()
    for path in sorted(paths):
        if path in seen:
            raise RenderError(f"two files render to {path}",
                              hint="a files[] dest collides with a file provision manages")
        seen.add(path)
        if path == STATE_DIR or path.startswith(STATE_DIR + "/"):
            raise RenderError(f"{path} is inside provision's own state ({STATE_DIR})",
                              hint="choose a destination outside it: provision keeps its generations there")
        if path in directories:
            raise RenderError(f"{path} is a folder provision manages; a file cannot go there")
        parents = {str(parent) for parent in PurePosixPath(path).parents}
        inside = sorted(parents & seen)
        if inside:
            raise RenderError(f"{path} would be inside {inside[0]}, which is a file provision manages")


def node_installs(spec: Spec, node: str, installs: tuple[Install, ...]) -> tuple[Install, ...]:
    """A cluster node's installs: every node runs the engine; an RPC worker serves its GPUs
    to the head and never reads the model, so it skips that download."""
    if cluster_of(spec).backend == "rpc" and node_named(spec, node).role == "worker":
        return tuple(item for item in installs if item.name != "download:model")
    return installs


def _render_one(env: SandboxedEnvironment, template: str, entry: dict[str, Any],
                ctx: dict[str, Any]) -> File:
    try:
        dest = _dest(entry["dest"]).render(**ctx)
        content = env.get_template(template).render(**ctx)
    except RenderError:
        raise
    except _TEMPLATE_FAILURES as exc:
        raise RenderError(f"template {template}: {_failure(exc)}") from None
    return File(path=dest, content=content.encode("utf-8"), mode=int(str(entry["mode"]), 8),
                owner=str(entry.get("owner", "root")), group=str(entry.get("group", "root")),
                validate=entry.get("validate", "none"), notify=tuple(entry.get("notify", ())),
                template=template)


def _user_files(spec: Spec, ctx: dict[str, Any]) -> list[File]:
    """The profile's own templates: the same sandbox and context, plus the facts
    and the profile's ``vars`` as top-level names (as Ansible users expect)."""
    ctx = {**ctx, **ctx["facts"], **spec.profile.vars}
    out: list[File] = []
    base = spec.loaded.base_dir
    for extra in spec.profile.files:
        env = _environment(str(base))
        path = Path(extra.template)
        try:
            content = env.get_template(path.as_posix()).render(**ctx)
        except RenderError:
            raise
        except _TEMPLATE_FAILURES as exc:
            raise RenderError(f"template {extra.template}: {_failure(exc)}",
                              file=str(base / extra.template)) from None
        out.append(File(path=extra.dest, content=content.encode("utf-8"),
                        mode=int(extra.mode, 8), owner=extra.owner, group=extra.group,
                        notify=tuple(extra.notify), template=extra.template))
    return out


# The sandbox stops a huge range() with OverflowError and a macro that calls itself ends in
# RecursionError: neither is a TemplateError, and each is the template's fault.
_TEMPLATE_FAILURES = (TemplateError, OverflowError, RecursionError, MemoryError)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "a macro or include calls itself without end"
    if isinstance(exc, OverflowError | MemoryError):
        return f"it asks for too much ({str(exc).split(chr(10))[0] or type(exc).__name__})"
    return str(exc)


def _enable_server(spec: Spec) -> str:
    gpu = "nvidia-gpu-settings.service " if spec.gpus else ""
    name = spec.profile.service.name
    if isinstance(spec.profile.install.engine, ContainerEngine):
        # a Quadlet unit is generated, and cannot be enabled (podman-systemd.unit(5), "Enabling
        # unit files"): its [Install] section is applied by the generator; start it now
        return (f"systemctl enable --now {gpu.strip()} && " if gpu else "") + f"systemctl start {name}.service"
    return f"systemctl enable --now {gpu}{name}.service"


def _handlers(spec: Spec) -> dict[str, str]:
    """Handler name -> command, in the order they run."""
    name = spec.profile.service.name
    builtin = {
        # apply's install item user:NAME made the user already; an export has only this file
        "sysusers": f"systemd-sysusers /etc/sysusers.d/provision-{name}.conf",
        "daemon-reload": "systemctl daemon-reload",
        "sysctl": "sysctl --system",
        "tmpfiles": "systemd-tmpfiles --create",
        "tuned": "systemctl restart tuned",
        "gpu-settings": "systemctl restart nvidia-gpu-settings.service",
        "enable-server": _enable_server(spec),
        "enable-metrics": f"systemctl enable --now {name}-metrics.timer",
        "restart-server": f"systemctl try-restart {name}.service",
    }
    custom = {key: h.command for key, h in spec.profile.handlers.items()}
    return {**builtin, **custom}
