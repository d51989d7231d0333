"""Long-context fidelity and reasoning probes: facts placed at several depths of a prompt
that fills the served context must be recalled (and the deepest answered as when it sits
at the end), and short problems with exact answers must be solved in the profile's mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisioner.facts.check import Check
from provisioner.verify.client import Answer, Client, HttpError
from provisioner.verify.endpoint import (
    FILLER,
    NEEDLE_ANSWER_TOKENS,
    NEEDLE_FILL,
)
from provisioner.verify.logprobs import chat
from provisioner.verify.quality import (
    Fingerprint,
    ProbeAnswer,
    extract_answer,
    normalise_answer,
    probes,
    same_answer,
    setup_differences,
)

if TYPE_CHECKING:
    from provisioner.fit import Placement
    from provisioner.profile.resolve import Spec


ANSWER_CHARS = 200  # a probe's answer as recorded
NEEDLE_DEPTHS = (0.10, 0.50, 0.90)  # share of the served context before each fact
# one fact per depth, deepest first: distinct doors and passphrases so each answer is about one of them
NEEDLES = (("north", "AMBER-FALCON-2917"), ("east", "COPPER-LYNX-5083"), ("south", "SILVER-ORCA-4469"))
CHECK_IDS = ("quality.fingerprint", "quality.tokenizer", "quality.fingerprint.reviewed", "quality.quant_cost",
             *(f"quality.needle@{d:.0%}" for d in NEEDLE_DEPTHS), "quality.needle.consistent")


def fact_sentence(door: str, key: str) -> str:
    return f"The passphrase for the {door} door is {key}."


def door_question(door: str) -> str:
    return (f"What is the passphrase for the {door} door, as stated earlier in this message? "
            "Answer with the passphrase only.")



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
                facts.setdefault(block, []).append(fact_sentence(*NEEDLES[i]))
        for b in range(self.blocks + 1):
            lines += facts.get(b, [])
            if b < self.blocks:
                lines.append(FILLER[b % len(FILLER)])
        if deepest_at_end:
            lines.append(fact_sentence(*NEEDLES[0]))
        lines.append(door_question(question_door))
        return "\n".join(lines)


def needle_checks(client: Client, spec: Spec, model: str, placement: Placement) -> list[Check]:
    engine = spec.profile.runtime.engine
    context = placement.context
    ids = [f"quality.needle@{d:.0%}" for d in NEEDLE_DEPTHS]

    def ask(prompt: str, *, cached: bool) -> Answer:
        return chat(client, engine, model, prompt, NEEDLE_ANSWER_TOKENS, thinking=False, cache_prompt=cached)

    try:
        empty = _NeedlePrompts(0, (0, 0, 0), 0)
        base = ask(empty.text(NEEDLES[0][0]), cached=False)
        probe_blocks = 4 * len(FILLER)
        probe = ask(_NeedlePrompts(probe_blocks, (0, 0, 0), 0).text(NEEDLES[0][0]), cached=False)
    except HttpError as exc:
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
        except HttpError as exc:
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


def _recall_verdict(cid: str, answer: Answer, key: str, planned: int, expected: str) -> Check:
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


def _consistency(ask: Callable[..., Answer], layout: _NeedlePrompts, answers: dict[str, str]) -> Check:
    cid = "quality.needle.consistent"
    door, key = NEEDLES[0]
    deep = answers.get(door)
    expected = f"the same answer about the {door} door at {NEEDLE_DEPTHS[0]:.0%} depth as with it at the prompt's end"
    if deep is None:
        return Check(cid, "skip", hint=f"the {NEEDLE_DEPTHS[0]:.0%} needle was not answered")
    try:
        near_end = ask(layout.text(door, deepest_at_end=True), cached=False).content
    except HttpError as exc:
        return Check(cid, "fail", f"the near-end request failed: {exc.message}", expected,
                     "the server refused a prompt that fits the profile's context")
    both_know = _has_key(deep, key) and _has_key(near_end, key)
    if both_know or (normalise_answer(deep) == normalise_answer(near_end) and deep.strip()):
        return Check(cid, "pass", f"both answered {_said(deep)!r}", expected)
    return Check(cid, "fail", f"at {NEEDLE_DEPTHS[0]:.0%}: {_said(deep)!r}; at the end: {_said(near_end)!r}", expected,
                 "the start of a long prompt is not seen like its end: context shift (llama.cpp drops the "
                 "prompt's start), truncation, sliding-window or rope scaling misconfigured")


# -- reasoning probes --------------------------------------------------------------------------

def reasoning_probes(client: Client, spec: Spec, model: str, baseline: Fingerprint | None,
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
            reply = chat(client, engine, model, f"{bundle.instruction}\n\n{probe.question}", budget,
                          thinking=thinking)
        except HttpError as exc:
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


