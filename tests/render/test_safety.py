"""No profile value can smuggle a command or an extra setting into a rendered file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.errors import ProvisionError, RenderError
from provisioner.render.files import env_value, sh_quote, sysctl_value, systemd_word
from provisioner.render.pipeline import build

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
HOSTILE = ["a\nb", "x; reboot", "$(reboot)", "`id`", "a'b", 'a"b', "100%", "$HOME", "a\\", "\x00"]


@pytest.mark.parametrize("value", [v for v in HOSTILE if "\x00" not in v])
def test_sh_quote_is_one_word(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf '%s' {sh_quote(value)}"], capture_output=True,
                         text=True, check=True).stdout
    assert out == value


@pytest.mark.parametrize("value", ["x; reboot", "$(reboot)", "100%", "$HOME", 'a"b', "a\\"])
def test_systemd_word_escapes_specifiers_and_quotes(value: str) -> None:
    word = systemd_word(value)
    assert word.startswith('"') and word.endswith('"')
    inner = word[1:-1]
    assert "%" not in inner.replace("%%", "")
    assert "$" not in inner.replace("$$", "")


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "\x00", "x\x1b[2J"])
def test_control_characters_are_refused_everywhere(value: str) -> None:
    for escape in (systemd_word, env_value, sysctl_value):
        with pytest.raises(RenderError):
            escape(value)


def test_env_value_round_trips_through_systemd_quoting() -> None:
    assert env_value('a"b$c\\d') == '"a\\"b\\$c\\\\d"'


@pytest.mark.parametrize("value", ["1\nkernel.panic = 1", "1; reboot", "$(id)"])
def test_sysctl_value_refuses_anything_but_plain_words(value: str) -> None:
    with pytest.raises(RenderError):
        sysctl_value(value)


def _with(tmp_path: Path, patch: dict[str, object], extra_files: dict[str, str] | None = None) -> Path:
    data = yaml.safe_load(QUICKSTART.read_text())
    for dotted, value in patch.items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    for name, text in (extra_files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("field", "value"), [
    ("os.sysctl", {"vm.swappiness": "10\nkernel.core_pattern = |/bin/sh"}),
    ("os.sysctl", {"vm.swappiness\nkernel.x": 1}),
    ("service.name", "llm\nExecStartPre=/bin/rm"),
    ("service.user", "root\nUser=root"),
    ("runtime.extra_args", ["--x", "$(reboot)"]),
    ("runtime.extra_args", ["--x\n--y"]),
    ("runtime.bind", "127.0.0.1\nExecStart=/bin/sh"),
    ("model.quant", "UD-Q3_K_XL\n"),
    ("secrets.api_key", {"from_env": "X\nY"}),
    ("secrets.api_key", {"from_file": "/etc/key file%i"}),
    ("metadata.description", "x\ny"),
])
def test_hostile_profile_values_are_refused(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ProvisionError):
        build(_with(tmp_path, {field: value}))


def test_user_template_cannot_escape_the_sandbox(tmp_path: Path) -> None:
    profile = _with(tmp_path, {"files": [{"template": "evil.j2", "dest": "/etc/evil.conf"}]},
                    {"evil.j2": "{{ ''.__class__.__mro__[1].__subclasses__() }}\n"})
    with pytest.raises(RenderError):
        build(profile)


def test_user_template_value_with_newline_is_refused(tmp_path: Path) -> None:
    profile = _with(tmp_path, {"files": [{"template": "t.j2", "dest": "/etc/t.conf"}]},
                    {"t.j2": "x={{ 'a\\nb' }}\n"})
    with pytest.raises(RenderError):
        build(profile)


def test_user_template_renders_with_the_profile_context(tmp_path: Path) -> None:
    profile = _with(tmp_path, {"files": [{"template": "t.j2", "dest": "/etc/t.conf", "mode": "0600"}]},
                    {"t.j2": "port={{ profile.runtime.port }} service={{ service.name }}\n"})
    rendered = build(profile).rendered
    item = rendered.file("/etc/t.conf")
    assert item.content == b"port=8080 service=llm-server\n"
    assert item.mode == 0o600
