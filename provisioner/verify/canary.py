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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisioner.facts.check import Check, Status
from provisioner.verify import baseline as store
from provisioner.verify.client import Client, HttpError
from provisioner.verify.endpoint import (
    check_answers,
    check_model_id,
)
from provisioner.verify.logprobs import LogprobApi, NotAvailable, api_for, server_build
from provisioner.verify.long_context import CHECK_IDS, NEEDLE_DEPTHS, needle_checks, reasoning_probes
from provisioner.verify.quality import (
    Comparison,
    Fingerprint,
    PromptPrint,
    compare_positions,
    limits,
    probes,
    prompts,
    quant_scale,
    setup_differences,
)

if TYPE_CHECKING:
    from provisioner.facts.gather import Gathered
    from provisioner.fit import Placement
    from provisioner.profile.resolve import Spec
    from provisioner.render.pipeline import Built
    from provisioner.transport import Transport


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
    client = Client(base_url, api_key, timeout_s)
    answers, served = check_answers(client, api_key)
    if answers.status == "fail":
        why = "the endpoint does not answer (see endpoint.answers)"
        return Result([Check(cid, "skip", hint=why) for cid in CHECK_IDS]
                      + [Check(f"quality.probe:{p.id}", "skip", hint=why) for p in probes().items], None)
    _, model = check_model_id(spec, served)
    engine = spec.profile.runtime.engine
    build = server_build(client, engine)
    setup = {**setup, **({"engine_build": build} if build else {})}
    lim = limits()
    api = api_for(spec, client, model, placement.context)
    checks: list[Check] = []

    measured, measure_error, broken, skipped = _measure(api, lim.tokens, lim.top_k)

    probe_answers, probe_checks = reasoning_probes(client, spec, model, inputs.baseline, setup)
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
    checks += needle_checks(client, spec, model, placement) if needle else \
        [Check(f"quality.needle@{d:.0%}", "skip", hint="disabled by --no-needle") for d in NEEDLE_DEPTHS] \
        + [Check("quality.needle.consistent", "skip", hint="disabled by --no-needle")]
    checks += probe_checks
    return Result(checks, fingerprint)


def _measure(api: LogprobApi | str, tokens: int, top_k: int) -> tuple[dict[str, PromptPrint], str | None, bool,
                                                                      list[str]]:
    """Every bundled prompt's fingerprint: (by prompt id, why none, the server broke a request
    its API defines (a fail, not a skip), prompts the API could not measure)."""
    measured: dict[str, PromptPrint] = {}
    measure_error: str | None = api if isinstance(api, str) else None
    broken = False
    skipped: list[str] = []
    if isinstance(api, str):
        return measured, measure_error, broken, skipped
    try:
        for prompt in prompts():
            printed = api.measure(prompt, tokens, top_k)
            if printed is None:
                skipped.append(prompt.id)
            else:
                measured[prompt.id] = printed
    except NotAvailable as exc:
        measure_error = str(exc)
    except HttpError as exc:
        measure_error, broken = f"the fingerprint request failed: {exc.message}", True
    except (KeyError, TypeError, ValueError) as exc:
        measure_error, broken = f"the server's log-probabilities were not in the expected shape: {exc!r}", True
    if measure_error is not None:
        measured.clear()  # half a fingerprint is none: it must not become a baseline
    return measured, measure_error, broken, skipped


def _compare(api: LogprobApi | str, base: Fingerprint, measured: dict[str, PromptPrint],
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
    except HttpError as exc:
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
