"""The quality canary against the live server: is the reasoning intact, not just the endpoint?

One ``Check`` per property (the maths is in quality.py, the files in baseline.py):

- quality.fingerprint           the log-probabilities of fixed prompts against the host's
                                baseline: mean and p99 KL divergence, top-1 agreement, the
                                first position where the greedy text diverges; a change past
                                the limits fails with what differs in the setup
- quality.tokenizer             the prompts tokenize as they did for the baseline
- quality.fingerprint.reviewed  the same against PROFILE.fingerprint.json, when there is one
- quality.quant_cost            KL divergence against PROFILE.reference.fingerprint.json (a
                                higher-precision reference for the same model), when there is one
- quality.needle@10%/50%/90%    a fact placed at that depth of a prompt filling the context
                                is recalled
- quality.needle.consistent     the answer about the deepest fact equals the answer when the
                                same fact sits at the end of the prompt
- quality.probe:ID              short problems with exact answers, in the profile's mode,
                                against the expected answer and the baseline's
- quality.baseline              whether this run recorded the baseline (verify_quality)

Every request is temperature 0 with the server's prompt cache off where it has one, so
an unchanged server says the same thing every time.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from provisioner.verify import Check, Status
from provisioner.verify.endpoint import (
    _FILLER,
    NEEDLE_ANSWER_TOKENS,
    NEEDLE_FILL,
    _Answer,
    _check_answers,
    _check_model_id,
    _Client,
    _HttpError,
    _int,
)
from provisioner.verify.quality import (
    Comparison,
    Fingerprint,
    Position,
    ProbeAnswer,
    Prompt,
    PromptPrint,
    compare_positions,
    extract_answer,
    limits,
    logprob_apis,
    normalise_answer,
    probes,
    prompts,
    quant_scale,
    same_answer,
    setup_differences,
)

if TYPE_CHECKING:
    from provisioner.facts import Gathered
    from provisioner.fit import Placement
    from provisioner.pipeline import Built
    from provisioner.resolve import Spec
    from provisioner.transport import Transport

SEED = 1234
ANSWER_CHARS = 200  # a probe's answer as recorded
NEEDLE_DEPTHS = (0.10, 0.50, 0.90)  # share of the served context before each fact
# one fact per depth, deepest first: distinct doors and passphrases so each answer is about one of them
NEEDLES = (("north", "AMBER-FALCON-2917"), ("east", "COPPER-LYNX-5083"), ("south", "SILVER-ORCA-4469"))
CHECK_IDS = ("quality.fingerprint", "quality.tokenizer", "quality.fingerprint.reviewed", "quality.quant_cost",
             *(f"quality.needle@{d:.0%}" for d in NEEDLE_DEPTHS), "quality.needle.consistent")


def _fact(door: str, key: str) -> str:
    return f"The passphrase for the {door} door is {key}."


def _question(door: str) -> str:
    return (f"What is the passphrase for the {door} door, as stated earlier in this message? "
            "Answer with the passphrase only.")


# -- requests ----------------------------------------------------------------------------------

def _chat(client: _Client, engine: str, model: str, prompt: str, max_tokens: int, *, thinking: bool,
          cache_prompt: bool = False) -> _Answer:
    import time

    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": SEED,
                            "stream": False}
    if engine in ("llama.cpp", "vllm"):
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    if engine == "llama.cpp":
        body["cache_prompt"] = cache_prompt
        body["top_k"] = 1
    if engine == "ollama":
        # Ollama 0.33 openai/openai.go thinkFromReasoningEffort: "none" turns thinking off
        body["reasoning_effort"] = "medium" if thinking else "none"
    start = time.monotonic()
    data = client.post("/v1/chat/completions", body)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = data.get("usage") or {}
    return _Answer(content=str(message.get("content") or ""),
                   reasoning=str(message.get("reasoning_content") or message.get("reasoning") or ""),
                   prompt_tokens=_int(usage.get("prompt_tokens")),
                   completion_tokens=_int(usage.get("completion_tokens")),
                   timings=data.get("timings") or {}, seconds=time.monotonic() - start)


class _LogprobApi(Protocol):
    name: str

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        """The prompt's fingerprint; None when it does not fit the served context."""

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        """The server's positions after exactly the baseline's tokens: generated, prompt."""


class _NotAvailable(Exception):
    pass


@dataclass
class _LlamaCpp:
    """llama-server /completion (logprob_api.yaml: llama.cpp-completion). Request fields from
    tools/server/server-schema.cpp, answer fields from tools/server/server-task.cpp
    (to_json_non_oaicompat, probs_vector_to_json), /tokenize from server-context.cpp, all at
    llama.cpp b11312; n_probs are the softmax of the raw logits (populate_token_probs)."""

    client: _Client
    context: int
    realign: int  # divergences to continue past, per prompt
    chunk: int  # tokens per request after a divergence
    name: str = "llama.cpp-completion"

    def _tokenize(self, text: str) -> tuple[int, ...]:
        data = self.client.post("/tokenize", {"content": text, "add_special": True})
        return tuple(int(t) for t in data.get("tokens") or [])

    def _complete(self, ids: Sequence[int], n: int, k: int) -> list[Position]:
        body = {"prompt": list(ids), "n_predict": n, "temperature": 0.0, "top_k": 1, "seed": SEED,
                "n_probs": k, "cache_prompt": False, "ignore_eos": True, "return_tokens": True, "stream": False}
        data = self.client.post("/completion", body)
        tokens = [int(t) for t in data.get("tokens") or []]
        out = [Position(token=t) for t in tokens]
        # Entries skip tokens that end inside a UTF-8 character (server-context.cpp process_token):
        # each entry belongs to the next generated token with its id.
        j = 0
        for entry in data.get("completion_probabilities") or []:
            tok = int(entry["id"])
            while j < len(tokens) and tokens[j] != tok:
                j += 1
            if j == len(tokens):
                break
            top = tuple((int(t["id"]), round(float(t["logprob"]), 6)) for t in entry.get("top_logprobs") or [])
            out[j] = Position(token=tok, top=top or None)
            j += 1
        return out

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        ids = self._tokenize(prompt.text)
        if len(ids) + tokens > self.context:
            return None
        return PromptPrint(id=prompt.id, sha256=prompt.sha256, prompt_ids=ids,
                           generated=tuple(self._complete(ids, tokens, k)))

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        n = len(base.generated)
        out: list[Position | None] = [None] * n
        start, divergences = 0, 0
        first: list[Position] | None = (list(measured.generated) if measured is not None
                                        and measured.prompt_ids == base.prompt_ids else None)
        while start < n:
            if first is not None:
                got, first = first, None  # the same request was just made
            else:
                # after a divergence, continue from exactly the baseline's tokens, a short stretch at
                # a time: what follows the next divergence would be thrown away
                prefix = base.prompt_ids + tuple(int(p.token) for p in base.generated[:start])
                got = self._complete(prefix, min(self.chunk, n - start), k)
            if not got:
                break
            diverged = None
            for j, pos in enumerate(got[:n - start]):
                out[start + j] = pos
                if pos.token != base.generated[start + j].token:
                    diverged = start + j
                    break
            if diverged is None:
                start += len(got)
                continue
            divergences += 1
            if divergences > self.realign:
                break
            start = diverged + 1
        return out, []


@dataclass
class _Vllm:
    """vLLM /v1/completions with prompt_logprobs (logprob_api.yaml: vllm-completions). Fields from
    vllm/entrypoints/openai/protocol.py at v0.11.0 (CompletionRequest, CompletionLogProbs,
    CompletionResponseChoice, TokenizeCompletionRequest)."""

    client: _Client
    model: str
    context: int
    name: str = "vllm-completions"

    def _request(self, ids: Sequence[int], n: int, k: int) -> dict[str, Any]:
        body = {"model": self.model, "prompt": list(ids), "max_tokens": n, "temperature": 0.0, "seed": SEED,
                "logprobs": k, "prompt_logprobs": k, "ignore_eos": True, "return_tokens_as_token_ids": True,
                "return_token_ids": True}
        choice: dict[str, Any] = (self.client.post("/v1/completions", body).get("choices") or [{}])[0]
        return choice

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        data = self.client.post("/tokenize", {"model": self.model, "prompt": prompt.text})
        ids = tuple(int(t) for t in data.get("tokens") or [])
        if len(ids) + tokens > self.context:
            return None
        choice = self._request(ids, tokens, k)
        generated = tuple(int(t) for t in choice.get("token_ids") or [])
        tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
        gen = tuple(Position(token=t, top=_vllm_top(tops[i] if i < len(tops) else None, k))
                    for i, t in enumerate(generated))
        prompt_positions = _vllm_prompt_positions(choice.get("prompt_logprobs") or [], k)
        return PromptPrint(id=prompt.id, sha256=prompt.sha256, prompt_ids=ids, generated=gen,
                           prompt_positions=tuple(p or Position(token=-1) for p in prompt_positions))

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        # the baseline's prompt and continuation as one prompt: the distribution at every
        # position after exactly the baseline's tokens, in one request
        ids = base.prompt_ids + tuple(int(p.token) for p in base.generated)
        positions = _vllm_prompt_positions(self._request(ids, 1, k).get("prompt_logprobs") or [], k)
        cut = len(base.prompt_ids)
        return positions[cut:cut + len(base.generated)], positions[:cut]


def _vllm_top(entry: Any, k: int) -> tuple[tuple[int | str, float], ...] | None:
    """{"token_id:N": logprob} (return_tokens_as_token_ids) -> top-k, most likely first."""
    if not isinstance(entry, dict) or not entry:
        return None
    pairs = [(_vllm_token(name), float(lp)) for name, lp in entry.items()]
    return tuple((t, round(lp, 6)) for t, lp in sorted(pairs, key=lambda p: -p[1])[:k])


def _vllm_token(name: str) -> int | str:
    return int(name.split(":", 1)[1]) if name.startswith("token_id:") else name


def _vllm_prompt_positions(raw: Sequence[Any], k: int) -> list[Position | None]:
    """prompt_logprobs: per prompt position None or {token id: {logprob, rank, decoded_token}}."""
    out: list[Position | None] = []
    for entry in raw:
        if not isinstance(entry, dict) or not entry:
            out.append(None)
            continue
        pairs = sorted(((int(t), float(v.get("logprob", float("-inf")))) for t, v in entry.items()),
                       key=lambda p: -p[1])[:k]
        top = tuple((t, round(lp, 6)) for t, lp in pairs)
        out.append(Position(token=top[0][0], top=top))
    return out


@dataclass
class _Ollama:
    """Ollama /api/generate with logprobs (logprob_api.yaml: ollama-generate). Fields from
    api/types.go (GenerateRequest, GenerateResponse, Logprob, TokenLogprob) read at v0.33.0-rc2.
    Ollama takes no token ids, so positions after the first divergence are not compared."""

    client: _Client
    model: str
    name: str = "ollama-generate"

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        body = {"model": self.model, "prompt": prompt.text, "raw": True, "stream": False, "logprobs": True,
                "top_logprobs": k, "options": {"temperature": 0.0, "top_k": 1, "seed": SEED, "num_predict": tokens}}
        data = self.client.post("/api/generate", body)
        entries = data.get("logprobs") or []
        if not entries:
            raise _NotAvailable("this Ollama answered /api/generate without logprobs")
        gen = tuple(Position(token=str(e.get("token", "")),
                             top=tuple((str(t.get("token", "")), round(float(t["logprob"]), 6))
                                       for t in e.get("top_logprobs") or []) or None)
                    for e in entries)
        return PromptPrint(id=prompt.id, sha256=prompt.sha256, generated=gen)

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        got = list(measured.generated) if measured is not None else []
        out: list[Position | None] = []
        for i, b in enumerate(base.generated):
            pos = got[i] if i < len(got) else None
            out.append(pos)
            if pos is None or pos.token != b.token:
                out += [None] * (len(base.generated) - i - 1)
                break
        return out, []


def _api_for(spec: Spec, client: _Client, model: str, context: int) -> _LogprobApi | str:
    runtime = spec.profile.runtime
    entry = logprob_apis().get(runtime.engine, {}).get(runtime.version)
    if entry is None:
        checked = ", ".join(logprob_apis().get(runtime.engine, {})) or "none"
        return (f"the log-probability API of {runtime.engine} {runtime.version} was not checked "
                f"(checked: {checked}; provisioner/verify/canary_data/logprob_api.yaml)")
    if entry["api"] == "llama.cpp-completion":
        return _LlamaCpp(client, context, limits().realign, limits().realign_chunk)
    if entry["api"] == "vllm-completions":
        return _Vllm(client, model, context)
    return _Ollama(client, model)


def _server_build(client: _Client, engine: str) -> str | None:
    """The engine's own version string (llama.cpp /props build_info, vLLM /version, Ollama /api/version)."""
    path, key = {"llama.cpp": ("/props", "build_info"), "vllm": ("/version", "version"),
                 "ollama": ("/api/version", "version")}[engine]
    try:
        data = client.get(path)
    except _HttpError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return str(value) if value else None


# -- the run -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    """What the canary compares with (each None when absent; ``*_error``: unreadable)."""

    baseline: Fingerprint | None = None
    baseline_error: str | None = None
    reviewed: Fingerprint | None = None
    reviewed_error: str | None = None
    reviewed_where: str = ""
    reference: Fingerprint | None = None
    reference_error: str | None = None
    reference_where: str = ""


@dataclass(frozen=True)
class Result:
    checks: list[Check]
    fingerprint: Fingerprint | None  # what this run measured (None: the server did not answer)


def quality_checks(spec: Spec, placement: Placement, base_url: str, api_key: str | None, *,
                   setup: dict[str, str], inputs: Inputs = Inputs(), needle: bool = True,
                   host: str = "", generation: int | None = None, timeout_s: float = 120.0) -> Result:
    """Measure the server at ``base_url`` and compare it with ``inputs``; one Check per property."""
    client = _Client(base_url, api_key, timeout_s)
    answers, served = _check_answers(client, api_key)
    if answers.status == "fail":
        why = "the endpoint does not answer (see endpoint.answers)"
        return Result([Check(cid, "skip", hint=why) for cid in CHECK_IDS]
                      + [Check(f"quality.probe:{p.id}", "skip", hint=why) for p in probes().items], None)
    _, model = _check_model_id(spec, served)
    engine = spec.profile.runtime.engine
    build = _server_build(client, engine)
    setup = {**setup, **({"engine_build": build} if build else {})}
    lim = limits()
    api = _api_for(spec, client, model, placement.context)
    checks: list[Check] = []

    measured: dict[str, PromptPrint] = {}
    measure_error: str | None = api if isinstance(api, str) else None
    broken = False  # the server failed a request the version's API defines: a fail, not a skip
    skipped: list[str] = []
    if not isinstance(api, str):
        try:
            for prompt in prompts():
                printed = api.measure(prompt, lim.tokens, lim.top_k)
                if printed is None:
                    skipped.append(prompt.id)
                else:
                    measured[prompt.id] = printed
        except _NotAvailable as exc:
            measure_error = str(exc)
        except _HttpError as exc:
            measure_error, broken = f"the fingerprint request failed: {exc.message}", True
        except (KeyError, TypeError, ValueError) as exc:
            measure_error, broken = f"the server's log-probabilities were not in the expected shape: {exc!r}", True
        if measure_error is not None:
            measured.clear()  # half a fingerprint is none: it must not become a baseline

    probe_answers, probe_checks = _probes(client, spec, model, inputs.baseline, setup)
    fingerprint = Fingerprint(
        taken=datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(), host=host,
        generation=generation, api=api.name if not isinstance(api, str) else "none",
        top_k=lim.top_k, tokens=lim.tokens, setup=setup,
        prompts=tuple(measured[p.id] for p in prompts() if p.id in measured), probes=tuple(probe_answers))

    def compare(base: Fingerprint) -> Comparison | str:
        return _compare(api, base, measured, measure_error)

    if broken:
        checks += [Check("quality.fingerprint", "fail", measure_error, f"log-probabilities from {engine} "
                         f"{spec.profile.runtime.version} ({fingerprint.api})",
                         "the server failed the fingerprint's request: see its log"),
                   Check("quality.tokenizer", "skip", hint="no fingerprint")]
    else:
        checks += _baseline_checks(inputs, fingerprint, compare, skipped, measure_error)
    checks.append(_reviewed_check(inputs, fingerprint, compare))
    checks.append(_quant_cost_check(inputs, compare))
    checks += _needles(client, spec, model, placement) if needle else \
        [Check(f"quality.needle@{d:.0%}", "skip", hint="disabled by --no-needle") for d in NEEDLE_DEPTHS] \
        + [Check("quality.needle.consistent", "skip", hint="disabled by --no-needle")]
    checks += probe_checks
    return Result(checks, fingerprint)


def _compare(api: _LogprobApi | str, base: Fingerprint, measured: dict[str, PromptPrint],
             measure_error: str | None) -> Comparison | str:
    """Position by position against ``base``; a string says why it cannot be compared."""
    if measure_error is not None:
        return measure_error
    assert not isinstance(api, str)
    if base.api != api.name:
        return f"the baseline was read through {base.api}, this server through {api.name}"
    bundled = {p.id: p.sha256 for p in prompts()}
    usable = [p for p in base.prompts if bundled.get(p.id) == p.sha256 and p.id in measured]
    if not usable:
        return "no prompt of the baseline is among this provision's bundled prompts at the same text"
    compared = []
    try:
        for prompt in usable:
            generated, prompt_positions = api.aligned(prompt, base.top_k, measured.get(prompt.id))
            compared.append(compare_positions(prompt.id, prompt.generated, generated))
            if prompt.prompt_positions and prompt_positions:
                compared.append(compare_positions(f"{prompt.id}:prompt", prompt.prompt_positions, prompt_positions,
                                                  generated=False))
    except _HttpError as exc:
        return f"the comparison request failed: {exc.message}"
    except (KeyError, TypeError, ValueError) as exc:
        return f"the server's log-probabilities were not in the expected shape: {exc!r}"
    return Comparison(tuple(compared))


def _summary(c: Comparison) -> str:
    prompts_seen = len({p.prompt.split(":")[0] for p in c.prompts})
    diverged = c.divergences
    return (f"mean KLD {c.mean_kld:.6f}, p99 {c.p99_kld:.6f}, top-1 agreement {c.top1_agreement:.1%} over "
            f"{c.positions} positions ({prompts_seen} prompts); greedy text "
            + (f"diverges at {', '.join(diverged)}" if diverged else "identical"))


def _within(c: Comparison) -> list[str]:
    """What is past the limits (empty: within the noise of a fixed setup)."""
    lim = limits()
    out = []
    if c.mean_kld > lim.mean_kld_fail:
        out.append(f"mean KLD {c.mean_kld:.6f} > {lim.mean_kld_fail}")
    if c.p99_kld > lim.p99_kld_fail:
        out.append(f"p99 KLD {c.p99_kld:.6f} > {lim.p99_kld_fail}")
    if c.top1_agreement < lim.top1_agreement_fail:
        out.append(f"top-1 agreement {c.top1_agreement:.1%} < {lim.top1_agreement_fail:.0%}")
    return out


def _expected_limits(base: Fingerprint, what: str) -> str:
    lim = limits()
    return (f"mean KLD <= {lim.mean_kld_fail}, p99 <= {lim.p99_kld_fail}, top-1 agreement >= "
            f"{lim.top1_agreement_fail:.0%} against {what} of {base.taken}"
            + (f" (generation {base.generation})" if base.generation is not None else ""))


def _change_hint(base: Fingerprint, now: Fingerprint, accept: str) -> str:
    diffs = setup_differences(base.setup, now.setup)
    if diffs:
        cause = "since the baseline: " + "; ".join(diffs)
    else:
        cause = ("nothing provision records changed (engine and its build, model file sha256, KV types, offload "
                 "split, flags, driver): look outside the profile, e.g. a library under the engine, the GPU, or "
                 "a kernel bug")
    return f"the server's numbers changed {cause}. {accept}"


def _baseline_checks(inputs: Inputs, now: Fingerprint, compare: Callable[[Fingerprint], Comparison | str],
                     skipped: list[str], measure_error: str | None) -> list[Check]:
    cid = "quality.fingerprint"
    left_out = f"; left out (too long for the context): {', '.join(skipped)}" if skipped else ""
    if inputs.baseline_error is not None:
        return [Check(cid, "fail", inputs.baseline_error, "a readable baseline",
                      "the host's baseline is damaged: `provision verify --rebaseline` records a new one"),
                Check("quality.tokenizer", "skip", hint="no readable baseline")]
    base = inputs.baseline
    if base is None:
        if measure_error is not None or not now.prompts:
            reason = measure_error or "no prompt fits the served context"
            return [Check(cid, "skip", hint=f"no fingerprint: {reason}{left_out}"),
                    Check("quality.tokenizer", "skip", hint="no fingerprint")]
        measured = sum(len(p.generated) for p in now.prompts)
        return [Check(cid, "skip", f"measured {measured} positions over {len(now.prompts)} prompts{left_out}",
                      hint="no baseline yet: a verify that passes records this one (see quality.baseline)"),
                Check("quality.tokenizer", "skip", hint="no baseline yet")]
    accept = "If the change is intended: `provision verify --rebaseline` records the new state."
    got = compare(base)
    if isinstance(got, str):
        checks = [_not_compared(cid, base, now, got, _expected_limits(base, "the host's baseline"), accept,
                                "`provision verify --rebaseline` records a comparable baseline")]
    else:
        past = _within(got)
        observed = _summary(got) + left_out
        if past:
            checks = [Check(cid, "fail", observed + "; past the limits: " + "; ".join(past),
                            _expected_limits(base, "the host's baseline"), _change_hint(base, now, accept))]
        else:
            checks = [Check(cid, "pass", observed, _expected_limits(base, "the host's baseline"))]
    checks.append(_tokenizer_check(base, now))
    return checks


def _not_compared(cid: str, base: Fingerprint, now: Fingerprint, why: str, expected: str, accept: str,
                  remedy: str) -> Check:
    """A fingerprint that cannot be compared: a fail when the setup or the API changed (that
    is the change), else a skip (e.g. this engine version gives no log-probabilities)."""
    if setup_differences(base.setup, now.setup) or now.api not in (base.api, "none"):
        return Check(cid, "fail", f"not compared: {why}", expected, _change_hint(base, now, accept))
    return Check(cid, "skip", f"not compared: {why}", expected, f"cannot compare: {why}. {remedy}")


def _tokenizer_check(base: Fingerprint, now: Fingerprint) -> Check:
    pairs = [(b, now.prompt(b.id)) for b in base.prompts if b.prompt_ids]
    pairs = [(b, n) for b, n in pairs if n is not None and n.sha256 == b.sha256 and n.prompt_ids]
    if not pairs:
        return Check("quality.tokenizer", "skip", hint="no prompt tokenization to compare (Ollama does not give one)")
    changed = [b.id for b, n in pairs if n is not None and n.prompt_ids != b.prompt_ids]
    expected = "each prompt tokenizes to the baseline's token ids"
    if changed:
        first = changed[0]
        b_ids = next(b.prompt_ids for b, _ in pairs if b.id == first)
        n_ids = next(n.prompt_ids for b, n in pairs if b.id == first and n is not None)
        at = next((i for i, (x, y) in enumerate(zip(b_ids, n_ids, strict=False)) if x != y),
                  min(len(b_ids), len(n_ids)))
        return Check("quality.tokenizer", "fail",
                     f"{', '.join(changed)} tokenize differently ({first}: {len(b_ids)} -> {len(n_ids)} tokens, "
                     f"first difference at token {at})", expected,
                     "the tokenizer changed: a different model file or engine build (GGUF tokenizer metadata, "
                     "pre-tokenizer); prompts no longer mean the same token ids")
    return Check("quality.tokenizer", "pass", f"{len(pairs)} prompts tokenize as at the baseline", expected)


def _reviewed_check(inputs: Inputs, now: Fingerprint, compare: Callable[[Fingerprint], Comparison | str]) -> Check:
    cid = "quality.fingerprint.reviewed"
    if inputs.reviewed_error is not None:
        return Check(cid, "fail", inputs.reviewed_error, "a readable fingerprint file",
                     "fix or remove the file beside the profile")
    base = inputs.reviewed
    if base is None:
        return Check(cid, "skip", hint=f"no reviewed fingerprint ({inputs.reviewed_where or 'PROFILE.fingerprint.json'}"
                     "; a checked copy of a host's baseline, see docs/verify.md)")
    accept = f"If the change is intended, review a new fingerprint into {inputs.reviewed_where}."
    got = compare(base)
    expected = _expected_limits(base, "the reviewed fingerprint")
    if isinstance(got, str):
        return _not_compared(cid, base, now, got, expected, accept, f"review a comparable one into "
                             f"{inputs.reviewed_where}")
    past = _within(got)
    if past:
        return Check(cid, "fail", _summary(got) + "; past the limits: " + "; ".join(past), expected,
                     _change_hint(base, now, accept))
    return Check(cid, "pass", _summary(got), expected)


def _quant_cost_check(inputs: Inputs, compare: Callable[[Fingerprint], Comparison | str]) -> Check:
    cid = "quality.quant_cost"
    if inputs.reference_error is not None:
        return Check(cid, "fail", inputs.reference_error, "a readable fingerprint file",
                     "fix or remove the reference beside the profile")
    ref = inputs.reference
    if ref is None:
        return Check(cid, "skip", hint="no higher-precision reference "
                     f"({inputs.reference_where or 'PROFILE.reference.fingerprint.json'}; see docs/verify.md)")
    got = compare(ref)
    what = f"{ref.setup.get('model', '?')} {ref.setup.get('quant', '?')}"
    if isinstance(got, str):
        return Check(cid, "skip", hint=f"cannot compare with the reference ({what}): {got}")
    scale_model, scale, warn_above = quant_scale()
    near = ", ".join(f"{q} {v:g}" for q, v in scale.items())
    observed = (f"mean KLD {got.mean_kld:.6f} (p99 {got.p99_kld:.6f}, top-1 agreement {got.top1_agreement:.1%}) "
                f"against {what} over {got.positions} positions")
    expected = f"for scale, {scale_model} against FP16: {near}"
    if got.mean_kld > scale[warn_above]:
        return Check(cid, "warn", observed, expected,
                     f"more loss than {warn_above} costs {scale_model}: a broken quant or a mismatched reference")
    return Check(cid, "pass", observed, expected)


# -- long-context fidelity ---------------------------------------------------------------------

@dataclass
class _NeedlePrompts:
    blocks: int
    at: tuple[int, ...]  # block index of each fact, deepest first
    planned: int

    def text(self, question_door: str, *, deepest_at_end: bool = False) -> str:
        lines: list[str] = []
        facts: dict[int, list[str]] = {}
        for i, block in enumerate(self.at):
            if not (deepest_at_end and i == 0):
                facts.setdefault(block, []).append(_fact(*NEEDLES[i]))
        for b in range(self.blocks + 1):
            lines += facts.get(b, [])
            if b < self.blocks:
                lines.append(_FILLER[b % len(_FILLER)])
        if deepest_at_end:
            lines.append(_fact(*NEEDLES[0]))
        lines.append(_question(question_door))
        return "\n".join(lines)


def _needles(client: _Client, spec: Spec, model: str, placement: Placement) -> list[Check]:
    engine = spec.profile.runtime.engine
    context = placement.context
    ids = [f"quality.needle@{d:.0%}" for d in NEEDLE_DEPTHS]

    def ask(prompt: str, *, cached: bool) -> _Answer:
        return _chat(client, engine, model, prompt, NEEDLE_ANSWER_TOKENS, thinking=False, cache_prompt=cached)

    try:
        empty = _NeedlePrompts(0, (0, 0, 0), 0)
        base = ask(empty.text(NEEDLES[0][0]), cached=False)
        probe_blocks = 4 * len(_FILLER)
        probe = ask(_NeedlePrompts(probe_blocks, (0, 0, 0), 0).text(NEEDLES[0][0]), cached=False)
    except _HttpError as exc:
        return [Check(i, "fail", f"calibration request failed: {exc.message}", "the fact recalled",
                      "the server refused a short prompt: see its log") for i in ids] + \
            [Check("quality.needle.consistent", "skip", hint="the calibration requests failed")]
    if base.prompt_tokens is None or probe.prompt_tokens is None or probe.prompt_tokens <= base.prompt_tokens:
        why = "the server reports no usage.prompt_tokens: cannot size a prompt to the context"
        return [Check(i, "skip", hint=why) for i in [*ids, "quality.needle.consistent"]]
    per_block = (probe.prompt_tokens - base.prompt_tokens) / probe_blocks
    target = int(context * NEEDLE_FILL) - NEEDLE_ANSWER_TOKENS
    blocks = max(len(NEEDLES), int((target - base.prompt_tokens) / per_block))
    at = tuple(min(blocks, max(0, round((d * context - base.prompt_tokens / 2) / per_block))) for d in NEEDLE_DEPTHS)
    layout = _NeedlePrompts(blocks, at, base.prompt_tokens + int(blocks * per_block))
    checks: list[Check] = []
    answers: dict[str, str] = {}
    for (door, key), depth, cid in zip(NEEDLES, NEEDLE_DEPTHS, ids, strict=True):
        expected = f"{key} recalled from {depth:.0%} into a ~{layout.planned}-token prompt ({context}-token context)"
        try:
            answer = ask(layout.text(door), cached=True)  # one long prefix, three questions: cache it
        except _HttpError as exc:
            checks.append(Check(cid, "fail", f"~{layout.planned}-token prompt refused: {exc.message}", expected,
                                "the server refused a prompt that fits the profile's context"))
            continue
        answers[door] = answer.content
        checks.append(_recall_verdict(cid, answer, key, layout.planned, expected))
    checks.append(_consistency(ask, layout, answers))
    return checks


def _said(text: str) -> str:
    said = text.strip().replace("\n", " ")
    return said if len(said) <= 60 else said[:57] + "..."


def _has_key(text: str, key: str) -> bool:
    return key.lower() in re.sub(r"\s+", "", text.lower())


def _recall_verdict(cid: str, answer: _Answer, key: str, planned: int, expected: str) -> Check:
    got = answer.prompt_tokens
    if got is not None and got < planned * 0.9:
        return Check(cid, "fail", f"the server processed {got} of ~{planned} prompt tokens; answered "
                     f"{_said(answer.content)!r}", expected,
                     "the prompt was truncated (its start is lost): the served context is smaller than the "
                     "profile's (Ollama: num_ctx / OLLAMA_CONTEXT_LENGTH)")
    if _has_key(answer.content, key):
        return Check(cid, "pass", f"recalled from a {got or planned}-token prompt", expected)
    return Check(cid, "fail", f"not recalled from a {got or planned}-token prompt; answered {_said(answer.content)!r}",
                 expected, "a fact at this depth was lost: context shift or truncation (llama.cpp: "
                 "--no-context-shift, --ctx-size), a broken long-range KV/rope setup, or a model too weak "
                 "to recall it (--no-needle skips the needle checks)")


def _consistency(ask: Callable[..., _Answer], layout: _NeedlePrompts, answers: dict[str, str]) -> Check:
    cid = "quality.needle.consistent"
    door, key = NEEDLES[0]
    deep = answers.get(door)
    expected = f"the same answer about the {door} door at {NEEDLE_DEPTHS[0]:.0%} depth as with it at the prompt's end"
    if deep is None:
        return Check(cid, "skip", hint=f"the {NEEDLE_DEPTHS[0]:.0%} needle was not answered")
    try:
        near_end = ask(layout.text(door, deepest_at_end=True), cached=False).content
    except _HttpError as exc:
        return Check(cid, "fail", f"the near-end request failed: {exc.message}", expected,
                     "the server refused a prompt that fits the profile's context")
    both_know = _has_key(deep, key) and _has_key(near_end, key)
    if both_know or (normalise_answer(deep) == normalise_answer(near_end) and deep.strip()):
        return Check(cid, "pass", f"both answered {_said(deep)!r}", expected)
    return Check(cid, "fail", f"at {NEEDLE_DEPTHS[0]:.0%}: {_said(deep)!r}; at the end: {_said(near_end)!r}", expected,
                 "the start of a long prompt is not seen like its end: context shift (llama.cpp drops the "
                 "prompt's start), truncation, sliding-window or rope scaling misconfigured")


# -- reasoning probes --------------------------------------------------------------------------

def _probes(client: _Client, spec: Spec, model: str, baseline: Fingerprint | None,
            setup: dict[str, str]) -> tuple[list[ProbeAnswer], list[Check]]:
    bundle = probes()
    mode = spec.profile.model.mode
    thinking = mode == "thinking"
    budget = bundle.max_tokens[mode]
    engine = spec.profile.runtime.engine
    answers: list[ProbeAnswer] = []
    checks: list[Check] = []
    for probe in bundle.items:
        cid = f"quality.probe:{probe.id}"
        expected = f"{probe.answer!r} ({mode}, temperature 0)"
        try:
            reply = _chat(client, engine, model, f"{bundle.instruction}\n\n{probe.question}", budget,
                          thinking=thinking)
        except _HttpError as exc:
            checks.append(Check(cid, "fail", exc.message, expected, "the server failed a short request: see its log"))
            continue
        answer = extract_answer(reply.content)
        if answer is not None and len(answer) > ANSWER_CHARS:
            answer = answer[:ANSWER_CHARS]  # no final answer line: the tail of a ramble is not kept whole
        correct = same_answer(answer, probe.answer)
        answers.append(ProbeAnswer(id=probe.id, answer=answer, correct=correct))
        checks.append(_probe_verdict(cid, probe.answer, answer, correct, expected, budget, baseline, setup))
    return answers, checks


def _probe_verdict(cid: str, want: str, answer: str | None, correct: bool, expected: str, budget: int,
                   baseline: Fingerprint | None, setup: dict[str, str]) -> Check:
    said = f"no answer within {budget} tokens" if answer is None else repr(_said(answer))
    before = baseline.probe(cid.split(":", 1)[1]) if baseline is not None else None
    if before is None:
        if correct:
            return Check(cid, "pass", said, expected)
        return Check(cid, "warn", said, expected,
                     "wrong, with no baseline to compare: if the model should solve this, suspect the chat "
                     "template or the quant; a baseline records this answer")
    was = "no answer" if before.answer is None else repr(_said(before.answer))
    unchanged = same_answer(answer, before.answer)
    if correct:
        return Check(cid, "pass", said if unchanged else f"{said} (the baseline answered {was})", expected)
    accept = "If the change is intended: `provision verify --rebaseline`."
    diffs = setup_differences(baseline.setup, setup) if baseline is not None else []
    cause = ("; ".join(diffs) if diffs else "nothing provision records changed")
    if unchanged:
        return Check(cid, "warn", f"{said}, as at the baseline", expected,
                     "wrong at the baseline too: the model's own limit, not a change")
    if before.correct:
        return Check(cid, "fail", f"{said}; the baseline answered {was} (right)", expected,
                     f"the server got worse since the baseline: {cause}. {accept}")
    return Check(cid, "fail", f"{said}; the baseline answered {was}", expected,
                 f"the answer changed since the baseline: {cause}. {accept}")


# -- recording the baseline --------------------------------------------------------------------

def settle(all_checks: Sequence[Check], measured: Fingerprint | None, baseline: Fingerprint | None,
           *, rebaseline: bool, baseline_unreadable: bool = False) -> tuple[Check, bool]:
    """The quality.baseline check, and whether to write ``measured`` as the host's baseline:
    when there is none (or ``rebaseline``) and no check of this verify failed."""
    cid = "quality.baseline"
    if measured is None:
        return Check(cid, "skip", hint="nothing was measured (the endpoint does not answer)"), False
    if baseline is not None and not rebaseline:
        where = f"generation {baseline.generation}, " if baseline.generation is not None else ""
        return Check(cid, "pass", f"kept: the baseline of {baseline.taken} ({where}{baseline.api})",
                     "a baseline from a verify that passed"), False
    failed = [c.id for c in all_checks if c.status == "fail"]
    if failed:
        shown = ", ".join(failed[:4]) + (f" and {len(failed) - 4} more" if len(failed) > 4 else "")
        status: Status = "fail" if rebaseline else "warn"
        return Check(cid, status, f"not recorded: {len(failed)} check(s) failed: {shown}",
                     "a baseline from a verify that passes",
                     "a baseline is only taken from a verify without failures: fix them and run verify again"
                     + (" (the old baseline stays)" if rebaseline and baseline is not None else "")), False
    observed = f"recorded: the baseline of {measured.taken}" + (
        f" (generation {measured.generation})" if measured.generation is not None else "")
    if baseline is not None:
        diffs = setup_differences(baseline.setup, measured.setup)
        observed += f"; replaces the one of {baseline.taken}" + (f" ({'; '.join(diffs)})" if diffs else "")
    elif baseline_unreadable:
        observed += "; replaces an unreadable one"
    return Check(cid, "pass", observed, "a baseline from a verify that passed"), True


# -- one target: the files, the server, the baseline -------------------------------------------

@dataclass
class QualityOptions:
    needle: bool = True
    rebaseline: bool = False
    api_key: str | None = None
    timeout_s: float = 120.0


def verify_quality(built: Built, transport: Transport, url: str, gathered: Gathered | None,
                   earlier: Sequence[Check], options: QualityOptions) -> list[Check]:
    """The quality group on one target: read the baselines, measure, compare, and record the
    host's baseline when this verify passes (``earlier``: the other groups' checks)."""
    from provisioner.verify import baseline as store

    spec = built.spec
    service = spec.profile.service.name
    stored = store.read_baseline(transport, service)
    reviewed = store.read_beside(spec.loaded.path, store.REVIEWED_SUFFIX)
    reference = store.read_beside(spec.loaded.path, store.REFERENCE_SUFFIX)
    inputs = Inputs(baseline=None if options.rebaseline else stored.fingerprint,
                    baseline_error=None if options.rebaseline else stored.error,
                    reviewed=reviewed.fingerprint, reviewed_error=reviewed.error, reviewed_where=reviewed.where,
                    reference=reference.fingerprint, reference_error=reference.error,
                    reference_where=reference.where)
    setup = store.profile_setup(spec, built.placement, gathered)
    result = quality_checks(spec, built.placement, url, options.api_key, setup=setup, inputs=inputs,
                            needle=options.needle, host=transport.name,
                            generation=gathered.last_generation if gathered is not None else None,
                            timeout_s=options.timeout_s)
    verdict, record = settle([*earlier, *result.checks], result.fingerprint, stored.fingerprint,
                             rebaseline=options.rebaseline, baseline_unreadable=stored.error is not None)
    if record and result.fingerprint is not None:
        error = store.write_baseline(transport, service, result.fingerprint)
        if error is not None:
            verdict = Check("quality.baseline", "fail", error, "the baseline written to the state dir",
                            "is the state dir writable? (--become on a remote host)")
    return [*result.checks, verdict]
