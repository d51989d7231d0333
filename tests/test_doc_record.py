"""scripts/record-doc-output on small pages: what it replaces, what it leaves, and that a
page's hidden set-up runs before its blocks (a tree applied; loopback sshds with the
inventory the page cats) and is gone after them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import sshd

ROOT = Path(__file__).resolve().parent.parent
RECORDER = ROOT / "scripts" / "record-doc-output"
FLEET_TREES = Path("/tmp/fleet")  # noqa: S108 - the fleet set-up's fixed path, shown in docs/fleet.md
VENV_TREE = Path("/tmp/rd")  # noqa: S108 - the apt sandbox's fixed path, shown in docs/install.md
SANDBOX_PROBE = "provision-doc-sandbox-probe"


def record(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RECORDER), str(page), *flags], capture_output=True, text=True, check=False,
                          timeout=300)


def test_a_transcript_gets_what_its_commands_print_now_and_kept_blocks_stay(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n```\n$ echo now; exit 3\nbefore\nexit 0\n```\n\n"
                    "<!-- doc-record: keep: shown as it was -->\n```\n$ echo now\nbefore\n```\n\n"
                    "```\n$ provision --help\nthe help block test_doc_help owns\n```\n")
    check = record(page, "--check")
    assert check.returncode == 1 and "stale: " in check.stdout
    assert record(page).returncode == 0
    assert page.read_text() == ("# A page\n\n```\n$ echo now; exit 3\nnow\nexit 3\n```\n\n"
                                "<!-- doc-record: keep: shown as it was -->\n```\n$ echo now\nbefore\n```\n\n"
                                "```\n$ provision --help\nthe help block test_doc_help owns\n```\n")
    assert record(page, "--check").returncode == 0


def test_a_page_set_up_runs_in_the_scratch_folder_before_the_blocks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-setup: quickstart-in-demo -->\n```\n$ ls demo/etc/sysctl.d\n```\n")
    assert record(page).returncode == 0
    assert page.read_text().endswith("```\n$ ls demo/etc/sysctl.d\n90-provision-llm-server.conf\n```\n")


def test_an_unknown_set_up_is_one_line_and_exit_1(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-setup: no-such-thing -->\n```\n$ true\n```\n")
    result = record(page)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{page}: unknown doc-setup ['no-such-thing'] (known: fleet-demo, ansible-fleet, cluster-loopback, "
        "quickstart-in-demo, changed-profile-in-demo-json, fit-root, container-profile, apt-sandbox, bare-box, "
        "last-mile)"]


def test_an_unknown_run_is_one_line_and_exit_1(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```\n$ true\n```\n<!-- doc-run: no-such-step -->\n")
    result = record(page)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"{page}: unknown doc-run ['no-such-step'] (known: bare-box-server)"]


def test_a_run_before_the_apply_it_needs_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # the server step needs the tree an apply before it made: named before any, it finds none
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-run: bare-box-server -->\n```\n$ mkdir -p image\n```\n")
    result = record(page)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{page}: doc-setup: bare-box-server: no server unit in image/: the page's apply into it comes first"]
    assert page.read_text() == "<!-- doc-run: bare-box-server -->\n```\n$ mkdir -p image\n```\n"


@pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))
def test_the_fleet_set_up_serves_the_inventory_it_writes_and_stops_after(tmp_path: Path) -> None:
    if FLEET_TREES.exists():
        pytest.skip(f"{FLEET_TREES} exists: another recording is running")
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-setup: fleet-demo -->\n```\n$ pwd\n"
                    "$ provision facts -i fleet-demo.yaml --known-hosts ssh/known_hosts --json"
                    " | jq -c '[.hosts[].host]'\n"
                    "$ provision facts -i fleet-demo.yaml --limit gpu1 --json | jq -r .error.message\n```\n")
    assert record(page).returncode == 0
    lines = page.read_text().splitlines()
    scratch = lines[3]
    assert lines[5] == '["gpu1","gpu2","gpu3"]', lines
    # HOME is an empty folder: its known_hosts knows no test host
    assert lines[7].startswith("gpu1: unknown host key ssh-ed25519 SHA256:"), lines
    assert lines[7].endswith(" for [127.0.0.41]:2297"), lines
    assert not FLEET_TREES.exists()
    assert not Path(scratch).exists()
    left = subprocess.run(["pgrep", "-f", f"sshd -D -f {scratch}/"], capture_output=True, check=False)
    assert left.returncode == 1, left.stdout


def _apt_has_hello() -> bool:
    policy = subprocess.run(["apt-cache", "policy", "hello"], capture_output=True, text=True, check=False)
    return "Candidate:" in policy.stdout and "Candidate: (none)" not in policy.stdout


@pytest.mark.skipif(subprocess.run(["id", "-u"], capture_output=True, text=True, check=False).stdout.strip() != "0",
                    reason="the apt sandbox mounts overlays: needs root")
def test_the_apt_sandbox_keeps_every_write_off_the_machine(tmp_path: Path) -> None:
    if not _apt_has_hello():
        pytest.skip("apt knows no `hello` package here (no Debian package lists)")
    if VENV_TREE.exists():
        pytest.skip(f"{VENV_TREE} exists: another recording is running")
    written = [Path("/etc") / SANDBOX_PROBE, Path("/usr") / SANDBOX_PROBE, Path("/var") / SANDBOX_PROBE,
               Path("/opt/provision") / SANDBOX_PROBE, Path("/root") / SANDBOX_PROBE, VENV_TREE / SANDBOX_PROBE]
    assert not any(path.exists() for path in written)
    opt_before = Path("/opt/provision").exists()
    page = tmp_path / "page.md"
    page.write_text("<!-- doc-setup: apt-sandbox -->\n```\n"
                    f"$ mkdir -p /opt/provision && for p in {' '.join(map(str, written))}; do echo in > $p; done\n"
                    f"$ cat {' '.join(map(str, written))}\n"
                    "$ findmnt -n -o FSTYPE /etc; findmnt -n -o FSTYPE /tmp/rd\n"
                    "$ grep -c 'version: \"' hello.yaml\n```\n")
    result = record(page)
    assert result.returncode == 0, result.stderr
    assert page.read_text().endswith("\n".join(["in"] * len(written)) + "\n"
                                     "$ findmnt -n -o FSTYPE /etc; findmnt -n -o FSTYPE /tmp/rd\noverlay\ntmpfs\n"
                                     "$ grep -c 'version: \"' hello.yaml\n1\n```\n"), page.read_text()
    assert not any(path.exists() for path in written)
    assert not VENV_TREE.exists()
    assert Path("/opt/provision").exists() == opt_before
