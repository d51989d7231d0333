"""Spec -> the install items of a profile's ``install:`` section (pure but for HF).

Also the cross-field rules of that section (which engine a method can install,
what a model download needs), reported at the profile's line, and the path of
the installed engine binary the run script uses.

Hugging Face repos are resolved on the controller (a list of files with sizes
and sha256) by ``hf.resolve_hf`` (cached per pinned revision); ``network=False``
(validate, render) leaves that item out, so they never touch the network.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioner.datadir import cache_dir
from provisioner.errors import ProfileError
from provisioner.install import Install
from provisioner.install.build import Build, cuda_options
from provisioner.install.fabricmanager import FabricManager, pinned_driver
from provisioner.install.kernel import KernelModules
from provisioner.install.ollama_model import OllamaModel, models_dir
from provisioner.install.ollama_registry import PinnedOllama, registry_base
from provisioner.install.packages import Package, needs_reboot
from provisioner.install.secret import GeneratedKey, generated_key_path, key_unit
from provisioner.install.token import (
    WithToken,
    controller_token,
    header_path,
    token_from_file,
    token_from_secrets_env,
)
from provisioner.install.user import GPU_GROUPS, ServiceUser
from provisioner.install.venv import Venv
from provisioner.lock import Lock
from provisioner.lock.engine import EngineLock
from provisioner.lock.wheels import PinnedVenv
from provisioner.profile.install_section import ArchiveEngine, ContainerEngine, SourceEngine, VenvEngine
from provisioner.profile.models import Profile
from provisioner.profile.quant_paths import hf_include
from provisioner.profile.resolve import Spec

VENV_ROOT = "/opt/provision/venvs"
BUILD_ROOT = "/opt/provision/builds"
# which runtime.engine each method can install
METHOD_ENGINES = {"venv": ("vllm",), "source": ("llama.cpp",), "archive": ("ollama",),
                  "container": ("llama.cpp", "vllm", "ollama")}

ResolveHf = Callable[..., Any]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# The engine binary inside a container image, where checked: llama.cpp's server images end in
# ENTRYPOINT [ "/app/llama-server" ] (.devops/cuda.Dockerfile, .devops/cpu.Dockerfile in
# https://github.com/ggml-org/llama.cpp). Other engines' images: give install.engine.binary.
CONTAINER_BINARIES = {"llama.cpp": "/app/llama-server"}


def engine_path(profile: Profile) -> str | None:
    """Where the installed engine lives on the host (the stable link), or None."""
    engine = profile.install.engine
    if isinstance(engine, VenvEngine):
        return engine.path or f"{VENV_ROOT}/{profile.runtime.engine}"
    if isinstance(engine, SourceEngine):
        return engine.path or f"{BUILD_ROOT}/{profile.runtime.engine}"
    if isinstance(engine, ArchiveEngine):
        return engine.dest
    return None


def installed_binary(profile: Profile, binary: str) -> str:
    """The run script's engine binary: inside the installed engine, else found on PATH."""
    engine = profile.install.engine
    if isinstance(engine, ContainerEngine):
        return engine.binary or CONTAINER_BINARIES.get(profile.runtime.engine, binary)
    base = engine_path(profile)
    return f"{base}/bin/{binary}" if base else binary


def service_user(spec: Spec) -> ServiceUser | None:
    """The user the unit runs as (None: a container, whose unit has no User=, or no unit at all)."""
    p = spec.profile
    if not p.builtin_files or isinstance(p.install.engine, ContainerEngine):
        return None
    service = p.service
    return ServiceUser(service.user, service.group or service.user, f"/var/lib/{service.name}",
                       GPU_GROUPS if spec.gpu_count else (), f"LLM server {service.name}")


def api_key_file(profile: Profile) -> str | None:
    """The file the unit loads the API key from (a systemd credential), if it comes from one."""
    ref = profile.secrets.api_key
    if ref is None:
        return None
    return generated_key_path(profile.service.name) if ref.generate else ref.from_file


def check(spec: Spec) -> None:
    """The install section's cross-field rules, each at its line."""
    p = spec.profile
    engine = p.install.engine
    problems = []
    if engine is not None and p.runtime.engine not in METHOD_ENGINES[engine.method]:
        fitting = [m for m, engines in METHOD_ENGINES.items() if p.runtime.engine in engines]
        problems.append(spec.loaded.problem(
            ("install", "engine", "method"),
            f"install.engine.method {engine.method} cannot install {p.runtime.engine}",
            f"for {p.runtime.engine} use method: {' or '.join(fitting)}"))
    if isinstance(engine, ContainerEngine):
        if engine.binary is None and p.runtime.engine not in CONTAINER_BINARIES:
            problems.append(spec.loaded.problem(
                ("install", "engine"), f"where is {p.runtime.engine}'s binary inside {engine.image}?",
                "set install.engine.binary to its absolute path in the image (the run script execs it)"))
        if api_key_file(p) is not None:
            problems.append(spec.loaded.problem(
                ("secrets", "api_key"),
                "a container cannot read secrets.api_key.from_file or .generate (a systemd credential)",
                "use secrets.api_key.from_env: the key goes into the container through its environment file"))
    if engine is not None and p.cluster is not None:
        # Ray and rpc-server are run from PATH by the node scripts, and an RPC build needs
        # GGML_RPC and its server target: until both follow install.engine, refuse the mix
        problems.append(spec.loaded.problem(
            ("install", "engine"),
            f"install.engine on a cluster profile is not supported yet: the {p.cluster.backend} node "
            "scripts would not run what it installs",
            "install the engine on each node by other means (Ray/vLLM in one environment on PATH, "
            "or llama.cpp built with -DGGML_RPC=ON) and drop install.engine; install.model still works"))
    source = p.model.source
    if p.install.model:
        if source.files is not None:
            for index, item in enumerate(source.files):
                if item.url is None:
                    problems.append(spec.loaded.problem(
                        ("model", "source", "files", index),
                        f"install.model downloads model.source.files, but {item.path} has no url",
                        "add url: (https or a local mirror) beside its sha256, or set install.model: false"))
        elif source.hf is None and source.ollama is None:
            problems.append(spec.loaded.problem(
                ("install", "model"),
                f"install.model downloads hf, files or ollama sources; this model's source is {source.kind}",
                "a vLLM directory is copied by other means: set install.model: false"))
    problems += _fabricmanager_problems(spec)
    if problems:
        raise ProfileError(problems)


def _fabricmanager_problems(spec: Spec) -> list[Any]:
    p = spec.profile
    problems = []
    if p.install.fabricmanager is True and not spec.gpus:
        problems.append(spec.loaded.problem(
            ("install", "fabricmanager"), "install.fabricmanager: true on a profile without GPUs",
            "the fabric manager sets up the NVSwitches between GPUs: drop it, or add hardware.gpus"))
    drivers = pinned_driver([(pin.name, pin.version) for pin in p.install.packages])
    if len(drivers) > 1 and p.install.fabricmanager is not False:
        problems.append(spec.loaded.problem(
            ("install", "packages"), f"install.packages pins driver packages of {len(drivers)} versions "
            f"({', '.join(drivers)}): the fabric manager must match one exactly",
            "pin every driver package at the same version"))
    return problems


def install_items(spec: Spec, *, resolve_hf: ResolveHf | None = None,
                  hf_cache: Any = None, hf_endpoint: str | None = None,
                  hf_token: str | None = None, network: bool = True, lock: Lock | None = None) -> tuple[Install, ...]:
    """Every install item of the profile, in the order apply runs them:
    packages (a driver before what uses it), the service user, the engine, the model."""
    check(spec)
    p = spec.profile
    items: list[Install] = [Package(pin.name, pin.version, pin.hold) for pin in p.install.packages]
    if any(needs_reboot(pin.name) for pin in p.install.packages):
        items.append(KernelModules())  # DKMS and Secure Boot notes for a driver change
    if spec.gpus and p.install.fabricmanager is not False:
        # after the packages (apply merges them into one apt-get that runs first): a driver they
        # install is the one the fabric manager must match; plan decides auto with the host's facts
        drivers = pinned_driver([(pin.name, pin.version) for pin in p.install.packages])
        nvlink = spec.gpu_count > 1 and any(g.spec.nvlink for g in spec.gpus)
        items.append(FabricManager(p.install.fabricmanager, drivers[0] if drivers else "", nvlink=nvlink))
    user = service_user(spec)
    if user is not None:
        items.append(user)
    if p.secrets.api_key is not None and p.secrets.api_key.generate:
        items.append(GeneratedKey(generated_key_path(p.service.name), key_unit(p.service.name)))
    engine_item = _engine_item(spec, lock.engine if lock else None)
    if engine_item is not None:
        items.append(engine_item)
    model_pin = lock.model if lock else None
    if p.model.source.ollama is not None:
        # only from a fresh lock (lock/ollama.py): plan refused a missing one, render leaves it out
        if p.install.model and isinstance(model_pin, PinnedOllama) and model_pin.for_tag(p.model.source.ollama):
            items.append(_ollama_model(spec, model_pin))
        return tuple(items)
    hf = p.model.source.hf
    # a pin made for an Ollama tag says nothing about this repo
    files_pin = None if isinstance(model_pin, PinnedOllama) else model_pin
    if hf is not None and files_pin is not None and files_pin.for_source(hf, hf_include(p)):
        # the lock pins the files (lock/__init__.py): plan and apply need no hub listing
        hf_module = importlib.import_module("provisioner.install.hf")
        listed = [dataclasses.asdict(f) for f in files_pin.files]
        pinned = hf_module.remote_files(hf.repo, files_pin.commit, listed, hf.dest, endpoint=hf_endpoint)
        resolve_hf = (lambda *_args, **_kwargs: pinned)  # noqa: E731 - the lock answers for the hub
    elif hf is not None and not _COMMIT.match(hf.revision):
        network = False  # a branch without its lock: plan refused it already (lock.apply_lock); render skips it
    if p.install.model and (network or hf is None or resolve_hf is not None):
        items.extend(_model_download(spec, resolve_hf, hf_cache, hf_endpoint, hf_token))
    return tuple(items)


def _engine_item(spec: Spec, pinned: EngineLock | None) -> Install | None:
    """install.engine as an install item; ``pinned``: the engine part of PROFILE.lock."""
    p = spec.profile
    engine = p.install.engine
    label = p.runtime.engine
    if isinstance(engine, (SourceEngine, ArchiveEngine)) and not engine.pinned:
        return None  # named loosely and not pinned by a lock: plan refused it (lock/engine.py); render skips it
    if isinstance(engine, VenvEngine):
        # the closure a fresh lock pins (lock/wheels.py; plan refused a missing or stale one)
        locked = pinned if isinstance(pinned, PinnedVenv) and pinned.for_engine(engine) else None
        return Venv(engine_path(p) or "", tuple(engine.requirements), engine.python, engine.index_url,
                    tuple(engine.extra_index_urls), label=label,
                    wheels=locked.wheel_rows if locked else (), target=locked.target if locked else None)
    if isinstance(engine, SourceEngine):
        options = list(engine.cmake_options)
        if not any(o.startswith(("-DGGML_CUDA=", "-DCMAKE_CUDA_ARCHITECTURES")) for o in options):
            capabilities = ([a[:-1] + "." + a[-1] for a in engine.cuda_architectures]
                            if engine.cuda_architectures else [g.spec.compute_capability for g in spec.gpus])
            options += cuda_options(capabilities)
        return Build(engine_path(p) or "", engine.url, engine.sha256, engine.git, engine.commit,
                     engine.subdir, tuple(options), tuple(engine.targets), engine.jobs, label=label,
                     version=f"{label} {p.runtime.version}")
    if isinstance(engine, ArchiveEngine):
        download = importlib.import_module("provisioner.install.download")
        archive: Install = download.Archive(name=f"archive:{label}", url=engine.url, sha256=engine.sha256,
                                            size=engine.size, dest=engine.dest,
                                            strip_components=engine.strip_components)
        return archive
    return None


def _ollama_model(spec: Spec, pinned: PinnedOllama) -> OllamaModel:
    user = service_user(spec)
    return OllamaModel(pinned, models_dir(spec), registry_base(pinned.name),
                       (user.user, user.group) if user is not None else None)


def hf_cache_dir() -> Path:
    """Where the controller keeps resolved Hugging Face listings (shared with the llama-server build)."""
    return cache_dir()


def _model_download(spec: Spec, resolve_hf: ResolveHf | None, hf_cache: Any, endpoint: str | None,
                    token: str | None) -> list[Install]:
    download = importlib.import_module("provisioner.install.download")
    source = spec.profile.model.source
    ref = spec.profile.secrets.hf_token
    if token is None:
        # the listing of a gated repo needs the token on the controller; it is never written anywhere
        token = controller_token(ref)
    if source.files is not None:
        files = tuple(download.RemoteFile(url=f.url, dest=f.path, size=f.bytes, sha256=f.sha256)
                      for f in source.files)
    else:
        assert source.hf is not None
        if resolve_hf is None:
            resolve_hf = importlib.import_module("provisioner.install.hf").resolve_hf
        files = tuple(resolve_hf(source.hf.repo, source.hf.revision, hf_include(spec.profile), source.hf.dest,
                                 endpoint=endpoint, token=token, cache_dir=hf_cache or hf_cache_dir()))
    if ref is None:
        return [download.Download(name="download:model", files=files)]
    # the host's own token for the download, from where secrets.hf_token says (install/token.py)
    service = spec.profile.service.name
    header = header_path(service)
    if ref.from_file:
        token_sh, where = token_from_file(ref.from_file), ref.from_file
    else:
        env_file = f"/etc/provision/{service}/secrets.env"
        token_sh, where = token_from_secrets_env(env_file, str(ref.from_env)), f"{ref.from_env} of {env_file}"
    return [WithToken(download.Download(name="download:model", files=files, header_file=header),
                      header, token_sh, where)]
