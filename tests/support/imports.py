"""What a `provision` run had imported when it exited (a subprocess, ``sys.modules`` at exit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Heavy libraries a run should load only on the path that needs them.
HEAVY = frozenset({"pydantic", "jinja2", "paramiko", "fabric", "invoke", "cryptography", "rich",
                   "huggingface_hub", "gguf", "numpy", "yaml"})


def imported(args: list[str], cwd: Path, env: dict[str, str]) -> set[str]:
    """The top-level packages a `provision ARGS` run had imported when it exited."""
    out = cwd / "modules.json"
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
            "from provisioner.cli import main\n"
            f"main({args!r}, prog_name='provision')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode in (0, 2), result.stderr
    return {name.split(".")[0] for name in json.loads(out.read_text())}
