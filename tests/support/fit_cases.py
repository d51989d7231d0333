"""The published fit cases (tests/cases/fit/*.yaml) as profiles, specs and placements.

Shared by tests/fit/test_cases.py and scripts/fit-factors (which fits the factors of
catalog/fit.yaml on the `split: train` cases only).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from provisioner.catalog import load_catalog
from provisioner.fit import fit
from provisioner.fit.placement import Placement, params
from provisioner.fit.predict import placement_kind, predict
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import Spec, resolve

CASES = Path(__file__).resolve().parents[1] / "cases" / "fit"
ENGINE_VERSION = {"llama.cpp": "b11312", "vllm": "0.11.0", "ollama": "0.34.4"}
SHA = "0" * 64


def load_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, yaml.safe_load(p.read_text())) for p in sorted(CASES.glob("*.yaml"))]


def case_profile(name: str, case: dict[str, Any]) -> dict[str, Any]:
    """A minimal valid profile for the case's hardware, model and flags (the ubatch its
    prefill ran with is a flag of the run, so it goes into the runtime)."""
    engine = case["runtime"]["engine"]
    source: dict[str, Any]
    if engine == "vllm":
        source = {"directory": f"/srv/models/{name}"}
    elif engine == "ollama":
        source = {"ollama": "model:tag"}
    else:
        source = {"files": [{"path": f"/srv/models/{name}.gguf", "bytes": 1, "sha256": SHA}]}
    runtime = {"version": ENGINE_VERSION[engine], **case["runtime"]}
    if engine != "vllm":
        # the measurement ran at its stated ubatch, else at llama.cpp's default (fit.yaml):
        # fit must not choose another one for it
        runtime.setdefault("ubatch", case.get("prefill", {}).get("ubatch", params()["speed"]["llama_cpp_ubatch"]))
    mode = load_catalog().models[case["model"]["id"]].modes[0]
    profile = {
        "metadata": {"name": name.lower()[:60], "sources": [case["source"]]},
        "hardware": case["hardware"],
        "model": {"mode": mode, **case["model"], "source": source},
        "runtime": runtime,
    }
    if "cluster" in case:  # a multi-node case: the GPUs are the nodes' (profile.cluster)
        profile["cluster"] = case["cluster"]
    return profile


def build(name: str, case: dict[str, Any], directory: Path) -> tuple[Spec, Placement]:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(case_profile(name, case), sort_keys=False))
    spec = resolve(load_profile(path))
    return spec, fit(spec)


GIB = 2**30
MEMORY_KEYS = ("kv_cache_bytes", "kv_bytes_per_token_per_gpu", "available_kv_cache_gib_per_gpu")


def predicted_decode(spec: Spec, placement: Placement, case: dict[str, Any]) -> float:
    return predict(spec, placement, depth=case["depth"]).decode_tokens_per_s


def predicted_prefill(spec: Spec, placement: Placement, case: dict[str, Any]) -> float:
    return predict(spec, placement, prompt_tokens=case["prefill"]["prompt_tokens"]).prefill_tokens_per_s


def memory_numbers(spec: Spec, placement: Placement, measured: dict[str, Any]) -> tuple[float, float, str]:
    """(predicted, measured, unit) of a memory case."""
    if "available_kv_cache_gib_per_gpu" in measured:
        # vLLM's "Available KV cache memory" log line: what is left of vram x utilisation
        # after weights and the profiled overhead, on the tightest GPU
        assert spec.profile.runtime.engine == "vllm"
        pool = min(d.capacity_bytes - d.weights_bytes - d.buffers_bytes for d in placement.gpus)
        return pool / GIB, measured["available_kv_cache_gib_per_gpu"], "GiB/GPU"
    if "kv_bytes_per_token_per_gpu" in measured:
        gpus = spec.gpu_count
        replicas = max(1.0, gpus / spec.model.kv_heads)
        return (placement.kv_bytes_per_token * replicas / gpus, measured["kv_bytes_per_token_per_gpu"],
                "B/token/GPU")
    return placement.kv_bytes_per_sequence, measured["kv_cache_bytes"], "bytes"


def _summary(errors: list[tuple[str, dict[str, Any], float]], xfail_key: str) -> str:
    held = sorted(abs(e) for _, c, e in errors if c["split"] == "held-out")
    passing = [abs(e) for _, c, e in errors if not c.get(xfail_key)]
    median = held[len(held) // 2] if len(held) % 2 else sum(held[len(held) // 2 - 1:len(held) // 2 + 1]) / 2
    return (f"{len(errors)} cases, {len(held)} held out, "
            f"{sum(1 for _, c, _ in errors if c.get(xfail_key))} xfail; "
            f"median absolute error of the held-out cases {median:.0%}, "
            f"largest error of a passing case {max(passing):.0%}.")


def error_tables(directory: Path) -> dict[str, str]:
    """The decode, prefill and memory tables docs/fit.md carries (scripts/fit-tables)."""
    decode = ["| case | split | kind | measured tok/s | predicted | error |", "|---|---|---|---|---|---|"]
    prefill = ["| case | split | prompt tokens | ubatch | measured tok/s | predicted | error |",
               "|---|---|---|---|---|---|---|"]
    memory = ["| case | split | measured | predicted | error |", "|---|---|---|---|---|"]
    decode_errors: list[tuple[str, dict[str, Any], float]] = []
    prefill_errors: list[tuple[str, dict[str, Any], float]] = []
    for name, case in load_cases():
        measured = case["measured"]
        spec, placement = build(name, case, directory)
        if "decode_tokens_per_s" in measured:
            value = predicted_decode(spec, placement, case)
            error = value / measured["decode_tokens_per_s"] - 1
            decode_errors.append((name, case, error))
            mark = " (xfail)" if case.get("xfail") else ""
            decode.append(f"| {name} | {case['split']} | {case['kind']} | {measured['decode_tokens_per_s']:g} | "
                          f"{value:.1f} | {error:+.0%}{mark} |")
        if "prefill_tokens_per_s" in measured:
            value = predicted_prefill(spec, placement, case)
            error = value / measured["prefill_tokens_per_s"] - 1
            prefill_errors.append((name, case, error))
            mark = " (xfail)" if case.get("prefill_xfail") else ""
            prefill.append(f"| {name} | {case['split']} | {case['prefill']['prompt_tokens']} | "
                           f"{case['prefill'].get('ubatch', '-')} | {measured['prefill_tokens_per_s']:g} | "
                           f"{value:.1f} | {error:+.0%}{mark} |")
        if any(k in measured for k in MEMORY_KEYS):
            predicted, expected, unit = memory_numbers(spec, placement, measured)
            mark = " (xfail)" if case.get("xfail") else ""
            digits = 2 if unit == "GiB/GPU" else 0
            memory.append(f"| {name} | {case['split']} | {expected:,.{digits}f} {unit} | "
                          f"{predicted:,.{digits}f} | {predicted / expected - 1:+.1%}{mark} |")
    decode.append("\n" + _summary(decode_errors, "xfail"))
    prefill.append("\n" + _summary(prefill_errors, "prefill_xfail"))
    return {"decode": "\n".join(decode), "prefill": "\n".join(prefill), "memory": "\n".join(memory)}


def replace_tables(text: str, tables: dict[str, str]) -> str:
    """docs/fit.md with each `<!-- fit-table NAME -->` ... `<!-- /fit-table -->` block renewed."""
    for name, table in tables.items():
        start, end = f"<!-- fit-table {name} -->\n", "<!-- /fit-table -->"
        head, found, rest = text.partition(start)
        if not found:
            raise ValueError(f"docs/fit.md has no {start.strip()} marker")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"docs/fit.md: {start.strip()} is not closed by {end}")
        text = head + start + table + "\n" + end + tail
    return text


MIN_BAND_CASES = 5  # fewer passing cases of a kind say little about its spread


def speed_bands(directory: Path, tolerance: float = 0.25) -> dict[str, float]:
    """Per placement kind: the lowest measured/predicted decode ratio of its passing cases
    (rounded down to 0.01). A kind with fewer than MIN_BAND_CASES passing cases takes the
    edge of the tests' tolerance instead (measured = predicted / 1.25)."""
    ratios: dict[str, list[float]] = {kind: [] for kind in ("cpu", "gpu", "layer-split", "ram", "vllm")}
    for name, case in load_cases():
        if "decode_tokens_per_s" not in case["measured"] or case.get("xfail") or "cluster" in case:
            continue
        spec, placement = build(name, case, directory)
        ratio = case["measured"]["decode_tokens_per_s"] / predicted_decode(spec, placement, case)
        ratios[placement_kind(spec, placement)].append(ratio)
    edge = 1 / (1 + tolerance)
    return {kind: math.floor((min(values) if len(values) >= MIN_BAND_CASES else edge) * 100) / 100
            for kind, values in ratios.items()}


def replace_bands(text: str, bands: dict[str, float]) -> str:
    """catalog/fit.yaml with verify_speed.band's values renewed (comments kept)."""
    head, marker, text = text.partition("\nverify_speed:\n")
    if not marker:
        raise ValueError("catalog/fit.yaml has no verify_speed table")
    for kind, value in bands.items():
        text, count = re.subn(rf"^(    {re.escape(kind)}: )[0-9.]+$", rf"\g<1>{value:.2f}", text, flags=re.M)
        if count != 1:
            raise ValueError(f"catalog/fit.yaml: verify_speed.band.{kind} found {count} times")
    return head + marker + text
