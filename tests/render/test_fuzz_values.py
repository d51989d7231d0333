"""Hypothesis over every string field of a profile: hostile text (shell metacharacters,
newlines, systemd % specifiers, Jinja, unicode, very long values) either fails validation,
one line per problem, or renders files that their own tools accept (sh -n, systemd-analyze
verify) and that carry the value as inert data: the run script, executed against a stub
engine, runs nothing the value says and passes extra_args through byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from provisioner.errors import ProvisionError
from provisioner.render.pipeline import build, write_tree
from tests.render.test_rendered_files import verify_problems

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
RUN = "/opt/provision/bin/llm-server-run.sh"
UNIT = "/etc/systemd/system/llm-server.service"
CANARY = "PWNED"

# field -> how a value is put there (dotted path, the value wrapped as the field needs it)
FIELDS: dict[str, tuple[str, Any]] = {
    "metadata.name": ("metadata.name", lambda v: v),
    "metadata.description": ("metadata.description", lambda v: v),
    "runtime.version": ("runtime.version", lambda v: v),
    "runtime.bind": ("runtime.bind", lambda v: v),
    "runtime.extra_args": ("runtime.extra_args", lambda v: ["--alias", v]),
    "model.quant": ("model.quant", lambda v: v),
    "service.user": ("service.user", lambda v: v),
    "service.group": ("service.group", lambda v: v),
    "secrets.api_key.from_env": ("secrets.api_key", lambda v: {"from_env": v}),
    "secrets.hf_token.from_file": ("secrets.hf_token", lambda v: {"from_file": v}),
    "files.dest": ("files", lambda v: [{"template": "t.j2", "dest": v}]),
    "vars": ("vars", lambda v: {"x": v}),
    "os.sysctl": ("os.sysctl", lambda v: {"vm.swappiness": v}),
    "handlers.notify": ("files", lambda v: [{"template": "t.j2", "dest": "/etc/t.conf", "notify": [v]}]),
}
FRAGMENTS = [f"$(touch {CANARY})", f"`touch {CANARY}`", f";touch {CANARY}", f"|touch {CANARY}", "%n", "%%",
             "${HOME}", "\n", "\r", "\x00", "'", '"', "\\", "{{ 7*7 }}", "{% raw %}", "#", " ", "=", "/../",
             "é", "\u2028", "\U0001f600", "--", "0.0.0.0", "::1%eth0", "/etc/x", "a" * 4000]  # noqa: S104
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
# printable ASCII and the metacharacters among it: values that often pass validation, so the
# rendered files are checked too, not only the refusals
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), min_size=1, max_size=40)
# the characters extra_args, paths and names allow, with a few they do not
ALLOWED = st.text(st.sampled_from("abcXYZ019_./:=,+@%-$;`|& "), min_size=1, max_size=30)
VALUES = st.one_of(ALLOWED, st.lists(st.one_of(st.sampled_from(FRAGMENTS), TEXT), min_size=1, max_size=4).map("".join),
                   PRINTABLE, st.lists(st.sampled_from([*FRAGMENTS[:6], "a", "-", "_", "%", "."]), min_size=1,
                                       max_size=5).map("".join))


def _profile(folder: Path, field: str, value: str) -> Path:
    data = yaml.safe_load(yaml.safe_dump(QUICKSTART))
    dotted, wrap = FIELDS[field]
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = wrap(value)
    (folder / "t.j2").write_text("x={{ x | default('') | sh }}\n")
    path = folder / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def _stub_engine(folder: Path) -> Path:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    engine = bin_dir / "llama-server"
    engine.write_text('#!/bin/sh\nfor a in "$@"; do printf \'%s\\0\' "$a"; done > "$ARGS_OUT"\n')
    engine.chmod(0o755)
    return bin_dir


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(sorted(FIELDS)), value=VALUES)
def test_a_hostile_value_is_refused_or_inert(tmp_path_factory: pytest.TempPathFactory, field: str,
                                             value: str) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    try:
        built = build(_profile(folder, field, value))
    except ProvisionError as exc:
        assert exc.problems and all("\n" not in p.one_line() for p in exc.problems)
        event(f"refused: {field}")
        return
    event(f"rendered: {field}")
    tree = folder / "tree"
    write_tree(built.rendered, tree, overwrite=True)
    for item in built.rendered.files:
        if item.validate == "sh":
            check = subprocess.run(["sh", "-n", str(tree / item.path.lstrip("/"))], capture_output=True, check=False)
            assert check.returncode == 0, f"{field}={value!r}: {item.path}: {check.stderr!r}"
    if shutil.which("systemd-analyze"):
        for stub in ("/usr/bin/nvidia-smi", "/bin/sh", "/usr/bin/sh"):
            (tree / stub.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (tree / stub.lstrip("/")).write_text("#!/bin/sh\nexit 0\n")
            (tree / stub.lstrip("/")).chmod(0o755)
        assert not verify_problems(tree, UNIT), f"{field}={value!r}"
    work = folder / "work"
    work.mkdir()
    args_out = folder / "args"
    run = subprocess.run(["sh", str(tree / RUN.lstrip("/"))], cwd=work, capture_output=True, check=False, timeout=30,
                         env={"PATH": f"{_stub_engine(folder)}:/usr/bin:/bin", "LLM_API_KEY": "k",
                              "ARGS_OUT": str(args_out), "HOME": str(work),
                              **({value: "k"} if field == "secrets.api_key.from_env" else {})})
    assert run.returncode == 0, f"{field}={value!r}: {run.stderr!r}"
    assert not (work / CANARY).exists() and not (folder / CANARY).exists(), f"{field}={value!r} ran a command"
    argv = args_out.read_bytes().split(b"\0")[:-1]
    if field == "runtime.extra_args":
        assert value.encode() in argv, f"{value!r} did not reach the engine as one argument"
    assert os.listdir(work) == [], "the run script wrote nothing but through the engine"
