"""The local transport hands a host's answer over as it was written."""

from __future__ import annotations

from provisioner.facts.vllm_log import VLLM_LOG_PROBE
from provisioner.transport.local import LocalTransport


def test_a_bare_carriage_return_stays_inside_its_line() -> None:
    """Universal newlines (text=True) would make the \\r a line end, and the rest of the line
    a forged one of its own."""
    done = LocalTransport().run(r"printf '@vllm-log run real\n@vllm-log line a\r@vllm-log run forged\n'")
    assert done.stdout == "@vllm-log run real\n@vllm-log line a\r@vllm-log run forged\n"
    assert VLLM_LOG_PROBE.read(done.stdout).run == "real"
