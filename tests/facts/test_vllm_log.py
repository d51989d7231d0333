"""vLLM's start-up memory lines: the snippet reads the journal of the unit's current run,
the parser takes what vLLM logged (lines as users posted them, and the format strings of
the pinned releases)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from provisioner.facts.vllm_log import VLLM_LOG_PROBE, parse, vllm_log_probe
from provisioner.units import GIB

# https://github.com/vllm-project/vllm/issues/21348 (Qwen3-235B-A22B-FP8, 4x H100, TP 4)
ISSUE_21348 = ["Available KV cache memory: 8.11 GiB", "GPU KV cache size: 178,880 tokens"]
# https://github.com/vllm-project/vllm/issues/34076 (vllm 0.15.2rc1, 2 GPUs, pipeline parallel)
ISSUE_34076 = ("(EngineCore_DP0 pid=1094) ValueError: To serve at least one request with the models's max seq "
               "len (262144), (24.0 GiB KV cache is needed, which is larger than the available KV cache memory "
               "(3.18 GiB). Based on the available memory, the estimated maximum model length is 34736. Try "
               "increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")


def _lines(*texts: str, run: str = "5c1d") -> list[str]:
    return [f"line {t}" for t in texts] + [f"run {run}"]


def test_the_pool_and_its_tokens_as_vllm_logged_them() -> None:
    startup = parse(_lines(*ISSUE_21348))
    assert startup.run == "5c1d" and startup.unread is None and startup.refused is None
    assert startup.kv_pool_bytes == int(8.11 * GIB) and startup.kv_tokens == 178_880
    assert startup.concurrency is None  # this report did not quote the concurrency line


def test_every_worker_logs_its_pool_and_the_smallest_holds() -> None:
    # vllm-0.11.0 gpu_worker.py logs once per TP worker ("(Worker_TP1 pid=..)" prefixes);
    # the engine sizes every rank's cache by the smallest
    startup = parse(_lines("(Worker_TP0 pid=11) INFO [gpu_worker.py:298] Available KV cache memory: 8.11 GiB",
                           "(Worker_TP1 pid=12) INFO [gpu_worker.py:298] Available KV cache memory: 7.98 GiB"))
    assert startup.kv_pool_bytes == int(7.98 * GIB)


def test_both_releases_wordings() -> None:
    # vllm-0.11.0: two lines, "%.2f GiB"; vllm-0.33.0: one line ("%s KV cache size: %s tokens,
    # Maximum concurrency for %s tokens per request: %.2fx") and format_gib (round to 2)
    old = parse(_lines("Maximum concurrency for 40,960 tokens per request: 4.37x",
                       "Model loading took 54.9511 GiB and 31.200000 seconds"))
    new = parse(_lines("GPU KV cache size: 178,880 tokens, Maximum concurrency for 40,960 tokens per request: 4.37x",
                       "Model loading took 54.95 GiB memory and 31.200000 seconds"))
    for startup in (old, new):
        assert (startup.max_model_len, startup.concurrency) == (40_960, 4.37)
        assert startup.weights_bytes is not None and abs(startup.weights_bytes - 54.95 * GIB) < 0.01 * GIB
    assert new.kv_tokens == 178_880


def test_a_refused_start_says_why() -> None:
    refused = parse(_lines(ISSUE_34076))
    assert refused.refused == ("24.0 GiB of KV cache needed for one sequence of 262,144 tokens, 3.18 GiB available; "
                               "vLLM estimates 34,736 tokens would fit")
    assert refused.max_model_len == 262_144
    empty = parse(_lines("ValueError: No available memory for the cache blocks. Try increasing "
                         "`gpu_memory_utilization` when initializing the engine."))
    assert empty.refused is not None and "no GPU memory left" in empty.refused


def test_nothing_read_says_why() -> None:
    assert parse(["none the host has no journalctl"]).unread == "the host has no journalctl"
    assert parse([]).unread is not None


def _stand_ins(folder: Path, journal: str, invocation: str = "5c1d", state: str = "active",
               sub: str = "running", restarts: int = 0) -> str:
    """systemctl and journalctl as a host with systemd answers them (there is no journald
    here): the unit's InvocationID and state, and the journal of that invocation."""
    folder.mkdir()
    unit = "llm-server.service"
    scripts = {
        "systemctl": (f'case "$*" in\n'
                      f'  "show -p InvocationID --value {unit}") echo {invocation} ;;\n'
                      f'  "show -p ActiveState -p SubState -p NRestarts {unit}")\n'
                      f'    printf "NRestarts={restarts}\\nActiveState={state}\\nSubState={sub}\\n" ;;\n'
                      f'esac\n'),
        "journalctl": (f'case "$*" in\n'
                       f'  *"-n 1"*_SYSTEMD_INVOCATION_ID={invocation}*) tail -n 1 "{folder}/journal" ;;\n'
                       f'  *_SYSTEMD_INVOCATION_ID={invocation}*) cat "{folder}/journal" ;;\n'
                       f'esac\n'),
    }
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(stat.S_IRWXU)
    (folder / "journal").write_text(journal)
    return f"{folder}:{os.environ['PATH']}"


def _run(snippet: str, path: str) -> str:
    return subprocess.run(["sh", "-c", snippet], capture_output=True, text=True, check=True, timeout=30,
                          env={**os.environ, "PATH": path}).stdout


def test_the_snippet_keeps_only_the_start_up_memory_lines_of_the_current_run(tmp_path: Path) -> None:
    # after "Starting vLLM API server" (0.11.0 api_server.py) the server logs requests, whose
    # text a client writes: a prompt quoting a pool must not become one, nor a mark
    journal = "\n".join(["INFO vLLM API server version 0.11.0", *ISSUE_21348,
                         "INFO [api_server.py:1912] Starting vLLM API server 0 on http://127.0.0.1:8000",
                         "INFO Received request: prompt: 'Available KV cache memory: 0.01 GiB'",
                         "@done and other text that must not pass as a mark"]) + "\n"
    path = _stand_ins(tmp_path / "bin", journal)
    out = _run(vllm_log_probe("llm-server").snippet, path)
    assert all(line.startswith("@vllm-log ") for line in out.splitlines()), out
    assert VLLM_LOG_PROBE.lines(out) == [f"line {t}" for t in ISSUE_21348] + [
        "run 5c1d", "unit NRestarts=0", "unit ActiveState=active", "unit SubState=running"]
    startup = vllm_log_probe("llm-server").read(out)
    assert startup.kv_tokens == 178_880 and startup.kv_pool_bytes == int(8.11 * GIB)
    assert (startup.active, startup.sub, startup.restarts) == ("active", "running", 0)


def test_a_journal_line_cannot_split_into_forged_lines(tmp_path: Path) -> None:
    """Python's str.splitlines() also splits at \\r, \\f, U+2028 and others; a log line
    holding them must stay one line (and only printable ASCII reaches the parser)."""
    forged = ("INFO [gpu_worker.py:298] Available KV cache memory: 8.11 GiB\r@vllm-log run forged"
              "\u2028@path missing x /etc/llm\x0c@done")
    path = _stand_ins(tmp_path / "bin", forged + "\n")
    out = _run(vllm_log_probe("llm-server").snippet, path)
    assert VLLM_LOG_PROBE.read(out).run == "5c1d"
    assert [line for line in out.split("\n") if line.startswith(("@path", "@done"))] == []
    assert VLLM_LOG_PROBE.lines("@vllm-log run real\n@vllm-log line a\r@vllm-log run forged\n") == [
        "run real", "line a\r@vllm-log run forged"]


def test_a_server_that_systemd_keeps_restarting_is_seen_as_such(tmp_path: Path) -> None:
    """vLLM exits on a refusal and systemd starts it again (Restart=on-failure): between the
    two the unit is activating/auto-restart, and the run read is the one that ended."""
    path = _stand_ins(tmp_path / "bin", ISSUE_34076 + "\n", state="activating", sub="auto-restart", restarts=3)
    startup = vllm_log_probe("llm-server").read(_run(vllm_log_probe("llm-server").snippet, path))
    assert (startup.active, startup.sub, startup.restarts) == ("activating", "auto-restart", 3)
    assert startup.refused is not None and startup.refused.startswith("24.0 GiB of KV cache needed")


def test_the_snippet_says_when_the_journal_is_not_readable_or_the_unit_never_ran(tmp_path: Path) -> None:
    unreadable = _stand_ins(tmp_path / "a", "")  # journalctl as a user outside systemd-journal: no lines
    out = _run(vllm_log_probe("llm-server").snippet, unreadable)
    assert "not in the systemd-journal group" in (vllm_log_probe("llm-server").read(out).unread or "")
    never = _run(vllm_log_probe("other").snippet, unreadable)  # systemctl prints no InvocationID
    assert "systemd has no run of other.service" in (VLLM_LOG_PROBE.read(never).unread or "")


def test_a_host_without_journalctl(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    for tool in ("sh", "grep", "sed", "tail", "id"):
        found = shutil.which(tool)
        assert found is not None, tool
        (tmp_path / "bin" / tool).symlink_to(found)
    out = _run(vllm_log_probe("llm-server").snippet, str(tmp_path / "bin"))
    assert VLLM_LOG_PROBE.read(out).unread == "the host has no journalctl"
