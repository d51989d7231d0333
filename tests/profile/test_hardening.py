"""Profile values a hostile review found passing validation and breaking apply, leaking a
secret or being silently coerced: each is refused in one line (exit 1, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.errors import ProvisionError
from provisioner.render.pipeline import build
from tests.conftest import make_profile

TOKEN = "hf_" + "Q" * 34  # the shape of a Hugging Face token, not a real one

REFUSED = {
    "bind with a scope id": ({"runtime.bind": "::1%$(touch PWNED)"}, "scope id"),
    "port as a bool": ({"runtime.port": True}, "expected a number"),
    "cores as a bool": ({"hardware.cpu.cores": True}, "expected a number"),
    "dest with /./": ({"files": [{"template": "x.j2", "dest": "/etc/systemd/system/./llm-server.service"}]},
                      "must name a file"),
    "dest with //": ({"files": [{"template": "x.j2", "dest": "//etc/systemd/system/llm-server.service"}]},
                     "must name a file"),
    "dest a folder": ({"files": [{"template": "x.j2", "dest": "/etc/newdir/"}]}, "must name a file"),
    "dest /etc/.": ({"files": [{"template": "x.j2", "dest": "/etc/."}]}, "must name a file"),
    "dest in the state": ({"files": [{"template": "x.j2", "dest": "/var/lib/provision/last"}]},
                          "provision's own state"),
    "dest a manifest": ({"files": [{"template": "x.j2", "dest": "/var/lib/provision/generations/1/manifest.json"}]},
                        "provision's own state"),
    "dest a managed folder": ({"files": [{"template": "x.j2", "dest": "/opt/provision/bin"}]}, "folder"),
    "dest inside a managed file": ({"files": [{"template": "x.j2", "dest": "/etc/default/llm-server/x"}]},
                                   "inside /etc/default/llm-server"),
    "dest twice": ({"files": [{"template": "x.j2", "dest": "/etc/x"}, {"template": "x.j2", "dest": "/etc/x"}]},
                   "two files render to /etc/x"),
    "--api_key=": ({"runtime.extra_args": ["--api_key=abc"]}, "secret"),
    "--api-ke= (an abbreviation)": ({"runtime.extra_args": ["--api-ke=abc"]}, "secret"),
    "--hf_token=": ({"runtime.extra_args": ["--hf_token=abc"]}, "secret"),
    "-hft then a token": ({"runtime.extra_args": ["-hft", TOKEN]}, "secret"),
    "a token as a value": ({"runtime.extra_args": ["--alias", TOKEN]}, "access token"),
    "a relative from_file": ({"secrets.hf_token": {"from_file": "sk-" + "z" * 30}}, "not repeated"),
    "recursive macro": ({"files": [{"template": "loop.j2", "dest": "/etc/loop"}]}, "calls itself"),
    "huge range": ({"files": [{"template": "range.j2", "dest": "/etc/range"}]}, "too much"),
}
TEMPLATES = {"x.j2": "x\n", "loop.j2": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}\n",
             "range.j2": "{% for i in range(10**9) %}{% endfor %}\n"}


@pytest.mark.parametrize(("patch", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_in_one_line(tmp_path: Path, patch: dict[str, object], message: str) -> None:
    profile = make_profile(tmp_path, patch, TEMPLATES)
    with pytest.raises(ProvisionError, match=message.replace("(", r"\(")):
        build(profile)
    result = CliRunner().invoke(main, ["render", str(profile), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr  # a line per problem
    for secret in (TOKEN, "z" * 30, "abc"):
        assert secret not in result.stderr + result.stdout


def test_a_template_linked_outside_the_profile_is_refused(tmp_path: Path) -> None:
    """A link to a 0600 file elsewhere was rendered into a 0644 file."""
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "key").write_text("secret key\n")
    (outside / "key").chmod(0o600)
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "key.j2").symlink_to(outside / "key")
    profile = make_profile(folder, {"files": [{"template": "key.j2", "dest": "/etc/key.conf"}]})
    with pytest.raises(ProvisionError, match="outside the profile's folder"):
        build(profile)


def test_an_include_linked_outside_the_profile_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "key").write_text("secret key\n")
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "inc.j2").symlink_to(outside / "key")
    profile = make_profile(folder, {"files": [{"template": "t.j2", "dest": "/etc/t.conf"}]},
                           {"t.j2": "{% include 'inc.j2' %}\n"})
    with pytest.raises(ProvisionError, match="leads outside"):
        build(profile)


def test_a_plain_ipv6_bind_and_a_link_inside_the_profile_still_work(tmp_path: Path) -> None:
    (tmp_path / "real.j2").write_text("x\n")
    (tmp_path / "link.j2").symlink_to(tmp_path / "real.j2")
    profile = make_profile(tmp_path, {"runtime.bind": "::1",
                                      "files": [{"template": "link.j2", "dest": "/etc/x.conf"}]})
    files = {f.path: f for f in build(profile).rendered.files}
    assert files["/etc/x.conf"].content == b"x\n"
