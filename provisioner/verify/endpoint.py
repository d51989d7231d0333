"""Endpoint checks: the live OpenAI-compatible server (llama.cpp, vLLM, Ollama).

``endpoint_checks`` talks to the server with the standard library only and
returns one ``Check`` per property:

- endpoint.answers        GET /v1/models answers (with the API key; 401 is a clear fail)
- endpoint.model_id       the profile's model name is served
- endpoint.context        the served context per sequence is the profile's (llama.cpp
                          /props and /slots, vLLM /v1/models max_model_len, Ollama /api/ps)
- endpoint.slots          llama.cpp: as many slots as runtime.parallel
- endpoint.needle         a prompt near the full context with a fact at its very start
                          is answered with that fact (catches truncation and context shift)
- endpoint.deterministic  three temperature-0 requests, prompt caching off, same text
- endpoint.template       no raw chat-template tokens in the answers
- endpoint.speed          decode tok/s of a fixed request against fit's prediction
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING

from provisioner.facts.check import Check
from provisioner.fit.predict import speed_floors
from provisioner.verify.client import ChatRun, Client, HttpError, as_int

if TYPE_CHECKING:
    from provisioner.fit.placement import Placement
    from provisioner.profile.resolve import Spec

# Raw chat-template tokens: seeing one in an answer means the template was not applied
# (or the stop tokens are wrong) and the model is continuing the conversation itself.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|start|>", "<|end|>", "<|endoftext|>",
                   "<|begin_of_text|>", "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]")

SPEED_TOKENS = 128  # the fixed request's length
NEEDLE_FILL = 0.90  # share of the context the needle prompt aims at
NEEDLE_ANSWER_TOKENS = 48
NEEDLE_FACT = "The secret passphrase is BLUE-HERON-7341."
NEEDLE_KEY = "BLUE-HERON-7341"
NEEDLE_QUESTION = ("What is the secret passphrase stated in the first sentence of this message? "
                   "Answer with the passphrase only.")
DETERMINISM_PROMPT = "Write four short lines about a lighthouse keeper."
SPEED_PROMPT = "Count upwards from 1, one number per line, and do not stop."
FILLER = (
    "The archive room held ledgers of grain prices from many harvests.",
    "A clerk copied each column by hand and checked the totals twice.",
    "Rain fell on the slate roof while the lamps burned low.",
    "Nobody could remember who had first ordered the shelves by colour.",
    "Outside, carts rolled past towards the market on the river bank.",
    "The ink dried slowly in the cold air of the northern wing.",
    "Every spring the floors were swept and the windows washed.",
    "A cat slept on the warmest shelf, above the accounts of the mill.",
)


def endpoint_checks(spec: Spec, placement: Placement, predicted_decode_tps: float | None, base_url: str,
                    api_key: str | None, *, needle: bool = True, timeout_s: float = 120.0) -> list[Check]:
    """Check the live server at ``base_url`` against the profile; one Check per property."""
    if base_url.startswith(("http://", "https://")):
        client = Client(base_url, api_key, timeout_s)
        answers, served = check_answers(client, api_key)
    else:
        answers, served = Check("endpoint.answers", "fail", f"not an HTTP URL: {base_url!r}", "http(s)://HOST:PORT",
                                "give the server's base URL, e.g. http://127.0.0.1:8080"), []
    if answers.status == "fail":
        reason = "the endpoint does not answer (see endpoint.answers)"
        return [answers] + [Check(cid, "skip", hint=reason) for cid in
                            ("endpoint.model_id", "endpoint.context", "endpoint.slots", "endpoint.needle",
                             "endpoint.deterministic", "endpoint.template", "endpoint.speed")]
    model_check, model = check_model_id(spec, served)
    run = ChatRun(spec, Client(base_url, api_key, timeout_s), model)
    checks = [answers, model_check]
    if spec.profile.runtime.engine == "ollama":
        _warm_up(run)  # Ollama loads the model on the first request; /api/ps is empty before
    checks += _check_context(run, placement)
    checks.append(_check_needle(run, placement) if needle
                  else Check("endpoint.needle", "skip", hint="disabled by --no-needle"))
    checks.append(_check_deterministic(run))
    speed = _check_speed(run, predicted_decode_tps, speed_floors(spec, placement))
    checks.append(_check_template(run))
    checks.append(speed)
    return checks


# -- answers and model id ----------------------------------------------------------------------

def check_answers(client: Client, api_key: str | None) -> tuple[Check, list[str]]:
    expected = "HTTP 200 from GET /v1/models"
    try:
        data = client.get("/v1/models")
    except HttpError as exc:
        if exc.status in (401, 403):
            hint = ("the server rejected the API key: use the key the profile's secrets.api_key names"
                    if api_key else
                    "the server requires an API key: set the one the profile's secrets.api_key names "
                    "(it is sent as Authorization: Bearer)")
            return Check("endpoint.answers", "fail", exc.message, expected, hint), []
        hint = ("is the server running and listening there? check the service "
                "(systemctl status, journalctl -u) and runtime.bind/port"
                if exc.status is None else "the server answered with an error: see its log")
        return Check("endpoint.answers", "fail", exc.message, expected, hint), []
    served: list[str] = []
    for entry in (data.get("data") or []) if isinstance(data, dict) else []:
        if isinstance(entry, dict):
            served += [str(entry.get("id"))] + [str(a) for a in entry.get("aliases") or []]
    served = list(dict.fromkeys(served))  # llama.cpp lists its --alias as id and again as an alias
    return Check("endpoint.answers", "pass", f"HTTP 200, {len(served)} model name(s)", expected), served


def _expected_names(spec: Spec) -> list[str]:
    names = [spec.model_id]
    tag = getattr(spec.profile.model.source, "ollama", None)
    if spec.profile.runtime.engine == "ollama":
        names.append(f"{spec.model_id}:latest")
        if tag:
            names += [tag] if ":" in tag else [tag, f"{tag}:latest"]
    return names


def check_model_id(spec: Spec, served: list[str]) -> tuple[Check, str]:
    names = _expected_names(spec)
    observed = ", ".join(served) or "(none)"
    for name in names:
        if name in served:
            return Check("endpoint.model_id", "pass", observed, spec.model_id), name
    return (Check("endpoint.model_id", "fail", observed, spec.model_id,
                  "another model is served here: check --alias / --served-model-name in the run script, "
                  "or whether another server holds the port"),
            served[0] if served else spec.model_id)


def _warm_up(run: ChatRun) -> None:
    with contextlib.suppress(HttpError):  # the checks that need an answer report it
        run.chat("Hello", 1)


# -- context and slots -------------------------------------------------------------------------

def _check_context(run: ChatRun, placement: Placement) -> list[Check]:
    expected_ctx = placement.context
    slots = run.spec.profile.runtime.parallel
    engine = run.engine
    try:
        if engine == "llama.cpp":
            return _llama_context(run, expected_ctx, slots)
        if engine == "vllm":
            return [_vllm_context(run, expected_ctx),
                    Check("endpoint.slots", "skip", hint="vLLM schedules sequences dynamically "
                          "(max_num_seqs): no fixed slots to count")]
        return [_ollama_context(run, expected_ctx),
                Check("endpoint.slots", "skip", hint="Ollama does not report OLLAMA_NUM_PARALLEL over its API")]
    except HttpError as exc:
        return [Check("endpoint.context", "fail", exc.message, f"{expected_ctx} tokens per sequence",
                      "the server did not report its context"),
                Check("endpoint.slots", "skip", hint="the context could not be read")]


def _context_verdict(observed: int | None, expected: int, source: str, *, detail: str = "") -> Check:
    exp = f"{expected} tokens per sequence"
    if observed is None:
        return Check("endpoint.context", "fail", f"{source}: no context reported", exp,
                     "the server did not report its context length")
    obs = f"{observed} tokens per sequence ({source}){detail}"
    if observed < expected:
        return Check("endpoint.context", "fail", obs, exp,
                     "the server serves less context than the profile: long prompts are cut or refused; "
                     "check --ctx-size / --parallel (llama.cpp), --max-model-len (vLLM), num_ctx (Ollama)")
    if observed > expected:
        return Check("endpoint.context", "warn", obs, exp,
                     "more context than the profile: more memory than fit planned for")
    return Check("endpoint.context", "pass", obs, exp)


def _llama_context(run: ChatRun, expected: int, slots: int) -> list[Check]:
    props = run.client.get("/props")
    settings = props.get("default_generation_settings") or {}
    n_ctx = as_int(settings.get("n_ctx"))
    total_slots = as_int(props.get("total_slots"))
    slot_ctx: list[int] = []
    try:
        data = run.client.get("/slots")
        if isinstance(data, list):
            slot_ctx = [c for c in (as_int(s.get("n_ctx")) for s in data if isinstance(s, dict)) if c is not None]
    except HttpError:
        pass  # /slots is off (--no-slots): /props alone
    observed = min(slot_ctx) if slot_ctx else n_ctx
    detail = ""
    if slot_ctx and len(set(slot_ctx)) > 1:
        detail = f"; slots range {min(slot_ctx)}..{max(slot_ctx)}"
    context = _context_verdict(observed, expected, "/slots" if slot_ctx else "/props", detail=detail)
    count = len(slot_ctx) if slot_ctx else total_slots
    if count is None:
        slot_check = Check("endpoint.slots", "fail", "no slot count in /props", f"{slots} slot(s)",
                           "the server did not report total_slots")
    elif count != slots:
        slot_check = Check("endpoint.slots", "fail", f"{count} slot(s)", f"{slots} slot(s)",
                           "check --parallel in the run script: the context is split between the slots")
    else:
        slot_check = Check("endpoint.slots", "pass", f"{count} slot(s)", f"{slots} slot(s)")
    return [context, slot_check]


def _vllm_context(run: ChatRun, expected: int) -> Check:
    data = run.client.get("/v1/models")
    for entry in data.get("data") or []:
        if isinstance(entry, dict) and entry.get("id") == run.model:
            return _context_verdict(as_int(entry.get("max_model_len")), expected, "/v1/models max_model_len")
    return _context_verdict(None, expected, "/v1/models")


def _ollama_context(run: ChatRun, expected: int) -> Check:
    data = run.client.get("/api/ps")
    models = [m for m in data.get("models") or [] if isinstance(m, dict)]
    names = set(_expected_names(run.spec)) | {run.model}
    for entry in models:
        if entry.get("name") in names or entry.get("model") in names:
            return _context_verdict(as_int(entry.get("context_length")), expected, "/api/ps context_length")
    return Check("endpoint.context", "fail", f"{run.model} not loaded (/api/ps lists "
                 f"{', '.join(str(m.get('name')) for m in models) or 'nothing'})",
                 f"{expected} tokens per sequence", "the model did not load: see the Ollama log")


# -- needle ------------------------------------------------------------------------------------

def _needle_prompt(blocks: int) -> str:
    lines = [NEEDLE_FACT]
    lines += [f"{FILLER[i % len(FILLER)]}" for i in range(blocks)]
    lines.append(NEEDLE_QUESTION)
    return "\n".join(lines)


def _check_needle(run: ChatRun, placement: Placement) -> Check:
    context = placement.context
    target = int(context * NEEDLE_FILL) - NEEDLE_ANSWER_TOKENS
    try:
        # Calibrate the tokenizer: the prompt without and with a known amount of filler.
        base = run.chat(_needle_prompt(0), 1)
        probe_blocks = 4 * len(FILLER)
        probe = run.chat(_needle_prompt(probe_blocks), 1)
    except HttpError as exc:
        return Check("endpoint.needle", "fail", f"calibration request failed: {exc.message}",
                     "the fact from the prompt's start", "the server refused a short prompt: see its log")
    if base.prompt_tokens is None or probe.prompt_tokens is None or probe.prompt_tokens <= base.prompt_tokens:
        return Check("endpoint.needle", "skip", hint="the server reports no usage.prompt_tokens: "
                     "cannot size a prompt to the context")
    per_block = (probe.prompt_tokens - base.prompt_tokens) / probe_blocks
    blocks = max(0, int((target - base.prompt_tokens) / per_block))
    planned = base.prompt_tokens + int(blocks * per_block)
    expected = f"{NEEDLE_KEY} recalled from a ~{planned}-token prompt ({context}-token context)"
    try:
        answer = run.chat(_needle_prompt(blocks), NEEDLE_ANSWER_TOKENS)
    except HttpError as exc:
        hint = ("the server refused a prompt that fits the profile's context: it serves less context"
                if exc.status is not None and exc.status < 500 else "the request failed: see the server log")
        return Check("endpoint.needle", "fail", f"~{planned}-token prompt refused: {exc.message}", expected, hint)
    got = answer.prompt_tokens
    said = answer.text.strip().replace("\n", " ")
    said = said if len(said) <= 80 else said[:77] + "..."
    if got is not None and got < planned * 0.9:
        return Check("endpoint.needle", "fail",
                     f"the server processed {got} of ~{planned} prompt tokens; answered {said!r}", expected,
                     "the prompt was truncated (the start is lost): the served context is smaller than the "
                     "profile's (Ollama: num_ctx / OLLAMA_CONTEXT_LENGTH)")
    prompt_rate = answer.timings.get("prompt_per_second")
    measured = ((("prefill_tokens_per_s", float(prompt_rate)), ("prompt_tokens", float(got)))
                if isinstance(prompt_rate, (int, float)) and prompt_rate > 0 and got else ())
    if NEEDLE_KEY.lower() in answer.text.lower().replace(" ", ""):
        return Check("endpoint.needle", "pass", f"recalled from a {got or planned}-token prompt", expected,
                     measured=measured)
    return Check("endpoint.needle", "fail",
                 f"not recalled from a {got or planned}-token prompt; answered {said!r}", expected,
                 "the fact at the prompt's start was lost: context shift or truncation (llama.cpp: "
                 "--no-context-shift, --ctx-size), or a model too weak to recall it "
                 "(--no-needle skips this check)")


# -- determinism, template, speed ---------------------------------------------------------------

def _check_deterministic(run: ChatRun) -> Check:
    texts: list[str] = []
    try:
        for _ in range(3):
            texts.append(run.chat(DETERMINISM_PROMPT, 48).text)
    except HttpError as exc:
        return Check("endpoint.deterministic", "fail", exc.message, "3 identical answers at temperature 0",
                     "the server failed a short request: see its log")
    expected = "3 identical answers at temperature 0"
    if all(t == texts[0] for t in texts):
        if not texts[0].strip():
            return Check("endpoint.deterministic", "warn", "3 empty answers", expected,
                         "the model answered nothing: nothing to compare")
        return Check("endpoint.deterministic", "pass", f"3 identical answers ({len(texts[0])} chars)", expected)
    distinct = len(set(texts))
    a, b = next((x, y) for x, y in itertools.pairwise(texts) if x != y)
    at = next((i for i, (ca, cb) in enumerate(zip(a, b, strict=False)) if ca != cb), min(len(a), len(b)))
    return Check("endpoint.deterministic", "fail", f"{distinct} different answers (first difference at "
                 f"character {at})", expected,
                 "greedy decoding should repeat itself: a server-side sampler override, batching across "
                 "slots, or prompt caching changing numerics (llama.cpp: cache_prompt false)")


def _check_template(run: ChatRun) -> Check:
    texts = [a.text for a in run.answers if a.completion_tokens != 1]
    expected = "no raw template tokens in answers"
    if not texts:
        return Check("endpoint.template", "skip", hint="no answers to inspect (earlier requests failed)")
    found = sorted({tok for tok in TEMPLATE_TOKENS for t in texts if tok in t})
    if found:
        return Check("endpoint.template", "fail", f"{', '.join(found)} in {len(texts)} answer(s)", expected,
                     "the chat template is not applied or its stop tokens are wrong: llama.cpp --jinja with "
                     "the model's own template; check the GGUF's tokenizer.chat_template")
    return Check("endpoint.template", "pass", f"none in {len(texts)} answer(s)", expected)


def _check_speed(run: ChatRun, predicted: float | None, floors: tuple[float, float]) -> Check:
    """Decode against the prediction: warn below the lowest share the published cases of
    this kind of placement reached (catalog/fit.yaml verify_speed), fail far below it."""
    warn, fail = floors
    if predicted is None or predicted <= 0:
        return Check("endpoint.speed", "skip", hint="no speed prediction for this profile")
    try:
        answer = run.chat(SPEED_PROMPT, SPEED_TOKENS, ignore_eos=True)
    except HttpError as exc:
        return Check("endpoint.speed", "fail", exc.message, f"{predicted:.1f} tok/s predicted",
                     "the speed request failed: see the server log")
    tps = answer.timings.get("predicted_per_second")
    if isinstance(tps, (int, float)) and tps > 0:
        rate, source = float(tps), f"server timings, {answer.timings.get('predicted_n', '?')} tokens"
    elif answer.completion_tokens and answer.seconds > 0:
        rate = answer.completion_tokens / answer.seconds
        source = f"wall clock, {answer.completion_tokens} tokens"
    else:
        return Check("endpoint.speed", "skip", hint="the server reported neither timings nor usage")
    ratio = rate / predicted
    observed = f"{rate:.1f} tok/s decode ({source}), {ratio:.0%} of predicted"
    measured = (("decode_tokens_per_s", rate), ("predicted_decode_tokens_per_s", predicted))
    expected = (f">= {warn:.0%} of {predicted:.1f} tok/s predicted (the model's known error band "
                "for this kind of placement)")
    if ratio < fail:
        return Check("endpoint.speed", "fail", observed, expected,
                     f"below {fail:.0%} of the prediction: a silent CPU spill? check the GPU layers the "
                     "server loaded, nvidia-smi memory use, and that the GPU is not throttled", measured)
    if ratio < warn:
        return Check("endpoint.speed", "warn", observed, expected,
                     "slower than the published cases of this kind: other load on the machine, power limit "
                     "or clocks, or part of the model in system RAM", measured)
    return Check("endpoint.speed", "pass", observed, expected, measured=measured)
