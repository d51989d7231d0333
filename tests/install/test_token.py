"""secrets.hf_token on the host: a download that needs the token gets it through a
0600 header file written just before and removed just after, from where the
profile says (a file, or a variable of the service's secrets file); the token
shows nowhere. A loopback stand-in answers 401 without the header."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_profile
from tests.support.http_standin import HttpStandin, Served

TOKEN = "hf_testTOKEN0123456789"  # noqa: S105 (a test token)

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare(1): /run is a private tmpfs for the header file")


def _apply(profile: Path, root: Path) -> subprocess.CompletedProcess[str]:
    """apply --root with /run private (the header file lives in /run/provision), then list what is left there."""
    inner = (f"mount -t tmpfs tmpfs /run && {sys.executable} -m provisioner apply {profile} --root {root} --yes; "
             "code=$?; ls -A /run/provision 2>/dev/null | sed 's/^/LEFT /' >&2; exit $code")
    return subprocess.run(["unshare", "-m", "sh", "-c", inner], capture_output=True, text=True, check=False,
                          cwd=ROOT)


@pytest.mark.parametrize("where", ["secrets_env", "file"])
def test_a_gated_download_gets_the_hosts_token_and_leaves_it_nowhere(tmp_path: Path, where: str) -> None:
    data = os.urandom(50_000)
    root = tmp_path / "image"
    if where == "secrets_env":
        secret = {"from_env": "HF_TOKEN"}
        target = root / "etc/provision/llm-server/secrets.env"
        target.parent.mkdir(parents=True)
        target.write_text(f'LLM_API_KEY="x"\nHF_TOKEN="{TOKEN}"\n')
    else:
        secret = {"from_file": "/etc/hf-token"}
        target = root / "etc/hf-token"
        target.parent.mkdir(parents=True)
        target.write_text(TOKEN + "\n")
    target.chmod(0o600)
    with HttpStandin() as http:
        url = http.serve("/gated/m.gguf", Served(data, require=("Authorization", f"Bearer {TOKEN}")))
        model = {"path": "/srv/models/m/m.gguf", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                 "url": url}
        profile = make_profile(tmp_path, {"builtin_files": False, "model.source": {"files": [model]},
                                          "secrets.hf_token": secret, "install": {"model": True}})
        result = _apply(profile, root)
        assert result.returncode == 0, result.stderr + result.stdout
        assert (root / "srv/models/m/m.gguf").read_bytes() == data
        assert [r.status for r in http.to("/gated/m.gguf")][-1] == 200
    assert "LEFT" not in result.stderr  # the header file is gone
    manifest = (root / "var/lib/provision/generations/1/manifest.json").read_text()
    for text in (result.stdout, result.stderr, manifest):
        assert TOKEN not in text


def test_no_token_where_the_profile_says_fails_before_any_request(tmp_path: Path) -> None:
    data = b"x" * 1000
    root = tmp_path / "image"
    with HttpStandin() as http:
        url = http.serve("/gated/m.gguf", Served(data, require=("Authorization", f"Bearer {TOKEN}")))
        model = {"path": "/srv/models/m/m.gguf", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                 "url": url}
        profile = make_profile(tmp_path, {"builtin_files": False, "model.source": {"files": [model]},
                                          "secrets.hf_token": {"from_env": "HF_TOKEN"}, "install": {"model": True}})
        result = _apply(profile, root)
        assert result.returncode == 1
        assert "no token in HF_TOKEN of /etc/provision/llm-server/secrets.env" in result.stderr
        assert http.requests == []
