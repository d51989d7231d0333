"""plan --root and plan --json show no diff of a file that others on the host may not read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_profile

PRIVATE = "private value 0600"


def test_a_0600_file_is_never_shown(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"files": [
        {"template": "p.j2", "dest": "/etc/private.conf", "mode": "0600"},
        {"template": "o.j2", "dest": "/etc/open.conf"}]}, {"p.j2": PRIVATE + "\n", "o.j2": "open value\n"})
    root = tmp_path / "root"
    base = [sys.executable, "-m", "provisioner", "plan", str(profile), "--root", str(root)]
    text = subprocess.run(base, capture_output=True, text=True, check=False)
    as_json = subprocess.run([*base, "--json"], capture_output=True, text=True, check=False)
    assert text.returncode == as_json.returncode == 2, text.stderr
    assert "open value" in text.stdout + text.stderr, "a world-readable file's diff is shown"
    for out in (text, as_json):
        assert PRIVATE not in out.stdout + out.stderr
    changes = {c["path"]: c for c in json.loads(as_json.stdout)["hosts"][0]["changes"]}
    assert changes["/etc/private.conf"]["diff"] == "<redacted>"
    # ... and once applied, a change that makes it readable still hides the old content
    subprocess.run([sys.executable, "-m", "provisioner", "apply", str(profile), "--root", str(root), "--yes"],
                   check=True, capture_output=True)
    (tmp_path / "p.j2").write_text("new\n")
    again = subprocess.run(base, capture_output=True, text=True, check=False)
    assert PRIVATE not in again.stdout + again.stderr
