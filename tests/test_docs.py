"""The README stays a front page, and every link in it and in docs/ leads somewhere in
the repository (the reference lives in docs/, nothing points outside the checkout)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
# [text](target): a relative target, not a URL and not an anchor on the same page
LINK = re.compile(r"\]\((?!https?://|#)([^)\s]+)\)")
README_MAX_LINES = 250


def _links(page: Path) -> list[str]:
    return [target.split("#", 1)[0] for target in LINK.findall(page.read_text())]


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference text to docs/")


def test_readme_links_the_docs_pages_and_they_exist() -> None:
    linked = [target for target in _links(README) if target.startswith("docs/")]
    for name in ("commands", "profile", "fit", "install", "fleet", "verify", "monitor", "cluster",
                 "export", "safety", "catalog", "dependencies", "benchmark", "architecture"):
        assert f"docs/{name}.md" in linked, f"README does not link docs/{name}.md"
    missing = [target for target in linked if not (ROOT / target).is_file()]
    assert not missing, f"README links pages that do not exist: {missing}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in _links(page):
        resolved = (page.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing in the repository: {broken}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_points_outside_the_repository(page: Path) -> None:
    """The benchmark harness is the one outside thing named, and only on its page."""
    text = page.read_text()
    outside = re.findall(r"\.\./shared/[\w./-]*|DESIGN\.md|/wor[k]/\S*|/roo[t]/\S*", text)
    if page.name == "benchmark.md":
        outside = [o for o in outside if o != "../shared/bench-peers"]
    assert not outside, f"{page.relative_to(ROOT)} names files outside the repository: {outside}"
