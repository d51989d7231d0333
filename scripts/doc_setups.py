"""The hidden set-ups of docs pages, for scripts/record-doc-output.

A page names one with an HTML comment, `<!-- doc-setup: NAME -->` (not shown when the
page is rendered); the recorder enters each set-up the page names, in page order, in
the page's scratch folder before its first block runs, and leaves them (sshds and Ray
stopped, the /tmp trees removed) after its last, whatever happened. A set-up yields the
environment variables the page's commands run with.

The SSH pages run inside a network namespace of their own (only a loopback interface):
their sshds listen on 127.0.0.41-43 port 2297 (tests/support/sshd.py, the tests' own
farm) without meeting a test run's sshds on the machine's loopback, and nothing the
commands do can leave 127.0.0.0/8. The inventories give each host a `root:` tree under
a fixed /tmp path so the transcript shows the same path on every recording; it must
not exist before (another recording running, or one that was killed: remove it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SSH_PORT = 2297
CLONE_NEWNET = 0x40000000
# the pages show their trees under /tmp, so the set-ups put them there, not in $TMPDIR
SHOWN_TMP = Path("/tmp")  # noqa: S108 - see above

Env = dict[str, str]
Setup = Callable[[Path], contextlib.AbstractContextManager[Env]]


class SetupError(Exception):
    """A set-up could not be made: one line for the recorder to print."""


@contextlib.contextmanager
def _network_namespace() -> Iterator[None]:
    """This process (and so every process it starts from now) in a new network
    namespace with loopback up; back in the one it came from on the way out."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise SetupError(f"cannot make a network namespace: {os.strerror(ctypes.get_errno())} (needs root)")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the recorder's network namespace")
    finally:
        os.close(own)


@contextlib.contextmanager
def _fixed_tree(path: Path) -> Iterator[Path]:
    if path.exists():
        raise SetupError(f"{path} exists (another recording, or a killed one left it): remove it and re-run")
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _ssh_farm(scratch: Path, count: int) -> Iterator[Env]:
    """`count` sshds (127.0.0.41...) in a private network namespace; the client key and
    known_hosts in scratch/ssh; a private runtime folder for the openssh transport's
    masters (stopped on the way out) and an empty HOME, so ~/.ssh/known_hosts knows nothing."""
    os.environ["PROVISION_TEST_SSH_PORT"] = str(SSH_PORT)  # read when tests.support.sshd is imported
    sys.path.insert(0, str(ROOT))
    from tests.support import sshd  # noqa: PLC0415 - after the port is set

    if sshd.available() is not None:
        raise SetupError(str(sshd.available()))
    home = scratch / "home"
    home.mkdir()
    with _network_namespace(), tempfile.TemporaryDirectory(prefix="pv-doc-") as runtime:
        farm = sshd.start_farm(scratch / "ssh", count)
        try:
            yield {"HOME": str(home), "XDG_RUNTIME_DIR": runtime}
        finally:
            sshd.stop_masters(Path(runtime))
            farm.stop()


def _host_line(name: str, index: int, root: str, extra: str = "") -> str:
    return (f"  {name}: {{address: 127.0.0.{40 + index}, port: {SSH_PORT}, user: root, key: ssh/client_key, "
            f"root: {root}{extra}}}\n")


@contextlib.contextmanager
def fleet_demo(scratch: Path) -> Iterator[Env]:
    """docs/fleet.md: three hosts, one root tree each under /tmp/fleet."""
    with _fixed_tree(SHOWN_TMP / "fleet") as trees, _ssh_farm(scratch, 3) as env:
        (scratch / "fleet-demo.yaml").write_text(
            "hosts:\n" + "".join(_host_line(f"gpu{i}", i, f"{trees}/root-{i}") for i in (1, 2, 3)))
        yield env


@contextlib.contextmanager
def ansible_fleet(scratch: Path) -> Iterator[Env]:
    """docs/export.md: two hosts under /tmp/ans, the second serving on another port;
    Ansible's home and temp files in the scratch folder, no colours, no retry files."""
    with _fixed_tree(SHOWN_TMP / "ans") as trees, _ssh_farm(scratch, 2) as env:
        profile = ", profile: examples/quickstart.yaml"
        (scratch / "fleet.yaml").write_text(
            "hosts:\n" + _host_line("gpu1", 1, f"{trees}/root-1", profile)
            + _host_line("gpu2", 2, f"{trees}/root-2", profile + ", overrides: {runtime: {port: 8081}}"))
        home = scratch / "ansible-home"
        yield {**env, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_HOST_KEY_CHECKING": "1"}


RAY_EXAMPLE = "examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml"


@contextlib.contextmanager
def cluster_loopback(scratch: Path) -> Iterator[Env]:
    """docs/cluster.md: the Ray example with its nodes at the two hosts' addresses, an
    inventory naming them, and a real Ray head and worker (on CPU) at those addresses,
    started with the words of the scripts provision renders for each node, so that
    `verify --node head` on this machine sees the cluster."""
    profile = scratch / "two-node-loopback.yaml"
    profile.write_text((scratch / RAY_EXAMPLE).read_text().replace("10.0.0.1", "127.0.0.41")
                       .replace("10.0.0.2", "127.0.0.42"))
    with _fixed_tree(SHOWN_TMP / "clus") as trees, _ssh_farm(scratch, 2) as env:
        extra = f", profile: {profile.name}"
        (scratch / "inventory.yaml").write_text(
            "hosts:\n" + _host_line("gpu-a", 1, f"{trees}/root-gpu-a", extra)
            + _host_line("gpu-b", 2, f"{trees}/root-gpu-b", extra))
        with _ray_cluster(profile, scratch):
            yield env


def _ray_words(profile: Path) -> tuple[list[str], list[str]]:
    from provisioner.render.files import render  # noqa: PLC0415 - only this set-up needs the package
    from provisioner.render.pipeline import build  # noqa: PLC0415 - idem

    def words(text: str) -> list[str]:  # what each `set -- "$@" ...` line of a run script passes
        return [w for line in text.splitlines() if line.startswith('set -- "$@" ')
                for w in line.split("  # ")[0].split()[3:]]

    built = build(profile)
    head = render(built.spec, built.placement, node="head").file("/opt/provision/bin/llm-server-ray.sh")
    worker = render(built.spec, built.placement, node="w1").file("/opt/provision/bin/llm-server-run.sh")
    return words(head.content.decode()), words(worker.content.decode())


@contextlib.contextmanager
def _ray_cluster(profile: Path, scratch: Path) -> Iterator[None]:
    ray = ROOT / ".venv" / "bin" / "ray"
    head_words, worker_words = _ray_words(profile)
    address = next(w for w in worker_words if w.startswith("--address=")).removeprefix("--address=")
    # Ray's UNIX sockets live under its temp dir and a socket path holds 107 bytes: a short
    # one here instead of the rendered /var/lib/<service>/ray
    session = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head_words = [f"--temp-dir={session}" if w.startswith("--temp-dir=") else w for w in head_words]
    env = {**os.environ, "RAY_ADDRESS": ""}
    groups: list[subprocess.Popen[bytes]] = []
    try:
        for words, nodes in ((head_words, 1), (worker_words, 2)):
            log = (scratch / f"ray-{nodes}.log").open("wb")
            # --num-cpus=1: the two nodes share this machine's cores
            groups.append(subprocess.Popen([str(ray), "start", *words, "--num-cpus=1"], stdout=log, stderr=log,
                                           env=env, start_new_session=True))
            _wait_for_nodes(ray, address, nodes, scratch / f"ray-{nodes}.log")
        yield
    finally:
        for group in groups:  # each `ray start --block` leads its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group.pid, signal.SIGTERM)
        for group in groups:
            try:
                group.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(group.pid, signal.SIGKILL)
                group.wait()
            with contextlib.suppress(ProcessLookupError):  # what Ray left in the group
                os.killpg(group.pid, signal.SIGKILL)
        shutil.rmtree(session, ignore_errors=True)


def _wait_for_nodes(ray: Path, address: str, count: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = subprocess.run([str(ray), "status", f"--address={address}"], capture_output=True, text=True,
                                check=False, timeout=30, env={**os.environ, "RAY_ADDRESS": ""})
        if status.stdout.count(" 1 node_") >= count:
            return
        time.sleep(1)
    raise SetupError(f"Ray did not reach {count} node(s) at {address}: {log.read_text(errors='replace')[-1500:]}")


def _provision(scratch: Path, *args: str) -> None:
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "provision"), *args], cwd=scratch, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"provision {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")


@contextlib.contextmanager
def quickstart_in_demo(scratch: Path) -> Iterator[Env]:
    """docs/verify.md: "The quickstart profile applied into `demo`"."""
    _provision(scratch, "apply", "examples/quickstart.yaml", "--root", "demo", "--yes")
    yield {}


@contextlib.contextmanager
def changed_profile_in_demo_json(scratch: Path) -> Iterator[Env]:
    """docs/commands.md's JSON envelope: the quickstart applied into `demo-json`, and
    the changed copy the page makes further down (`sed` of vm.swappiness 10 to 5)."""
    _provision(scratch, "apply", "examples/quickstart.yaml", "--root", "demo-json", "--yes")
    text = (scratch / "examples/quickstart.yaml").read_text()
    (scratch / "my-changed-profile.yaml").write_text(text.replace("vm.swappiness: 10", "vm.swappiness: 5"))
    yield {}


@contextlib.contextmanager
def fit_root(scratch: Path) -> Iterator[Env]:
    """docs/commands.md writes a sparse GGUF stand-in to /tmp/fit-root (a path fit's
    output shows); it must start absent."""
    with _fixed_tree(SHOWN_TMP / "fit-root") as tree:
        tree.rmdir()  # the page's own mkdir(parents=True) makes it
        yield {}


PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
CONTAINER_PROFILE = f"""extends: rtx-4090-qwen3-30b-a3b-llamacpp
install:
  engine: {{method: container, image: "ghcr.io/ggml-org/llama.cpp@{PLACEHOLDER_DIGEST}"}}
"""


@contextlib.contextmanager
def container_profile(scratch: Path) -> Iterator[Env]:
    """docs/install.md: the container profile the page cats (the zeros are the page's
    stated placeholder digest: render only, nothing is pulled)."""
    (scratch / "container.yaml").write_text(CONTAINER_PROFILE)
    yield {}


CLONE_NEWNS = 0x00020000
# root: pip's cache under ~/.cache
SANDBOXED = ("etc", "usr", "var", "opt", "root")
HELD_PACKAGE = "hello"
# the Python package the venv walk-through pins, at two of its releases on PyPI (pypi.org/project/six/#history)
SIX_PINS = ("1.16.0", "1.17.0")


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SetupError(f"mount {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def _mount_namespace() -> Iterator[None]:
    """This process (and every process it starts from now) in a private mount
    namespace, its mounts propagating nowhere; back in its own on the way out, where
    the private mounts no longer exist."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    cwd = os.open(".", os.O_RDONLY)  # setns into a mount namespace moves the cwd to its root
    try:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise SetupError(f"cannot make a mount namespace: {os.strerror(ctypes.get_errno())} (needs root)")
        try:
            # unshare copies the mounts with their propagation: shared ones would carry the
            # overlays below back to the machine's own namespace
            _mount("--make-rprivate", "/")
            yield
        finally:
            if libc.setns(own, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the recorder's mount namespace")
            os.fchdir(cwd)
    finally:
        os.close(cwd)
        os.close(own)


def _candidate_version(package: str) -> str:
    """The version apt would install now: the page shows what this machine's mirror has."""
    policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False)
    for line in policy.stdout.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version != "(none)":
                return version
    raise SetupError(f"apt has no candidate for {package} (`apt-cache policy {package}`): run apt-get update")


@contextlib.contextmanager
def apt_sandbox(scratch: Path) -> Iterator[Env]:
    """docs/install.md's live applies: the page's commands run in a private mount
    namespace whose /etc, /usr, /var, /opt and /root are overlays over the machine's, their
    upper dirs on a tmpfs in the scratch folder, and whose /tmp/rd (the venvs' path)
    is that tmpfs too; apt, dpkg, useradd and provision's generations change only
    there, and all of it is gone when the recording ends. The machine keeps an empty
    /tmp/rd for the recording's length (the mount point). Also writes the profiles
    the page cats, the held package at the version apt offers here."""
    if os.geteuid() != 0:
        raise SetupError("the apt sandbox mounts overlays: run the recorder as root")
    version = _candidate_version(HELD_PACKAGE)
    library = "extends: rtx-4090-qwen3-30b-a3b-llamacpp\nbuiltin_files: false\n"
    # the library profile also builds llama.cpp and downloads the model: only the package here
    only_packages = "install:\n  model: false\n  engine: null\n"
    (scratch / "hello.yaml").write_text(
        library + only_packages + f'  packages: [{{name: {HELD_PACKAGE}, version: "{version}"}}]\n')
    (scratch / "dropped.yaml").write_text(library + only_packages)
    # the venv is built here, so its lock resolves wheels for this machine's python3 and glibc
    python, glibc, machine = subprocess.run(
        ["/usr/bin/python3", "-c", "import platform, sys; print('%d.%d' % sys.version_info[:2], "
         "platform.libc_ver()[1], platform.machine())"], capture_output=True, text=True, check=True).stdout.split()
    for pin in SIX_PINS:
        (scratch / f"six-{pin}.yaml").write_text(
            "extends: rtx-pro-6000-gpt-oss-120b-vllm\nbuiltin_files: false\ninstall:\n  model: false\n"
            f'  engine: {{method: venv, path: /tmp/rd/venvs/vllm, requirements: ["six=={pin}"],\n'
            f'           resolve_for: {{python: "{python}", glibc: "{glibc}", machine: {machine}}}}}\n')
    layers = scratch / "sandbox"
    layers.mkdir()
    with _fixed_tree(SHOWN_TMP / "rd") as venvs, _mount_namespace():
        _mount("-t", "tmpfs", "-o", "mode=0700", "provision-doc-sandbox", str(layers))
        for top in SANDBOXED:
            (layers / f"{top}.upper").mkdir()
            (layers / f"{top}.work").mkdir()
            _mount("-t", "overlay", f"sandbox-{top}", "-o",
                   f"lowerdir=/{top},upperdir={layers}/{top}.upper,workdir={layers}/{top}.work", f"/{top}")
        (layers / "rd").mkdir()
        _mount("--bind", str(layers / "rd"), str(venvs))
        yield {}


def _tests_importable() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _built_llama_server() -> tuple[Path, Path]:
    """scripts/build-llama-server's cached CPU build (built first when absent): the
    pinned sdist it built from and the sdist's Qwen2 vocabulary, for the tiny model."""
    done = subprocess.run([str(ROOT / "scripts" / "build-llama-server")], capture_output=True, text=True,
                          check=False, timeout=3600)
    if done.returncode != 0:
        raise SetupError(f"scripts/build-llama-server: exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    binary, vocab = (Path(line) for line in done.stdout.strip().splitlines()[-2:])
    return binary.parents[6] / "sdist", vocab


TOUR_PORT = 18080  # the port the README's verify names: fixed, so the page shows one
TOUR_SDIST = SHOWN_TMP / "provision-tour-sdist"  # a fixed path: the build's input digest holds its URL


def _port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise SetupError(f"127.0.0.1:{port} is taken ({error.strerror}): the page's server needs it") from None


@contextlib.contextmanager
def bare_box(scratch: Path) -> Iterator[Env]:
    """The README's bare box, as tests/test_bare_box.py makes it: box.yaml (the CPU profile
    with the tiny model from a Hub stand-in, a generated API key, llama-server built from
    the pinned sdist, served on 127.0.0.1:18080), the stand-in serving the tiny model's
    quants under its fixed commit on loopback, and a cache of the page's own."""
    _tests_importable()
    from tests.support import bare_box as box  # noqa: PLC0415 - tests/ is importable only now
    from tests.support.http_standin import HttpStandin  # noqa: PLC0415 - idem
    from tests.support.hub_standin import serve_repo  # noqa: PLC0415 - idem

    _port_free(TOUR_PORT)
    sdists, vocab = _built_llama_server()
    with _fixed_tree(TOUR_SDIST) as sdist_dir, HttpStandin() as hub:
        sdist = sdist_dir / box.SDIST_NAME
        shutil.copyfile(sdists / box.SDIST_NAME, sdist)
        (scratch / "quants").mkdir()
        serve_repo(hub, box.hub_repo(box.quants(vocab, scratch / "quants")), branch="main")
        box.write_profile(scratch, sdist, TOUR_PORT, "F32")
        yield {"HF_ENDPOINT": hub.url(), "PROVISION_CACHE": str(scratch / "cache")}


@contextlib.contextmanager
def bare_box_server(scratch: Path) -> Iterator[Env]:
    """A doc-run after the bare box's apply into `image`: the machine's first boot (the
    oneshot that makes the API key), then llama-server started from the tree as its unit
    would (tests/support/unit_server.py), on 127.0.0.1:18080 until the page ends."""
    _tests_importable()
    from tests.install.test_generated_key import first_boot  # noqa: PLC0415 - tests/ is importable only now
    from tests.support.unit_server import start_as_the_unit, stop  # noqa: PLC0415 - idem

    tree = scratch / "image"
    if not (tree / "etc/systemd/system/llm-server.service").is_file():
        raise SetupError(f"bare-box-server: no server unit in {tree.name}/: the page's apply into it comes first")
    booted = first_boot(tree)
    if booted.returncode != 0:
        raise SetupError(f"the first boot's API key oneshot: exit {booted.returncode}: {booted.stderr.strip()}")
    try:
        process, _ = start_as_the_unit(tree, "llm-server", scratch, TOUR_PORT)
    except AssertionError as error:
        raise SetupError(f"the server of {tree} did not start: {error}") from None
    try:
        yield {}
    finally:
        stop(process)


OLLAMA_PROFILE = """extends: rtx-4090-qwen3-30b-ollama
metadata: {name: t}
model:
  source: {ollama: "tiny-qwen2:f32"}
install: {model: true}
"""
NOBUILD_PROFILE = """extends: box.yaml
metadata: {name: nobuild}
install: {engine: null}
"""


@contextlib.contextmanager
def last_mile(scratch: Path) -> Iterator[Env]:
    """docs/last-mile.md: the Hub stand-in serving tests/lock/test_lock.py's repo (three
    small shards per quant of unsloth/Qwen3-235B-A22B-GGUF under its fixed commit), the
    Ollama registry stand-in serving the tiny model as library/tiny-qwen2:f32 (as
    tests/lock/test_ollama_lock.py does), both on loopback; the page's two other profiles
    (t.yaml, nobuild.yaml: box.yaml, which the page's init writes, without the engine build)
    and a cache of the page's own."""
    _tests_importable()
    from tests.lock.test_lock import COMMIT, FILES, REPO  # noqa: PLC0415 - tests/ is importable only now
    from tests.support.http_standin import HttpStandin  # noqa: PLC0415 - idem
    from tests.support.hub_standin import HubRepo, serve_repo  # noqa: PLC0415 - idem
    from tests.support.ollama_standin import OllamaTag, serve_tag  # noqa: PLC0415 - idem
    from tests.support.tinymodel import write_tiny_model  # noqa: PLC0415 - idem

    _, vocab = _built_llama_server()
    tiny = write_tiny_model(vocab, scratch / "tiny-qwen2.gguf").read_bytes()
    (scratch / "tiny-qwen2.gguf").unlink()
    (scratch / "t.yaml").write_text(OLLAMA_PROFILE)
    (scratch / "nobuild.yaml").write_text(NOBUILD_PROFILE)
    with HttpStandin() as hub, HttpStandin() as registry:
        serve_repo(hub, HubRepo(REPO, COMMIT, FILES, lfs=frozenset(p for p in FILES if p.endswith(".gguf"))),
                   branch="main")
        serve_tag(registry, OllamaTag("library/tiny-qwen2", "f32", tiny))
        yield {"HF_ENDPOINT": hub.url(), "PROVISION_OLLAMA_REGISTRY": registry.url(),
               "PROVISION_CACHE": str(scratch / "cache")}


SETUPS: dict[str, Setup] = {
    "fleet-demo": fleet_demo,
    "ansible-fleet": ansible_fleet,
    "cluster-loopback": cluster_loopback,
    "quickstart-in-demo": quickstart_in_demo,
    "changed-profile-in-demo-json": changed_profile_in_demo_json,
    "fit-root": fit_root,
    "container-profile": container_profile,
    "apt-sandbox": apt_sandbox,
    "bare-box": bare_box,
    "last-mile": last_mile,
}

# entered where the page names them, `<!-- doc-run: NAME -->`, between two blocks; left
# with the page's set-ups
RUNS: dict[str, Setup] = {
    "bare-box-server": bare_box_server,
}
