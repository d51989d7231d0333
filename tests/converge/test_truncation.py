"""The truncation sweep: ``sh -s`` runs a script while it reads it, so an apply script cut
short in transit (the controller dies mid-upload) must do nothing at all. Every prefix of
the script's last kilobytes is fed to sh; the tree (state included) must not change."""

from __future__ import annotations

import subprocess
from pathlib import Path

from provisioner.converge.apply import ApplyInputs, apply_script
from provisioner.converge.run import plan_host
from provisioner.render.pipeline import build
from provisioner.transport.local import LocalTransport
from tests.conftest import make_profile

TAIL = 1536  # bytes: the handlers, the renames, the generation's record and the call


def snapshot(root: Path) -> dict[str, tuple[bool, bytes]]:
    return {str(p.relative_to(root)): (p.is_dir(), b"" if p.is_dir() else p.read_bytes())
            for p in sorted(root.rglob("*"))}


def test_every_prefix_of_the_tail_changes_nothing(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {
        "files": [{"template": "extra.j2", "dest": "/etc/extra.conf", "notify": ["mark"]}],
        "handlers": {"mark": {"command": "echo ran >> \"$PROVISION_ROOT/handler.log\""}}},
        {"extra.j2": "x\n"})
    root = tmp_path / "root"
    root.mkdir()
    transport = LocalTransport(root)
    plan, _gathered = plan_host(build(profile).rendered, transport, service="llm-server")
    script = apply_script(ApplyInputs(plan, transport.root, transport.state_dir, 1, 0, "t", "now")).encode()
    assert len(script) > TAIL
    before = snapshot(root)
    # the whole script less its final newline is complete: every shorter prefix is cut short
    for end in range(len(script) - TAIL, len(script) - 1):
        proc = subprocess.run(["sh", "-s"], input=script[:end], capture_output=True, check=False)
        assert snapshot(root) == before, f"a script cut at byte {end} of {len(script)} acted: {proc.stdout!r}"
    full = subprocess.run(["sh", "-s"], input=script, capture_output=True, check=False)
    assert full.returncode == 0 and b"@ok" in full.stdout, full.stdout + full.stderr
    assert (root / "etc/extra.conf").read_text() == "x\n"
