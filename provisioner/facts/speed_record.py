"""The host's own speed measurements: what verify measured on the live endpoint (and, for
vLLM, the KV pool its start-up log reported), kept in the host's state next to the
generation that was serving (pure: scripts and parsing).

``verify`` appends one JSON line per run to ``STATE/generations/N/speed.jsonl`` (N: the
last applied generation); ``fit --host --calibrate`` reads every such line in the same
gather as its other facts.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

MARK = "@speed "

# read by fit's gather ($state is the gather script's state dir)
READ_SNIPPET = r"""for f in "$state"/generations/*/speed.jsonl; do
    [ -r "$f" ] || continue
    n=$(basename "$(dirname "$f")")
    sed "s/^/@speed $n /" "$f"
done
"""


@dataclass(frozen=True)
class SpeedRecord:
    generation: int
    engine: str
    engine_version: str
    gpus: tuple[str, ...]  # catalog ids, one per GPU
    model: str
    quant: str
    decode_tokens_per_s: float | None = None
    predicted_decode_tokens_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    predicted_prefill_tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    time: str = ""
    # vLLM: the KV pool per GPU its start-up log reported, fit's for it, and the settings
    # the pool was sized with (fit/calibrate.py memory_settings); a record with other
    # settings says nothing about this one's pool
    kv_pool_gib_per_gpu: float | None = None
    predicted_kv_pool_gib_per_gpu: float | None = None
    memory_settings: str = ""

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if k != "generation"}
        data["gpus"] = list(self.gpus)
        return json.dumps(data, sort_keys=True)


def write_script(state_dir: str, record: SpeedRecord) -> str:
    """Append the record to the last generation's speed.jsonl; prints where, or why not."""
    line = shlex.quote(record.to_json())
    return f"""set -u
state={shlex.quote(state_dir)}
last=$(cat "$state/last" 2>/dev/null || echo 0)
if [ "$last" -gt 0 ] 2>/dev/null && [ -d "$state/generations/$last" ]; then
    if printf '%s\\n' {line} >> "$state/generations/$last/speed.jsonl" 2>/dev/null; then
        echo "@recorded $state/generations/$last/speed.jsonl"
    else
        echo "@not-recorded cannot write $state/generations/$last/speed.jsonl"
    fi
else
    echo "@not-recorded no applied generation in $state"
fi
"""


def parse_records(output: str) -> list[SpeedRecord]:
    """Every ``@speed N {json}`` line; a line that does not parse is skipped (a record
    written by another version may lack fields)."""
    found: list[SpeedRecord] = []
    for line in output.split("\n"):  # not splitlines(): see Probe.lines
        if not line.startswith(MARK):
            continue
        number, _, text = line[len(MARK):].partition(" ")
        try:
            data: dict[str, Any] = json.loads(text)
            found.append(SpeedRecord(generation=int(number), engine=str(data["engine"]),
                                     engine_version=str(data["engine_version"]),
                                     gpus=tuple(str(g) for g in data["gpus"]), model=str(data["model"]),
                                     quant=str(data["quant"]),
                                     **{k: data.get(k) for k in ("decode_tokens_per_s",
                                                                 "predicted_decode_tokens_per_s",
                                                                 "prefill_tokens_per_s",
                                                                 "predicted_prefill_tokens_per_s",
                                                                 "prompt_tokens", "kv_pool_gib_per_gpu",
                                                                 "predicted_kv_pool_gib_per_gpu")},
                                     time=str(data.get("time", "")),
                                     memory_settings=str(data.get("memory_settings", ""))))
        except (ValueError, KeyError, TypeError):
            continue
    return found
