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
