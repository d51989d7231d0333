"""Multi-node serving: the cluster schema, fit over nodes, every node's files (checked by
systemd-analyze verify and shellcheck), `ray status` recordings, and a two-node apply
to two loopback sshd hosts, each getting its own node's files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import ProvisionError
from provisioner.fit import fit
from provisioner.fit.predict import predict
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.render.files import render
from provisioner.render.pipeline import build, write_tree
from provisioner.verify import ray_status
from tests.render.test_rendered_files import SHELLCHECK, _stub, verify_problems
from tests.support import sshd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "cluster"
RAY_EXAMPLE = EXAMPLES / "two-node-qwen3-235b-fp8-vllm.yaml"
RPC_EXAMPLE = EXAMPLES / "two-box-llama-70b-rpc.yaml"
RAY_CASES = sorted((ROOT / "tests" / "cases" / "ray").glob("*.yaml"))


def _profile(tmp_path: Path, source: Path, patch: dict[str, Any] | None = None, name: str = "c.yaml") -> Path:
    data = yaml.safe_load(source.read_text())
    for dotted, value in (patch or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_script_words(text: str) -> list[str]:
    """The words of every `set -- "$@" ...` line (what the script passes)."""
    words: list[str] = []
    for line in text.splitlines():
        if line.startswith('set -- "$@" '):
            words += line.split("  # ")[0].split()[3:]
    return words


# --- schema ---------------------------------------------------------------------------


@pytest.mark.parametrize(("patch", "message"), [
    ({"cluster.nodes.1.address": "10.0.0.2; reboot"}, "address must be an IP address"),
    ({"cluster.nodes.1.address": "10.0.0.2\nExecStart=/bin/evil"}, "control characters"),
    ({"cluster.nodes.1.role": "head"}, "exactly one node with role: head"),
    ({"cluster.nodes.1.host": "gpu-a"}, "share the host 'gpu-a'"),
    ({"cluster.trusted_network": False}, "beyond loopback and Ray has no authentication"),
    ({"cluster.nodes.1.host": "gpu b"}, "cluster.nodes[1].host: String should match"),
    ({"cluster.port": 22}, "greater than or equal to 1024"),
])
def test_bad_cluster_values_are_refused(tmp_path: Path, patch: dict[str, Any], message: str) -> None:
    path = _profile(tmp_path, RAY_EXAMPLE, patch)
    result = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(path)],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 1
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("source", "patch", "message"), [
    (RAY_EXAMPLE, {"runtime.engine": "llama.cpp", "runtime.version": "b11312"}, "backend ray serves with vllm"),
    (RAY_EXAMPLE, {"hardware.gpus": [{"model": "rtx-4090", "count": 1}]}, "lists its GPUs per node"),
    (RAY_EXAMPLE, {"cluster.nodes.1.gpus": [{"model": "rtx-pro-6000-blackwell", "count": 1}]},
     "every node needs the same number of GPUs"),
    (RAY_EXAMPLE, {"cluster.nodes.1.gpus": [{"model": "rtx-9999", "count": 2}]}, "unknown GPU 'rtx-9999'"),
    # found by the live Ray test: Ray refuses AF_UNIX paths over 107 bytes under its temp dir
    (RAY_EXAMPLE, {"service.name": "a-very-long-service-name-for-llm-1"}, "a UNIX socket path holds at most 107"),
])
def test_cluster_rules_that_need_the_catalog(tmp_path: Path, source: Path, patch: dict[str, Any],
                                             message: str) -> None:
    with pytest.raises(ProvisionError) as caught:
        resolve(load_profile(_profile(tmp_path, source, patch)))
    assert message in str(caught.value)


def test_rpc_cluster_may_mix_gpu_counts(tmp_path: Path) -> None:
    """llama.cpp splits layers by memory: uneven nodes are fine (unlike vLLM's TP groups)."""
    path = _profile(tmp_path, RPC_EXAMPLE, {"cluster.nodes.1.gpus": [{"model": "rtx-3090", "count": 2}]})
    spec = resolve(load_profile(path))
    placement = fit(spec)
    assert [d.node for d in placement.gpus] == ["head", "w1", "w1"]


# --- fit ------------------------------------------------------------------------------


def test_ray_fit_splits_weights_over_tp_and_pp_and_kv_over_stages() -> None:
    spec = resolve(load_profile(RAY_EXAMPLE))
    placement = fit(spec)
    assert placement.fits and placement.stages == 2 and placement.tensor_parallel
    gpus = placement.gpus
    assert [d.node for d in gpus] == ["head", "head", "w1", "w1"]
    assert all(d.weights_bytes == spec.quant.bytes // 4 for d in gpus)
    # 4 KV heads of Qwen3-235B over TP 2: split, not replicated; each stage holds half the layers
    per_gpu = placement.kv_bytes_per_sequence / 2 / 2 * spec.profile.runtime.parallel
    assert gpus[0].kv_cache_bytes == pytest.approx(per_gpu, rel=1e-6)
    # the network: one bf16 hidden state per token between the two stages
    assert placement.interconnect_bytes_per_token == spec.model.hidden_size * 2
    speed = predict(spec, placement)
    assert speed.decode_ms["interconnect"] > 0


def test_pipeline_stages_take_turns_so_a_second_node_does_not_double_decode() -> None:
    """PP adds memory, not single-stream speed: the two stages read their layers one after
    the other, so the GPU time of a token is twice that of all four GPUs working at once."""
    import dataclasses

    spec = resolve(load_profile(RAY_EXAMPLE))
    placement = fit(spec)
    staged = predict(spec, placement).decode_ms["gpu-bandwidth"]
    at_once = predict(spec, dataclasses.replace(placement, stages=1)).decode_ms["gpu-bandwidth"]
    assert staged == pytest.approx(2 * at_once, rel=1e-3)


def test_slower_network_costs_more_per_token(tmp_path: Path) -> None:
    fast = resolve(load_profile(RPC_EXAMPLE))
    slow = resolve(load_profile(_profile(tmp_path, RPC_EXAMPLE, {"cluster.interconnect": {"type": "ethernet",
                                                                                            "gbit_s": 1}})))
    assert fit(slow).interconnect_s_per_token > fit(fast).interconnect_s_per_token
    assert predict(slow, fit(slow)).decode_tokens_per_s < predict(fast, fit(fast)).decode_tokens_per_s


def test_fit_json_lists_devices_per_node() -> None:
    result = subprocess.run([sys.executable, "-m", "provisioner", "fit", str(RAY_EXAMPLE), "--json"],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    nodes = {n["name"]: n for n in data["cluster"]["nodes"]}
    assert [d["name"].split()[1] for d in nodes["w1"]["devices"]] == ["GPU0", "GPU1"]
    assert data["cluster"]["interconnect"]["bytes_per_token"] > 0
    assert "--pipeline-parallel-size" in data["flags"]


# --- render ---------------------------------------------------------------------------


def _node_tree(profile: Path, node: str, root: Path) -> tuple[list[str], list[str], dict[str, bytes]]:
    built = build(profile)
    rendered = render(built.spec, built.placement, node=node)
    write_tree(rendered, root, overwrite=True)
    for stub in ("/usr/bin/nvidia-smi", "/usr/local/bin/llama-server", "/usr/local/bin/vllm", "/bin/sh",
                 "/usr/bin/sh", "/usr/local/bin/ray", "/usr/local/bin/ggml-rpc-server"):
        _stub(root, stub)
    units = [f.path for f in rendered.files if f.validate == "systemd-unit" and f.path.endswith(".service")]
    scripts = [f.path for f in rendered.files if f.validate == "sh"]
    return units, scripts, {f.path: f.content for f in rendered.files}


@pytest.mark.parametrize(("profile", "node"), [(RAY_EXAMPLE, "head"), (RAY_EXAMPLE, "w1"),
                                               (RPC_EXAMPLE, "head"), (RPC_EXAMPLE, "w1")])
def test_every_node_renders_units_and_scripts_their_tools_accept(tmp_path: Path, profile: Path,
                                                                  node: str) -> None:
    units, scripts, _ = _node_tree(profile, node, tmp_path)
    for unit in units:
        problems = verify_problems(tmp_path, unit)
        assert not problems, f"{unit}:\n" + "\n".join(problems)
    for script in scripts:
        path = tmp_path / script.lstrip("/")
        assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0
        result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(path)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{script}:\n{result.stdout}"


def test_ray_head_gets_ray_and_vllm_with_parallel_sizes_worker_joins(tmp_path: Path) -> None:
    _, _, head = _node_tree(RAY_EXAMPLE, "head", tmp_path / "head")
    _, _, worker = _node_tree(RAY_EXAMPLE, "w1", tmp_path / "w1")
    run = _run_script_words(head["/opt/provision/bin/llm-server-run.sh"].decode())
    assert run[run.index("--tensor-parallel-size") + 1] == "2"
    assert run[run.index("--pipeline-parallel-size") + 1] == "2"
    assert run[run.index("--distributed-executor-backend") + 1] == "ray"
    ray_head = _run_script_words(head["/opt/provision/bin/llm-server-ray.sh"].decode())
    assert ray_head[:2] == ["--head", "--port=6379"] and "--node-ip-address=10.0.0.1" in ray_head
    assert 'RAY_ADDRESS="10.0.0.1:6379"' in head["/etc/default/llm-server"].decode()
    unit = head["/etc/systemd/system/llm-server.service"].decode()
    assert "Requires=llm-server-ray.service" in unit
    assert "PartOf=llm-server.service" in head["/etc/systemd/system/llm-server-ray.service"].decode()
    joined = _run_script_words(worker["/opt/provision/bin/llm-server-run.sh"].decode())
    assert joined[0] == "--address=10.0.0.1:6379" and "--node-ip-address=10.0.0.2" in joined
    assert "--num-gpus=2" in joined and "--block" in joined
    assert "/etc/systemd/system/llm-server-ray.service" not in worker
    assert 'CUDA_VISIBLE_DEVICES="0,1"' in worker["/etc/default/llm-server"].decode()


def test_rpc_worker_runs_the_versions_rpc_server_and_head_names_it(tmp_path: Path) -> None:
    _, _, head = _node_tree(RPC_EXAMPLE, "head", tmp_path / "head")
    _, _, worker = _node_tree(RPC_EXAMPLE, "w1", tmp_path / "w1")
    run = _run_script_words(head["/opt/provision/bin/llm-server-run.sh"].decode())
    assert run[run.index("--rpc") + 1] == "10.0.1.2:50052"
    script = worker["/opt/provision/bin/llm-server-run.sh"].decode()
    assert _run_script_words(script)[:4] == ["--host", "10.0.1.2", "--port", "50052"]
    assert 'exec ggml-rpc-server "$@"' in script  # b11312's binary name (tools/rpc/CMakeLists.txt)
    assert "llama-server" not in script


def test_render_node_option_and_unknown_node(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "provisioner", "render", str(RPC_EXAMPLE), "--node", "w1",
                         "--out", str(tmp_path / "w1")], capture_output=True, text=True, check=False, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "ggml-rpc-server" in (tmp_path / "w1/opt/provision/bin/llm-server-run.sh").read_text()
    bad = subprocess.run([sys.executable, "-m", "provisioner", "render", str(RPC_EXAMPLE), "--node", "w9",
                          "--out", str(tmp_path / "w9")], capture_output=True, text=True, check=False, cwd=ROOT)
    assert bad.returncode == 1 and "--node w9: not a node of this cluster" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- ray status -----------------------------------------------------------------------


def test_every_recording_cites_its_source() -> None:
    assert len(RAY_CASES) >= 4
    for path in RAY_CASES:
        assert yaml.safe_load(path.read_text())["source"].startswith("https://github.com/")


@pytest.mark.parametrize("path", RAY_CASES, ids=[p.stem for p in RAY_CASES])
def test_ray_status_recordings_parse(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    status = ray_status.parse(case["output"])
    expected = case["expected"]
    assert status.active_nodes == expected["active_nodes"]
    assert status.gpus_total == expected["gpus_total"]
    assert status.gpus_used == expected["gpus_used"]
    assert len(status.pending) == expected["pending"]
    assert len(status.failures) == expected["failures"]


def _gathered(text: str, rc: int = 0) -> str:
    body = "\n".join(f"{ray_status.MARK} | {line}" for line in text.splitlines())
    return f"noise\n{body}\n{ray_status.MARK} rc {rc}\n"


def test_ray_checks_pass_when_all_nodes_and_gpus_joined() -> None:
    text = yaml.safe_load((ROOT / "tests/cases/ray/vllm-5094-two-nodes-16-gpus.yaml").read_text())["output"]
    checks = {c.id: c for c in ray_status.checks(_gathered(text), nodes=2, gpus=16)}
    assert checks["cluster.nodes"].status == "pass" and checks["cluster.gpus"].status == "pass"


def test_ray_checks_fail_when_a_node_or_gpus_are_missing() -> None:
    text = yaml.safe_load((ROOT / "tests/cases/ray/vllm-15217-two-nodes-rocm.yaml").read_text())["output"]
    checks = {c.id: c for c in ray_status.checks(_gathered(text), nodes=3, gpus=4)}
    assert checks["cluster.nodes"].status == "fail" and "2 node(s)" in str(checks["cluster.nodes"].observed)
    assert checks["cluster.gpus"].status == "fail"
    failing = ray_status.checks(_gathered(yaml.safe_load(
        (ROOT / "tests/cases/ray/ray-36894-pending-and-failure.yaml").read_text())["output"]), nodes=22, gpus=2)
    assert {c.id: c.status for c in failing}["cluster.health"] == "warn"


def test_ray_probe_runs_and_reports_a_missing_binary_or_a_dead_head(tmp_path: Path) -> None:
    """The probe is real sh: run it with no ray, and with a ray that cannot reach a head."""
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    missing = subprocess.run(["sh", "-c", ray_status.probe("127.0.0.1:6379")], capture_output=True, text=True,
                             check=True, env=env)
    assert ray_status.checks(missing.stdout, 2, 2)[0].observed == "no `ray` on the head's PATH"
    fake = tmp_path / "ray"
    fake.write_text("#!/bin/sh\necho \"ConnectionError: Could not find any running Ray instance.\"\nexit 1\n")
    fake.chmod(0o755)
    dead = subprocess.run(["sh", "-c", ray_status.probe("127.0.0.1:6379")], capture_output=True, text=True,
                          check=True, env=env)
    (check,) = ray_status.checks(dead.stdout, 2, 2)
    assert check.status == "fail" and "Could not find any running Ray instance" in str(check.observed)


# --- apply to two loopback hosts ----------------------------------------------------------


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshFarm]:
    if sshd.available() is not None:
        pytest.skip(str(sshd.available()))
    started = sshd.start_farm(tmp_path_factory.mktemp("ssh"), 2)
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.usefixtures("ssh_transport")
def test_apply_cluster_gives_each_host_its_nodes_files(farm: sshd.SshFarm, tmp_path: Path) -> None:
    h1, h2 = farm.hosts[:2]
    profile = _profile(tmp_path, RAY_EXAMPLE, {"cluster.trusted_network": False,
                                               "cluster.nodes.0.host": "node-a", "cluster.nodes.0.address": h1.address,
                                               "cluster.nodes.1.host": "node-b", "cluster.nodes.1.address": h2.address})
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n" + "".join(
        f"  {name}: {{address: {host.address}, port: {sshd.PORT}, user: root, key: {farm.client_key}, "
        f"root: {tmp_path}/root-{name}, profile: {profile}}}\n" for name, host in (("node-a", h1), ("node-b", h2))))
    env = {**os.environ, "HOME": "/nonexistent-home"}
    args = ["-i", str(inventory), "--known-hosts", str(farm.known_hosts)]
    applied = subprocess.run([sys.executable, "-m", "provisioner", "apply", *args, "--yes"],
                             capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert applied.returncode == 0, applied.stderr
    head, worker = tmp_path / "root-node-a", tmp_path / "root-node-b"
    assert "ray start" not in (head / "opt/provision/bin/llm-server-run.sh").read_text()
    assert "--pipeline-parallel-size 2" in (head / "opt/provision/bin/llm-server-run.sh").read_text()
    assert (head / "etc/systemd/system/llm-server-ray.service").is_file()
    assert f"--address={h1.address}:6379" in (worker / "opt/provision/bin/llm-server-run.sh").read_text()
    assert not (worker / "etc/systemd/system/llm-server-ray.service").exists()
    again = subprocess.run([sys.executable, "-m", "provisioner", "plan", *args], capture_output=True, text=True,
                           check=False, cwd=ROOT, env=env)
    assert again.returncode == 0, again.stderr  # each host converged to its own node's files
    verified = subprocess.run([sys.executable, "-m", "provisioner", "verify", *args, "--only", "drift,cluster",
                               "--json"], capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    hosts = {h["host"]: {c["id"]: c for c in h["checks"]} for h in json.loads(verified.stdout)["hosts"]}
    assert set(hosts) == {"node-a", "node-b"}
    for checks in hosts.values():  # each host is compared with its own node's files
        assert any(c.startswith("drift.") for c in checks)
        assert not [c for c in checks.values() if c["id"].startswith("drift.file") and c["status"] == "fail"]
    assert hosts["node-a"]["cluster"]["status"] == "skip"  # --root trees run no Ray; only the head asks
    assert "cluster" not in hosts["node-b"]


@pytest.mark.usefixtures("ssh_transport")
def test_a_host_that_is_no_node_is_refused(farm: sshd.SshFarm, tmp_path: Path) -> None:
    h1 = farm.hosts[0]
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"hosts:\n  stranger: {{address: {h1.address}, port: {sshd.PORT}, user: root, "
                         f"key: {farm.client_key}, root: {tmp_path}/root, profile: {RAY_EXAMPLE}}}\n")
    result = subprocess.run([sys.executable, "-m", "provisioner", "plan", "-i", str(inventory), "--known-hosts",
                             str(farm.known_hosts)], capture_output=True, text=True, check=False, cwd=ROOT,
                            env={**os.environ, "HOME": "/nonexistent-home"})
    assert result.returncode == 1
    assert "host stranger is not a node of the cluster" in result.stderr
    assert not (tmp_path / "root").exists()


def test_a_vllm_cluster_that_does_not_fit_is_offered_llama_cpp_rpc_on_the_same_nodes(tmp_path: Path) -> None:
    one_gpu = [{"model": "rtx-pro-6000-blackwell", "count": 1}]
    path = _profile(tmp_path, RAY_EXAMPLE, {"cluster.nodes.0.gpus": one_gpu, "cluster.nodes.1.gpus": one_gpu})
    result = subprocess.run([sys.executable, "-m", "provisioner", "fit", str(path), "--json"],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 2
    data = json.loads(result.stdout)
    changes = [s["change"] for s in data["suggestions"] if s["fits"]]
    assert any(c.endswith("cluster.backend: rpc") for c in changes), changes


def test_fit_on_one_hosts_hardware_refuses_a_cluster_profile() -> None:
    result = subprocess.run([sys.executable, "-m", "provisioner", "fit", str(RPC_EXAMPLE), "--here"],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 1
    assert "describes a cluster of 2 nodes" in result.stderr and "Traceback" not in result.stderr


def test_monitor_expects_each_nodes_own_gpus(tmp_path: Path) -> None:
    from provisioner.converge.fleet import Target
    from provisioner.monitor.run import watch_for
    from provisioner.transport.local import LocalTransport

    path = _profile(tmp_path, RPC_EXAMPLE, {"cluster.nodes.1.gpus": [{"model": "rtx-3090", "count": 3}]})
    worker = Target("box-b", path, lambda: LocalTransport(None), per_host_node=True)
    head = Target("box-a", path, lambda: LocalTransport(None), per_host_node=True)
    assert watch_for(worker).thresholds.gpus_expected == 3
    assert watch_for(head).thresholds.gpus_expected == 1


# --- clusters meeting the other features -----------------------------------------------

SOURCE_ENGINE = {"method": "source", "url": "https://example.invalid/llama.tar.gz", "sha256": "0" * 64,
                 "subdir": "vendor/llama.cpp", "targets": ["llama-server"]}


@pytest.mark.parametrize(("source", "engine"), [
    (RPC_EXAMPLE, SOURCE_ENGINE),
    (RAY_EXAMPLE, {"method": "venv", "requirements": ["vllm==0.11.0"]}),
])
def test_install_engine_on_a_cluster_is_refused_until_node_scripts_use_it(
        tmp_path: Path, source: Path, engine: dict[str, Any]) -> None:
    """Ray and rpc-server are run from PATH by the node scripts: an installed engine would
    sit unused (and an RPC build lacks GGML_RPC), so the mix is refused at its line."""
    profile = _profile(tmp_path, source, {"install": {"engine": engine}})
    with pytest.raises(ProvisionError) as caught:
        build(profile, network=False)
    [problem] = caught.value.problems
    assert problem.message.startswith("install.engine on a cluster profile is not supported yet")
    assert problem.field == "install.engine" and problem.line and problem.hint


def test_verify_on_a_cluster_node_keeps_the_profiles_installs(tmp_path: Path) -> None:
    """verify builds each node's view; the install checks must not vanish from it (a missing
    model on the head must fail `verify --only install`), and an RPC worker skips the model."""

    data = yaml.safe_load(RPC_EXAMPLE.read_text())
    model = data["model"]["source"]["files"][0]
    profile = _profile(tmp_path, RPC_EXAMPLE, {
        # a download is checked against its size and sha256: those of the bytes b"model"
        "model.source.files": [{**model, "url": "https://example.invalid/m.gguf", "bytes": 5,
                                "sha256": hashlib.sha256(b"model").hexdigest()}],
        "install": {"model": True}})
    built = build(profile, network=False)
    # the fabric manager rides along on auto: each node decides with its own NVSwitches
    assert [i.name for i in built.rendered_for(node="head").installs] == ["fabricmanager:nvidia", "user:llm",
                                                                        "download:model"]
    assert [i.name for i in built.rendered_for(node="w1").installs] == ["fabricmanager:nvidia", "user:llm"]
    result = subprocess.run([sys.executable, "-m", "provisioner", "verify", str(profile), "--root",
                             str(tmp_path / "head"), "--node", "head", "--only", "install", "--json"],
                            capture_output=True, text=True, check=False)
    report = json.loads(result.stdout)
    assert result.returncode == 2, result.stdout + result.stderr
    failed = [c["id"] for c in report["hosts"][0]["checks"] if c["status"] == "fail"]
    # an empty tree: neither the model nor the service user is there
    assert sorted(failed) == ["install.download:model", "install.user:llm"], failed


@pytest.mark.parametrize("source", [RPC_EXAMPLE, ROOT / "profiles" / "rtx-pro-6000-llama-3.3-70b-q8-llamacpp.yaml"])
def test_a_fully_offloaded_model_leaves_no_byte_in_ram(source: Path) -> None:
    """Truncating the GPU share once left 1 B "in RAM", which switched on the CPU buffer and
    mlock (`--load-mode=mmap+mlock`) for a model that is entirely on the GPUs."""
    placement = fit(resolve(load_profile(source)))
    assert placement.gpu_layers == resolve(load_profile(source)).model.layers + 1
    assert placement.ram.weights_bytes == 0 and placement.ram.buffers_bytes == 0


def test_a_target_that_is_no_inventory_host_must_name_its_node(tmp_path: Path) -> None:
    """plan/apply/verify here or on --root: a cluster worker given the head's files would
    become a second head, so the node is asked for, and --node gives that node's files."""
    def plan(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "provisioner", "plan", str(RPC_EXAMPLE), "--root",
                               str(tmp_path / "w"), *extra], capture_output=True, text=True, check=False)

    asked = plan()
    assert asked.returncode == 1 and "is a cluster: which node is local:" in asked.stderr
    assert "(hint: pass --node NAME (one of head, w1)" in asked.stderr
    assert plan("--node", "nope").returncode == 1
    worker = plan("--node", "w1")
    assert worker.returncode == 2, worker.stderr  # changes pending: the worker's files
    applied = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(RPC_EXAMPLE), "--root",
                              str(tmp_path / "w"), "--node", "w1", "--yes"], capture_output=True, text=True,
                             check=False)
    assert applied.returncode == 0, applied.stderr
    run_script = (tmp_path / "w" / "opt/provision/bin/llm-server-run.sh").read_text()
    assert "exec ggml-rpc-server" in run_script and "llama-server" not in run_script
