"""The quality canary: its maths and data, a stand-in for long-context faults, and a real
CPU llama-server (b11312) serving a tiny model whose setup the tests change.

The real-server tests use tests/tinymodel.py's PEAKED variant (head_dim 32, so llama.cpp's
q4_0 K cache can take it; peaked logits, so a change shows in the numbers), written with
``gguf`` at test time and served by the run script provision renders for
tests/cases/endpoint/tiny-cpu.yaml, like the endpoint tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.facts.check import Check
from provisioner.fit import Placement
from provisioner.profile.resolve import Spec
from provisioner.transport.local import LocalTransport
from provisioner.verify import baseline as store
from provisioner.verify.canary import quality_checks, settle
from provisioner.verify.long_context import CHECK_IDS
from provisioner.verify.quality import (
    FORMAT,
    Fingerprint,
    Position,
    ProbeAnswer,
    PromptPrint,
    compare_positions,
    extract_answer,
    limits,
    parse_fingerprint,
    percentile,
    position_kld,
    probes,
    prompts,
    same_answer,
    setup_differences,
)
from provisioner.verify.run import VerifyOptions, verify_target
from tests.conftest import ROOT
from tests.support.standin_server import StandinServer
from tests.verify import test_endpoint as endpoint_tests
from tests.verify.test_endpoint import API_KEY, Served, start_rendered, stop, tiny_profile

# the endpoint tests' fixtures: the quickstart spec for the stand-in, the tiny models' catalog entries
quick = endpoint_tests.quick
tiny_catalog = endpoint_tests.tiny_catalog

PEAKED_PATCH = {"model.id": "tiny-qwen2-peaked", "model.quant": "F32"}


def by_id(checks: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in checks}


# -- the maths ---------------------------------------------------------------------------------

def test_kld_of_identical_distributions_is_zero() -> None:
    top = ((5, -0.1), (7, -2.5), (9, -4.0))
    assert position_kld(top, top) == 0.0


def test_kld_matches_the_definition_over_top_k_and_the_rest() -> None:
    base = ((1, math.log(0.6)), (2, math.log(0.3)))  # rest 0.1
    now = ((1, math.log(0.5)), (2, math.log(0.4)))  # rest 0.1
    want = 0.6 * math.log(0.6 / 0.5) + 0.3 * math.log(0.3 / 0.4) + 0.1 * math.log(0.1 / 0.1)
    assert position_kld(base, now) == pytest.approx(want, rel=1e-12)


def test_kld_bounds_a_token_missing_from_the_other_top_k() -> None:
    # token 2 is not in now's top-2: its probability is at most now's 2nd (0.05) and the mass
    # outside now's top-2 (0.05); the bound gives the smallest divergence it could be
    base = ((1, math.log(0.5)), (2, math.log(0.4)))
    now = ((1, math.log(0.9)), (3, math.log(0.05)))
    got = position_kld(base, now)
    lower = 0.5 * math.log(0.5 / 0.9) + 0.4 * math.log(0.4 / 0.05) + 0.1 * math.log(0.1 / 0.05)
    assert got == pytest.approx(lower, rel=1e-9)
    assert got > 0.5


def test_compare_positions_finds_the_first_greedy_divergence_and_unmeasured() -> None:
    top_a = ((1, -0.1), (2, -2.4))
    top_b = ((2, -0.1), (1, -2.4))
    base = [Position(token=1, top=top_a), Position(token=1, top=top_a), Position(token=1, top=top_a)]
    now: list[Position | None] = [Position(token=1, top=top_a), Position(token=2, top=top_b), None]
    got = compare_positions("p", base, now)
    assert got.first_divergence == 1 and got.unmeasured == 1
    assert got.positions == 2 and got.top1_same == 1 and got.klds[0] == 0.0 and got.klds[1] > 1.0


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.99) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_setup_differences_name_what_changed_in_order() -> None:
    before = {"engine_version": "b11312", "kv_cache_k": "f16", "model_sha256": "a" * 64, "driver": "575.57"}
    now = {"engine_version": "b11312", "kv_cache_k": "q4_0", "model_sha256": "b" * 64}
    assert setup_differences(before, now) == ["model file sha256: aaaaaaaaaaaa -> bbbbbbbbbbbb",
                                              "KV cache type (K): f16 -> q4_0"]


def test_answers_are_extracted_and_normalised() -> None:
    assert extract_answer("Let me see.\n16 - 3 - 4 = 9, 9 x 2 = 18\nANSWER: $18.") == "$18."
    assert same_answer("$18.", "18") and same_answer("8,858", "8858") and same_answer("cleo", "Cleo")
    assert not same_answer("17", "18") and not same_answer(None, "18")
    assert extract_answer("no marker\n\nlast line") == "last line" and extract_answer("  ") is None


# -- the bundled data --------------------------------------------------------------------------

def test_probe_answers_are_right() -> None:
    answers = {p.id: p.answer for p in probes().items}
    assert answers["multiply-subtract"] == str(347 * 29 - 1205)
    runners = ("Ada", "Ben", "Cleo", "Dev", "Eli")
    orders = [o for o in itertools.permutations(runners)
              if o.index("Ben") < o.index("Cleo") and o.index("Ada") == o.index("Eli") + 1
              and o[-1] == "Dev" and o.index("Cleo") < o.index("Eli")]
    assert len(orders) == 1 and answers["race-order"] == orders[0][1]
    assert probes().max_tokens.keys() == {"thinking", "non-thinking"}


def test_prompts_have_sources_and_fit_a_2048_token_slot() -> None:
    import yaml

    data = yaml.safe_load((ROOT / "provisioner/verify/canary_data/prompts.yaml").read_text())
    for entry, prompt in zip(data["prompts"], prompts(), strict=True):
        assert entry["source"] and entry["licence"], entry["id"]
        assert prompt.sha256 == hashlib.sha256(prompt.text.encode()).hexdigest()
        # the tiny test server's slot: 2048 tokens, of which the continuation takes limits().tokens
        assert 300 <= entry["tokens_qwen2"] <= 2048 - limits().tokens


def test_limits_sit_between_the_published_noise_and_q8_0() -> None:
    lim = limits()
    # llama.cpp tools/perplexity/README.md (b11312): BF16 vs FP16 mean 0.00002515, 99.9% 0.000799,
    # same top 99.739 %; q8_0 vs FP16 mean 0.000369 (LLaMA 2 7B), same top 98.846 %
    assert 0.00002515 < lim.mean_kld_fail < 0.000369
    assert lim.p99_kld_fail >= 0.000222
    assert 0.98846 < lim.top1_agreement_fail < 0.99739


# -- the file format and where it lives --------------------------------------------------------

def _fingerprint(**setup: str) -> Fingerprint:
    return Fingerprint(taken="2026-01-01T00:00:00+00:00", api="llama.cpp-completion", top_k=2, tokens=1,
                       setup={"kv_cache_k": "f16", **setup},
                       prompts=(PromptPrint(id="p", sha256="0" * 64, prompt_ids=(1, 2),
                                            generated=(Position(token=3, top=((3, -0.1), (4, -2.5))),)),),
                       probes=(ProbeAnswer(id="x", answer="18", correct=True),))


def test_fingerprint_round_trips_through_the_state_dir(tmp_path: Path) -> None:
    transport = LocalTransport(tmp_path / "tree")
    assert store.read_baseline(transport, "llm-server").fingerprint is None
    first = _fingerprint()
    assert store.write_baseline(transport, "llm-server", first) is None
    path = tmp_path / "tree/var/lib/provision/quality/llm-server.fingerprint.json"
    assert json.loads(path.read_text())["format"] == FORMAT
    assert store.read_baseline(transport, "llm-server").fingerprint == first
    second = _fingerprint(kv_cache_k="q8_0")
    assert store.write_baseline(transport, "llm-server", second) is None
    assert store.read_baseline(transport, "llm-server").fingerprint == second
    previous = path.with_name("llm-server.fingerprint.previous.json")
    assert parse_fingerprint(previous.read_text(), "x") == first


def test_a_damaged_fingerprint_is_one_clear_line(tmp_path: Path) -> None:
    profile = tmp_path / "my.yaml"
    profile.write_text("{}")
    assert store.beside(profile, store.REVIEWED_SUFFIX) == tmp_path / "my.fingerprint.json"
    (tmp_path / "my.fingerprint.json").write_text("{not json")
    loaded = store.read_beside(profile, store.REVIEWED_SUFFIX)
    assert loaded.fingerprint is None and loaded.error is not None
    assert loaded.error.startswith(f"{tmp_path}/my.fingerprint.json: not JSON")
    (tmp_path / "my.fingerprint.json").write_text(json.dumps({"format": "other/2"}))
    assert "this provision reads 'provision-fingerprint/1'" in (store.read_beside(profile, ".fingerprint.json").error
                                                                 or "")
    data = json.loads(_fingerprint().model_dump_json())
    data["top_k"] = 0
    (tmp_path / "my.fingerprint.json").write_text(json.dumps(data))
    assert "top_k: Input should be greater than or equal to 1" in (store.read_beside(profile, ".fingerprint.json")
                                                                   .error or "")


def test_settle_records_only_a_passing_verify() -> None:
    measured = _fingerprint()
    ok = [Check("endpoint.answers", "pass"), Check("quality.probe:x", "warn")]
    check, record = settle(ok, measured, None, rebaseline=False)
    assert record and check.status == "pass" and (check.observed or "").startswith("recorded")
    check, record = settle([*ok, Check("drift.files", "fail")], measured, None, rebaseline=False)
    assert not record and check.status == "warn" and "drift.files" in (check.observed or "")
    old = _fingerprint(kv_cache_k="q8_0")
    check, record = settle(ok, measured, old, rebaseline=False)
    assert not record and (check.observed or "").startswith("kept")
    check, record = settle(ok, measured, old, rebaseline=True)
    assert record and "KV cache type (K): q8_0 -> f16" in (check.observed or "")
    check, record = settle([Check("model.sha256", "fail")], measured, old, rebaseline=True)
    assert not record and check.status == "fail" and "the old baseline stays" in (check.hint or "")


# -- long-context fidelity against a stand-in --------------------------------------------------

def quality_standin(quick: tuple[Spec, Placement], mode: str, **kwargs: object) -> dict[str, Check]:
    spec, placement = quick
    with StandinServer(mode, model=spec.model_id, context=placement.context, **kwargs) as server:  # type: ignore[arg-type]
        result = quality_checks(spec, placement, server.base_url, None, setup={}, timeout_s=10)
    return by_id(result.checks)


def test_long_context_fidelity_passes_on_a_faithful_server(quick: tuple[Spec, Placement]) -> None:
    checks = quality_standin(quick, "ok")
    for cid in ("quality.needle@10%", "quality.needle@50%", "quality.needle@90%", "quality.needle.consistent"):
        assert checks[cid].status == "pass", checks[cid]
    assert checks["quality.needle.consistent"].observed == "both answered 'AMBER-FALCON-2917'"
    # the stand-in speaks no /tokenize, which llama-server b11312 has: a server that fails the API is a fail
    fingerprint = checks["quality.fingerprint"]
    assert fingerprint.status == "fail" and "HTTP 404" in (fingerprint.observed or "")


def test_a_dropped_prompt_start_fails_long_context_fidelity(quick: tuple[Spec, Placement]) -> None:
    checks = quality_standin(quick, "context-shift")
    deep = checks["quality.needle@10%"]
    assert deep.status == "fail" and "not recalled" in (deep.observed or "")
    assert checks["quality.needle@90%"].status == "pass"  # the end of the prompt is still there
    consistent = checks["quality.needle.consistent"]
    assert consistent.status == "fail" and "context shift" in (consistent.hint or "")
    assert "at the end: 'AMBER-FALCON-2917'" in (consistent.observed or "")


def test_a_shifted_context_fails_long_context_fidelity(quick: tuple[Spec, Placement]) -> None:
    checks = quality_standin(quick, "truncation")
    deep = checks["quality.needle@10%"]
    assert deep.status == "fail" and "processed 2048 of" in (deep.observed or "")
    assert "truncated" in (deep.hint or "")


def test_nothing_answering_skips_the_quality_group(quick: tuple[Spec, Placement]) -> None:
    from tests.verify.test_endpoint import free_port

    spec, placement = quick
    result = quality_checks(spec, placement, f"http://127.0.0.1:{free_port()}", None, setup={}, timeout_s=5)
    assert result.fingerprint is None
    assert {c.id for c in result.checks} >= set(CHECK_IDS)
    assert {c.status for c in result.checks} == {"skip"}


def test_verify_only_quality_on_a_tree_without_endpoint_skips(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from provisioner.cli import main
    from tests.conftest import make_profile

    profile = make_profile(tmp_path)
    result = CliRunner().invoke(main, ["verify", str(profile), "--root", str(tmp_path / "tree"), "--only",
                                       "quality", "--json"])
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["hosts"][0]["checks"]
    assert checks == [{"id": "quality", "status": "skip", "observed": None, "expected": None,
                       "hint": "--root: a tree serves nothing; give --endpoint URL to check one"}]


# -- the real llama-server ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Peaked:
    vocab: Path
    directory: Path

    def write(self, name: str, *, quant: str = "F32") -> Path:
        from gguf import GGMLQuantizationType

        from tests.support.tinymodel import PEAKED, write_tiny_model

        shape = PEAKED if quant == "F32" else dataclasses.replace(PEAKED, layer_type=GGMLQuantizationType.Q8_0)
        return write_tiny_model(self.vocab, self.directory / name, name="tiny-qwen2-peaked", shape=shape)


@pytest.fixture(scope="module")
def peaked(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Peaked:
    vocab = llama_server_binary.parents[6] / "models" / "ggml-vocab-qwen2.gguf"
    return Peaked(vocab, tmp_path_factory.mktemp("peaked"))


@pytest.fixture(scope="module")
def peaked_server(llama_server_binary: Path, peaked: Peaked, tiny_catalog: None,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    model = peaked.write("tiny-qwen2-peaked.gguf")
    served = start_rendered(tmp_path_factory.mktemp("served"), llama_server_binary, model, **PEAKED_PATCH)
    try:
        yield served, model
    finally:
        stop(served)


def run_quality(directory: Path, model: Path, served: Served, state: Path, **patch: object) -> dict[str, Check]:
    """`verify --only quality --no-needle` with the profile the server runs, the state in ``state``."""
    from provisioner.render.pipeline import build

    directory.mkdir(parents=True, exist_ok=True)
    port = int(served.base_url.rsplit(":", 1)[1])
    built = build(tiny_profile(directory, model, port, **{**PEAKED_PATCH, **patch}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_API_KEY", API_KEY)
        checks = verify_target(built, LocalTransport(state_dir=str(state)),
                               VerifyOptions(only=frozenset({"quality"}), endpoint=served.base_url, needle=False))
    return by_id(checks)


def mean_kld(check: Check) -> float:
    found = re.search(r"mean KLD ([0-9.]+)", check.observed or "")
    assert found, check
    return float(found.group(1))


@pytest.mark.slow
def test_baseline_is_recorded_then_stable_over_five_runs(peaked_server: tuple[Served, Path], tmp_path: Path) -> None:
    served, model = peaked_server
    state = tmp_path / "state"
    first = run_quality(tmp_path / "p", model, served, state)
    assert (first["quality.baseline"].observed or "").startswith("recorded: the baseline of"), first["quality.baseline"]
    assert first["quality.fingerprint"].status == "skip"
    recorded = parse_fingerprint((state / "quality/llm-server.fingerprint.json").read_text(), "state")
    assert recorded.api == "llama.cpp-completion" and recorded.setup["kv_cache_k"] == "f16"
    assert recorded.setup["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert recorded.setup["engine_build"]  # what llama-server's /props says it is
    assert [p.id for p in recorded.prompts] == ["coriolanus", "bisect", "psf-license"]
    assert all(len(p.generated) == limits().tokens for p in recorded.prompts)
    # the variant's point: a clearly peaked next-token distribution (flat logits would give ~1/151936)
    top1 = sorted(math.exp(p.top[0][1]) for pr in recorded.prompts for p in pr.generated if p.top)
    assert top1[len(top1) // 2] > 0.2
    klds = []
    for _ in range(5):
        again = run_quality(tmp_path / "p", model, served, state)
        assert again["quality.fingerprint"].status == "pass", again["quality.fingerprint"]
        assert again["quality.tokenizer"].status == "pass"
        assert (again["quality.baseline"].observed or "").startswith("kept")
        klds.append(mean_kld(again["quality.fingerprint"]))
    assert max(klds) <= limits().mean_kld_fail, klds


@pytest.mark.slow
def test_a_q4_0_k_cache_fails_and_is_named_then_passes_restored(
        llama_server_binary: Path, peaked_server: tuple[Served, Path], tmp_path: Path) -> None:
    served, model = peaked_server
    state = tmp_path / "state"
    run_quality(tmp_path / "p", model, served, state)  # the baseline, f16 K and V
    kv = {"model.kv_cache": "q4_0", "model.kv_cache_v": "f16"}
    (tmp_path / "q4").mkdir()
    changed = start_rendered(tmp_path / "q4", llama_server_binary, model, **{**PEAKED_PATCH, **kv})
    try:
        assert "--cache-type-k q4_0" in next((tmp_path / "q4").glob("*-run.sh")).read_text()
        checks = run_quality(tmp_path / "p", model, changed, state, **kv)
    finally:
        stop(changed)
    fp = checks["quality.fingerprint"]
    assert fp.status == "fail", fp
    assert mean_kld(fp) > limits().mean_kld_fail
    assert "KV cache type (K): f16 -> q4_0" in (fp.hint or "") and "--rebaseline" in (fp.hint or "")
    assert (checks["quality.baseline"].observed or "").startswith("kept")  # a failing run changes no baseline
    restored = run_quality(tmp_path / "p", model, served, state)
    assert restored["quality.fingerprint"].status == "pass", restored["quality.fingerprint"]


@pytest.mark.slow
def test_another_quant_under_the_same_name_fails_and_is_named(
        llama_server_binary: Path, peaked: Peaked, tiny_catalog: None, tmp_path: Path) -> None:
    model = peaked.write("same-name.gguf")
    first_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    state = tmp_path / "state"

    def serve_and_check(label: str) -> dict[str, Check]:
        (tmp_path / label).mkdir()
        served = start_rendered(tmp_path / label, llama_server_binary, model, **PEAKED_PATCH)
        try:
            return run_quality(tmp_path / "p", model, served, state)
        finally:
            stop(served)

    serve_and_check("f32")  # the baseline
    peaked.write("same-name.gguf", quant="Q8_0")  # same path, same profile quant name, other bytes
    other_sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert other_sha != first_sha
    checks = serve_and_check("q8")
    fp = checks["quality.fingerprint"]
    assert fp.status == "fail", fp
    assert f"model file sha256: {first_sha[:12]} -> {other_sha[:12]}" in (fp.hint or "")
    peaked.write("same-name.gguf")  # the original file again
    assert serve_and_check("f32-again")["quality.fingerprint"].status == "pass"


@pytest.mark.slow
def test_provision_verify_records_in_the_root_state_dir_and_rebaselines(
        peaked_server: tuple[Served, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands a user runs: `verify --only quality` twice, then `--rebaseline`."""
    from click.testing import CliRunner

    from provisioner.cli import main

    served, model = peaked_server
    port = int(served.base_url.rsplit(":", 1)[1])
    profile = tiny_profile(tmp_path, model, port, **PEAKED_PATCH)
    monkeypatch.setenv("LLM_API_KEY", API_KEY)
    tree = tmp_path / "tree"

    def verify(*extra: str) -> dict[str, dict[str, str]]:
        result = CliRunner().invoke(main, ["verify", str(profile), "--root", str(tree), "--endpoint",
                                           served.base_url, "--only", "quality", "--no-needle", "--json", *extra])
        assert result.exit_code == 0, result.output
        return {c["id"]: c for c in json.loads(result.stdout)["hosts"][0]["checks"]}

    first = verify()
    assert first["quality.baseline"]["observed"].startswith("recorded")
    saved = tree / "var/lib/provision/quality/llm-server.fingerprint.json"
    assert parse_fingerprint(saved.read_text(), "saved").host == f"local:{tree.resolve()}"
    second = verify()
    assert second["quality.fingerprint"]["status"] == "pass"
    assert second["quality.baseline"]["observed"].startswith("kept")
    third = verify("--rebaseline")
    assert third["quality.baseline"]["observed"].startswith("recorded") and "replaces" in \
        third["quality.baseline"]["observed"]
    assert (saved.parent / "llm-server.fingerprint.previous.json").is_file()


@pytest.mark.slow
def test_a_reviewed_fingerprint_beside_the_profile_is_compared(
        peaked_server: tuple[Served, Path], tmp_path: Path) -> None:
    served, model = peaked_server
    state = tmp_path / "state"
    run_quality(tmp_path / "p", model, served, state)
    # review the host's baseline into PROFILE.fingerprint.json (tiny_profile writes tiny-cpu.yaml)
    (tmp_path / "p/tiny-cpu.fingerprint.json").write_text((state / "quality/llm-server.fingerprint.json").read_text())
    # and use it as a "reference" too: the same quant against itself costs nothing
    (tmp_path / "p/tiny-cpu.reference.fingerprint.json").write_text(
        (state / "quality/llm-server.fingerprint.json").read_text())
    checks = run_quality(tmp_path / "p", model, served, state)
    assert checks["quality.fingerprint.reviewed"].status == "pass", checks["quality.fingerprint.reviewed"]
    cost = checks["quality.quant_cost"]
    assert cost.status == "pass" and (cost.observed or "").startswith("mean KLD 0.000000")
    assert "LLaMA 3 8B against FP16" in (cost.expected or "")


# -- vLLM's and Ollama's API shapes, on a stand-in ---------------------------------------------

ENGINES = {"vllm": ("rtx-pro-6000-gpt-oss-120b-vllm.yaml", "vllm-completions"),
           "ollama": ("rtx-4090-qwen3-30b-ollama.yaml", "ollama-generate")}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_vllm_and_ollama_fingerprints_compare_and_catch_a_change(engine: str) -> None:
    from provisioner.render.pipeline import build
    from provisioner.verify.canary import Inputs
    from tests.conftest import ROOT
    from tests.support.logprob_standin import LogprobStandin

    profile, api = ENGINES[engine]
    built = build(ROOT / "profiles" / profile)
    spec, placement = built.spec, built.placement

    def run(server: LogprobStandin, setup: dict[str, str], base: Fingerprint | None) -> dict[str, Check]:
        result = quality_checks(spec, placement, server.base_url, None, setup=setup, needle=False,
                                inputs=Inputs(baseline=base), timeout_s=10)
        measured.append(result.fingerprint)
        return by_id(result.checks)

    measured: list[Fingerprint | None] = []
    with LogprobStandin(engine, model=spec.model_id, context=placement.context) as server:
        run(server, {"kv_cache_k": "fp8"}, None)
        base = measured[0]
        assert base is not None and base.api == api and len(base.prompts) == 3
        assert all(len(p.generated) == limits().tokens for p in base.prompts)
        if engine == "vllm":  # prompt_logprobs: every prompt position but the first
            assert all(len(p.prompt_positions) == len(p.prompt_ids) for p in base.prompts)
        same = run(server, {"kv_cache_k": "fp8"}, base)
    assert same["quality.fingerprint"].status == "pass", same["quality.fingerprint"]
    assert mean_kld(same["quality.fingerprint"]) == 0.0
    positions = int(re.search(r"over (\d+) positions", same["quality.fingerprint"].observed or "")[1])  # type: ignore[index]
    assert positions > 3 * limits().tokens if engine == "vllm" else positions == 3 * limits().tokens
    assert same["quality.probe:gsm8k-ducks"].status == "pass"  # the stand-in answers 18 to everything
    with LogprobStandin(engine, model=spec.model_id, context=placement.context, drift=0.5) as drifted:
        changed = run(drifted, {"kv_cache_k": "auto"}, base)
    fp = changed["quality.fingerprint"]
    assert fp.status == "fail" and "KV cache type (K): fp8 -> auto" in (fp.hint or "")


def test_an_ollama_without_logprobs_says_the_fingerprint_is_not_available() -> None:
    from provisioner.render.pipeline import build
    from tests.conftest import ROOT
    from tests.support.logprob_standin import LogprobStandin

    built = build(ROOT / "profiles" / ENGINES["ollama"][0])
    with LogprobStandin("ollama", model=built.spec.model_id, no_logprobs=True) as server:
        result = quality_checks(built.spec, built.placement, server.base_url, None, setup={}, needle=False,
                                timeout_s=10)
    check = by_id(result.checks)["quality.fingerprint"]
    assert check.status == "skip" and "answered /api/generate without logprobs" in (check.hint or "")
    assert result.fingerprint is not None and result.fingerprint.prompts == ()  # the probes are still recorded
    assert len(result.fingerprint.probes) == len(probes().items)
