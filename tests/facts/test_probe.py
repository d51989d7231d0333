"""The Probe type: snippets run by this machine's real sh give lines their parsers
accept, every snippet file passes shellcheck, and probes share one output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner.facts.gpu_probe import GPU_PROBE
from provisioner.facts.host import HOST_PROBE
from provisioner.facts.host_load import FIT_PROBE, fit_probe
from provisioner.facts.probe import Probe, load_snippet, snippets
from provisioner.facts.sample import SAMPLE_PROBE

SNIPPETS = Path(__file__).resolve().parents[2] / "provisioner" / "facts" / "snippets"
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def run_sh(script: str) -> str:
    result = subprocess.run(["sh", "-c", "set -u\n" + script], capture_output=True, text=True, check=False,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _words(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines]


COUNT = Probe("count", 'printf \'@count n %s\\n\' "$(getconf _NPROCESSORS_ONLN)"\necho "@count pid $$"\n', _words)


def test_read_takes_its_own_lines_without_the_marker() -> None:
    out = run_sh(snippets([COUNT, Probe("other", "echo '@other n 99'; echo '@countless n 7'", _words)]))
    assert COUNT.read(out) == [["n", str(os.cpu_count())], ["pid", COUNT.read(out)[1][1]]]
    assert COUNT.lines("@count a\n@counter b\n@count  c\nnoise\n") == ["a", " c"]


def test_snippets_join_into_one_script_in_order() -> None:
    joined = snippets([COUNT, Probe("x", "echo '@x 1'", _words), COUNT])
    assert joined == COUNT.snippet + "echo '@x 1'\n" + COUNT.snippet
    assert run_sh(joined).splitlines()[2] == "@x 1"


def _gpu_less(probe_output: str) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the check expects a GPU-less host")
    report = GPU_PROBE.read(probe_output)
    assert report.smi == "missing" and report.kernel == os.uname().release


def _meminfo_kb(key: str) -> int:
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1])


def _sample_of_this_host(probe_output: str) -> None:
    sample = SAMPLE_PROBE.read(probe_output)
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert sample.time_s is not None and 0 < sample.time_s <= uptime
    assert sample.page_size == os.sysconf("SC_PAGESIZE")
    assert sample.mem_total_kb == _meminfo_kb("MemTotal")
    assert sample.service == "llm-server" and sample.server in {"systemd", "no-systemd"}
    assert sample.pgmajfault is not None


def _host_of_this_machine(probe_output: str) -> None:
    info = HOST_PROBE.read(probe_output)
    assert info.hostname == os.uname().nodename
    assert info.cores is not None and 1 <= info.cores <= (os.cpu_count() or 1)
    nodes = list(Path("/sys/devices/system/node").glob("node[0-9]*"))
    assert info.numa_nodes == (len(nodes) or None)


def _load_of_this_machine(probe_output: str) -> None:
    reading = FIT_PROBE.read(probe_output)
    assert reading.main_pid == 0  # no such unit
    assert reading.parents[os.getpid()] == os.getppid()
    meminfo = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in Path("/proc/meminfo").read_text()
                                                  .splitlines())}
    expected = meminfo["Hugetlb"] * 1024 if "Hugetlb" in meminfo else \
        meminfo["HugePages_Total"] * meminfo["Hugepagesize"] * 1024
    assert reading.hugepages_bytes == expected


# probes that run as they are, and what their parser must find on this machine
HERE: list[tuple[Probe[object], Callable[[str], None]]] = [
    (GPU_PROBE, _gpu_less),
    (SAMPLE_PROBE, _sample_of_this_host),
    (HOST_PROBE, _host_of_this_machine),
    (fit_probe("provision-test-no-such-unit"), _load_of_this_machine),
]


@pytest.mark.parametrize(("probe", "check"), HERE, ids=[p.name for p, _ in HERE])
def test_snippet_runs_here_and_its_parser_accepts_the_lines(probe: Probe[object],
                                                            check: Callable[[str], None]) -> None:
    out = run_sh(probe.snippet)
    lines = out.splitlines()
    assert lines and all(line.startswith(probe.marker) for line in lines), out
    check(out)


def test_a_probe_without_its_input_stops() -> None:
    """The fit probe needs the unit of the model server: alone, it stops the script."""
    result = subprocess.run(["sh", "-c", FIT_PROBE.snippet + "echo '@fit never'"], capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0 and "@fit never" not in result.stdout
    assert "the model server unit" in result.stderr


def test_every_snippet_file_passes_sh_n_and_shellcheck() -> None:
    files = sorted(SNIPPETS.glob("*.sh"))
    assert {f.stem for f in files} == {"gather", "gpu", "sample", "host", "load", "model_files", "model_dir", "ollama",
                                        "vllm_log"}
    for path in files:
        assert load_snippet(path.stem) == path.read_text(encoding="utf-8")
        assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0, path.name
        result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(path)], capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"
