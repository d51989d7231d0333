"""Endpoint checks: against a stand-in server for the rare faults, and against a real llama-server.

The real server is llama.cpp b11312 built for CPU from the llama-cpp-python sdist
(scripts/build-llama-server, cached outside the repository), serving a tiny
random-weight Qwen2 (tests/support/tinymodel.py) started by the run script provision
renders for tests/cases/endpoint/tiny-cpu.yaml.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from provisioner.facts.check import Check
from provisioner.fit.placement import Placement
from provisioner.fit.predict import speed_floors
from provisioner.profile.resolve import Spec
from provisioner.verify.endpoint import endpoint_checks
from tests.conftest import ROOT, make_profile
from tests.support.standin_server import StandinServer

CASES = ROOT / "tests" / "cases" / "endpoint"
API_KEY = "test-key-7f3a"


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.id: c.status for c in checks}


# -- stand-in server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick() -> tuple[Spec, Placement]:
    """The quickstart profile at 4096 tokens, 1 slot (the stand-in serves whatever it is told)."""
    import tempfile

    from provisioner.render.pipeline import build

    with tempfile.TemporaryDirectory() as tmp:
        built = build(make_profile(Path(tmp), {"model.context": 4096}))
    return built.spec, built.placement


def run_standin(quick: tuple[Spec, Placement], mode: str, *, predicted: float | None = 100.0,
                needle: bool = True, key: str | None = None, **kwargs: object) -> list[Check]:
    spec, placement = quick
    with StandinServer(mode, model=spec.model_id, context=placement.context, **kwargs) as server:  # type: ignore[arg-type]
        return endpoint_checks(spec, placement, predicted, server.base_url, key, needle=needle, timeout_s=10)


ALL_IDS = ["endpoint.answers", "endpoint.model_id", "endpoint.context", "endpoint.slots", "endpoint.needle",
           "endpoint.deterministic", "endpoint.template", "endpoint.speed"]


def test_standin_ok_passes_everything(quick: tuple[Spec, Placement]) -> None:
    checks = run_standin(quick, "ok")
    assert [c.id for c in checks] == ALL_IDS
    assert statuses(checks) == dict.fromkeys(ALL_IDS, "pass"), checks
    assert "4096 tokens per sequence" in (by_id(checks)["endpoint.context"].observed or "")


def test_truncation_fails_needle(quick: tuple[Spec, Placement]) -> None:
    needle = by_id(run_standin(quick, "truncation"))["endpoint.needle"]
    assert needle.status == "fail"
    assert "processed 2048 of" in (needle.observed or "")
    assert "truncated" in (needle.hint or "")


def test_context_shift_fails_needle(quick: tuple[Spec, Placement]) -> None:
    checks = by_id(run_standin(quick, "context-shift"))
    assert checks["endpoint.context"].status == "pass"  # it claims the full context...
    needle = checks["endpoint.needle"]
    assert needle.status == "fail"  # ...but loses the start of a long prompt
    assert "not recalled" in (needle.observed or "")
    assert "context shift" in (needle.hint or "")


def test_nondeterministic_fails(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "nondeterministic"))["endpoint.deterministic"]
    assert check.status == "fail"
    assert check.observed is not None and check.observed.startswith("3 different answers")


def test_leaked_template_tokens_fail(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "leaked-template-tokens"))["endpoint.template"]
    assert check.status == "fail"
    assert "<|im_end|>" in (check.observed or "") and "<|im_start|>" in (check.observed or "")


def test_slow_fails_speed_as_cpu_spill(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "slow", slow_tps=30.0))["endpoint.speed"]
    assert check.status == "fail"
    assert "30.0 tok/s" in (check.observed or "") and "CPU spill" in (check.hint or "")


def test_somewhat_slow_warns(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "slow", slow_tps=60.0))["endpoint.speed"]
    assert check.status == "warn", check


def test_speed_thresholds_follow_the_known_error_band(quick: tuple[Spec, Placement]) -> None:
    """The warning starts where the published cases of this kind of placement stop
    (catalog/fit.yaml verify_speed), not at a flat share of the prediction."""
    warn, fail = speed_floors(*quick)
    assert fail < warn < 1.0
    below = by_id(run_standin(quick, "slow", slow_tps=100.0 * (warn - 0.04)))["endpoint.speed"]
    assert below.status == "warn" and f">= {warn:.0%}" in (below.expected or "")
    inside = by_id(run_standin(quick, "slow", slow_tps=100.0 * min(warn + 0.04, 1.0)))["endpoint.speed"]
    assert inside.status == "pass", inside


def test_speed_skipped_without_prediction(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "ok", predicted=None))["endpoint.speed"]
    assert check.status == "skip" and "no speed prediction" in (check.hint or "")


def test_smaller_context_fails(quick: tuple[Spec, Placement]) -> None:
    checks = by_id(run_standin(quick, "small-context", real_context=3000))
    assert checks["endpoint.context"].status == "fail"
    assert (checks["endpoint.context"].observed or "").startswith("3000 tokens per sequence")
    assert checks["endpoint.needle"].status == "fail"  # the long prompt is refused


def test_wrong_slot_count_fails(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "ok", slots=2))["endpoint.slots"]
    assert check.status == "fail" and check.observed == "2 slot(s)" and check.expected == "1 slot(s)"


def test_needle_can_be_disabled(quick: tuple[Spec, Placement]) -> None:
    check = by_id(run_standin(quick, "ok", needle=False))["endpoint.needle"]
    assert check.status == "skip" and check.hint == "disabled by --no-needle"


def test_missing_api_key_is_a_clear_fail(quick: tuple[Spec, Placement]) -> None:
    checks = run_standin(quick, "auth", api_key=API_KEY)
    answers = by_id(checks)["endpoint.answers"]
    assert answers.status == "fail" and "401" in (answers.observed or "")
    assert "requires an API key" in (answers.hint or "")
    assert {c.status for c in checks[1:]} == {"skip"}
    wrong = by_id(run_standin(quick, "auth", api_key=API_KEY, key="nope"))["endpoint.answers"]
    assert wrong.status == "fail" and "rejected the API key" in (wrong.hint or "")
    good = run_standin(quick, "auth", api_key=API_KEY, key=API_KEY)
    assert statuses(good) == dict.fromkeys(ALL_IDS, "pass")


def test_nothing_listening_fails_answers(quick: tuple[Spec, Placement]) -> None:
    spec, placement = quick
    checks = endpoint_checks(spec, placement, 10.0, f"http://127.0.0.1:{free_port()}", None, timeout_s=5)
    answers = by_id(checks)["endpoint.answers"]
    assert answers.status == "fail" and "no answer" in (answers.observed or "")
    assert "is the server running" in (answers.hint or "")


def test_wrong_model_fails_model_id(quick: tuple[Spec, Placement]) -> None:
    spec, placement = quick
    with StandinServer("ok", model="some-other-model", context=placement.context) as server:
        check = by_id(endpoint_checks(spec, placement, None, server.base_url, None, timeout_s=10))["endpoint.model_id"]
    assert check.status == "fail" and check.observed == "some-other-model" and check.expected == spec.model_id


# -- the real llama-server ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_model(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tinymodel import write_tiny_model

    # scripts/build-llama-server keeps the sdist's vocabulary beside the build tree
    vocab = llama_server_binary.parents[6] / "models" / "ggml-vocab-qwen2.gguf"
    return write_tiny_model(vocab, tmp_path_factory.mktemp("tinymodel") / "tiny-qwen2.gguf")


@pytest.fixture(scope="session")
def tiny_catalog() -> Iterator[None]:
    """models.yaml plus the tiny model's entry (tests/cases/endpoint/tiny-qwen2.catalog.yaml)."""
    from provisioner.catalog import ModelSpec, load_catalog
    from provisioner.profile import resolve

    catalog = load_catalog()
    if "tiny-qwen2" in catalog.models:
        yield
        return
    entries = yaml.safe_load((CASES / "tiny-qwen2.catalog.yaml").read_text())
    models = {**catalog.models, **{k: ModelSpec.model_validate(v) for k, v in entries.items()}}
    extended = catalog.model_copy(update={"models": models})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resolve, "load_catalog", lambda: extended)
        yield


@dataclass
class Served:
    spec: Spec
    placement: Placement
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path


def tiny_profile(directory: Path, model: Path, port: int, **patch: object) -> Path:
    import hashlib

    data = yaml.safe_load((CASES / "tiny-cpu.yaml").read_text())
    data["model"]["source"]["files"] = [{"path": str(model), "bytes": model.stat().st_size,
                                        "sha256": hashlib.sha256(model.read_bytes()).hexdigest()}]
    data["runtime"]["port"] = port
    for dotted, value in patch.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = directory / "tiny-cpu.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_until_healthy(process: subprocess.Popen[bytes], base_url: str, log: Path, timeout_s: float = 90.0) -> None:
    """Until the server at ``base_url`` answers /health with 200; fails with its log's tail
    when ``process`` exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"llama-server exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"llama-server not healthy after {timeout_s}s:\n{log.read_text()[-4000:]}")


def wait_healthy(served: Served, timeout_s: float = 90.0) -> None:
    wait_until_healthy(served.process, served.base_url, served.log, timeout_s)


def stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(timeout=5)


def start_rendered(directory: Path, binary: Path, model: Path, **patch: object) -> Served:
    """Render the tiny CPU profile and start llama-server with its run script, unchanged."""
    from provisioner.render.pipeline import build

    port = free_port()
    built = build(tiny_profile(directory, model, port, **patch))
    script = next(f for f in built.rendered.files if f.path.endswith("-run.sh"))
    run = directory / Path(script.path).name
    run.write_bytes(script.content)
    run.chmod(0o755)
    log = directory / "llama-server.log"
    env = {**os.environ, "PATH": f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}", "LLM_API_KEY": API_KEY}
    with log.open("wb") as out:
        process = subprocess.Popen([str(run)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    served = Served(built.spec, built.placement, f"http://127.0.0.1:{port}", process, log)
    try:
        wait_healthy(served)
    except BaseException:
        stop(served)
        raise
    return served


@pytest.fixture(scope="module")
def rendered_server(llama_server_binary: Path, tiny_model: Path, tiny_catalog: None,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = start_rendered(tmp_path_factory.mktemp("served"), llama_server_binary, tiny_model)
    try:
        yield served
    finally:
        stop(served)


@pytest.fixture(scope="module")
def real_checks(rendered_server: Served) -> list[Check]:
    s = rendered_server
    # A low prediction: fit's roofline for a 10 MB model is not what a CPU server's fixed
    # per-token overhead allows; the speed verdict itself is covered by the stand-in tests.
    return endpoint_checks(s.spec, s.placement, 5.0, s.base_url, API_KEY, timeout_s=120)


@pytest.mark.slow
def test_real_server_passes_model_context_slots_determinism_template_speed(real_checks: list[Check]) -> None:
    got = by_id(real_checks)
    for cid in ("endpoint.answers", "endpoint.model_id", "endpoint.context", "endpoint.slots",
                "endpoint.deterministic", "endpoint.template", "endpoint.speed"):
        assert got[cid].status == "pass", got[cid]
    assert got["endpoint.model_id"].observed is not None and "tiny-qwen2" in got["endpoint.model_id"].observed
    assert got["endpoint.context"].observed == "2048 tokens per sequence (/slots)"
    assert got["endpoint.slots"].observed == "2 slot(s)"
    assert "server timings" in (got["endpoint.speed"].observed or "")


@pytest.mark.slow
def test_real_server_needle_fails_because_the_weights_are_random(real_checks: list[Check]) -> None:
    needle = by_id(real_checks)["endpoint.needle"]
    assert needle.status == "fail"
    # The whole prompt was served (no refusal, no truncation): the model just cannot recall.
    assert (needle.observed or "").startswith("not recalled from a ")
    tokens = int((needle.observed or "").split("from a ")[1].split("-token")[0])
    assert 0.8 * 2048 < tokens <= 2048


@pytest.mark.slow
def test_real_server_rejects_a_missing_api_key(rendered_server: Served) -> None:
    s = rendered_server
    answers = by_id(endpoint_checks(s.spec, s.placement, None, s.base_url, None, timeout_s=30))["endpoint.answers"]
    assert answers.status == "fail" and "401" in (answers.observed or "")
    assert "requires an API key" in (answers.hint or "")


@pytest.mark.slow
def test_real_server_with_smaller_context_fails_context(llama_server_binary: Path, tiny_model: Path,
                                                        tiny_catalog: None, tmp_path: Path) -> None:
    # The profile says 2048 per slot; the server runs from a profile that says 1024.
    served = start_rendered(tmp_path, llama_server_binary, tiny_model, **{"model.context": 1024})
    try:
        from provisioner.render.pipeline import build

        (tmp_path / "want").mkdir()
        wanted = build(tiny_profile(tmp_path / "want", tiny_model, free_port()))
        checks = by_id(endpoint_checks(wanted.spec, wanted.placement, None, served.base_url, API_KEY,
                                       needle=False, timeout_s=60))
    finally:
        stop(served)
    assert checks["endpoint.context"].status == "fail"
    assert checks["endpoint.context"].observed == "1024 tokens per sequence (/slots)"
    assert checks["endpoint.context"].expected == "2048 tokens per sequence"


@pytest.mark.slow
def test_provision_verify_end_to_end_against_the_rendered_server(
        rendered_server: Served, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command a user runs: `provision verify PROFILE --endpoint URL`, through the CLI,
    against llama-server started by the run script the templates emitted."""
    import json

    from click.testing import CliRunner

    from provisioner.cli import main

    port = int(rendered_server.base_url.rsplit(":", 1)[1])
    profile = tiny_profile(tmp_path, tiny_model, port)
    monkeypatch.setenv("LLM_API_KEY", API_KEY)
    result = CliRunner().invoke(main, ["verify", str(profile), "--only", "endpoint,model", "--endpoint",
                                       rendered_server.base_url, "--no-needle", "--json"])
    assert result.exit_code in (0, 2), result.output
    data = json.loads(result.stdout)
    checks = {c["id"]: c for c in data["hosts"][0]["checks"]}
    for check_id in ("endpoint.answers", "endpoint.model_id", "endpoint.context", "endpoint.slots",
                     "endpoint.deterministic", "endpoint.template", "model.file:tiny-qwen2.gguf",
                     "model.architecture", "model.layers"):
        assert checks[check_id]["status"] == "pass", checks[check_id]
    assert checks["endpoint.needle"]["status"] == "skip"
    # fit's roofline is calibrated on real models; for a 10 MB test model a CPU server's fixed
    # per-token cost dominates, so only the measurement itself is asserted here.
    assert "tok/s" in (checks["endpoint.speed"]["observed"] or "")
