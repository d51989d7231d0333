from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def good_profiles() -> list[Path]:
    """Every bundled profile that must validate: the library and the examples."""
    found = sorted((ROOT / "profiles").glob("*.yaml")) + sorted(
        p for p in (ROOT / "examples").rglob("*.yaml")
        if "negative" not in p.parts and p.name != "inventory.yaml"
        and not p.name.startswith("_"))
    return found


@pytest.fixture
def root_dir() -> Path:
    return ROOT


def make_profile(tmp_path: Path, patch: dict[str, object] | None = None,
                 files: dict[str, str] | None = None, name: str = "p.yaml") -> Path:
    """The quickstart profile with dotted-path values replaced (None deletes)."""
    import yaml

    data = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    for dotted, value in (patch or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    for rel, text in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
