"""The apply script's writes, run by this machine's sh: every byte arrives as it was,
ASCII text through the printf builtin and anything else through base64."""

from __future__ import annotations

import subprocess
from pathlib import Path
from shlex import quote

import pytest

from provisioner.converge.shwrite import lines_to, write_bytes

CONTENTS = {
    "quotes and shell signs": b"a='1' b=\"2\" c=$HOME `id` $(id) \\n \\\\ %s %d %% \\0 !\n",
    "trailing newlines kept": b"x\n\n\n",
    "no final newline": b"no newline",
    "control characters": b"tab\there\rcarriage\x1b[0m\x7f\n",
    "empty": b"",
    "utf-8": "grüße ✓\n".encode(),
    "NUL and high bytes": bytes(range(256)),
}


@pytest.mark.parametrize("content", list(CONTENTS.values()), ids=list(CONTENTS))
def test_write_bytes_is_byte_exact(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "out"
    script = "set -eu\n" + write_bytes(content, quote(str(target))) + "\n"
    subprocess.run(["sh", "-s"], input=script.encode(), check=True, timeout=30)
    assert target.read_bytes() == content
    assert ("base64" in script) == (not content.isascii() or b"\0" in content)


def test_lines_to_writes_the_non_empty_lines_or_an_empty_file(tmp_path: Path) -> None:
    some, none = tmp_path / "some", tmp_path / "none"
    script = "set -eu\n" + lines_to(["/etc/a b", "", "it's"], quote(str(some))) + "\n" \
        + lines_to(["", ""], quote(str(none))) + "\n"
    subprocess.run(["sh", "-s"], input=script.encode(), check=True, timeout=30)
    assert some.read_text() == "/etc/a b\nit's\n" and none.read_bytes() == b""
