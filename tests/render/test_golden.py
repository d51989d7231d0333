"""Every bundled profile and example renders to the bytes recorded in
tests/cases/render_golden.json: a refactoring that changes a rendered file, or a
catalog edit that changes one, shows up here as a named file, not as a surprise on a
host. After an intended change: `scripts/update-render-golden`, and review its diff.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from provisioner.render.pipeline import build
from tests.conftest import ROOT, good_profiles

GOLDEN = ROOT / "tests" / "cases" / "render_golden.json"


def rendered_digests() -> dict[str, dict[str, str]]:
    """profile (repository path, plus @node for a cluster's nodes) -> file -> mode:sha256."""
    out: dict[str, dict[str, str]] = {}
    for path in good_profiles():
        built = build(path, model_root="", network=False)
        cluster = built.spec.profile.cluster
        nodes = [n.name for n in cluster.nodes] if cluster is not None else [None]
        for node in nodes:
            rendered = built.rendered if node is None else built.rendered_for(node=node)
            key = path.relative_to(ROOT).as_posix() + (f"@{node}" if node else "")
            out[key] = {f.path: f"{f.mode_text}:{hashlib.sha256(f.content).hexdigest()}" for f in rendered.files}
    return out


def test_every_profile_renders_its_recorded_bytes() -> None:
    got = rendered_digests()
    if os.environ.get("PROVISION_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    changed = [f"{profile}: {file}" for profile in sorted(set(got) | set(want))
               for file in sorted(set(got.get(profile, {})) | set(want.get(profile, {})))
               if got.get(profile, {}).get(file) != want.get(profile, {}).get(file)]
    assert not changed, ("rendered bytes differ from tests/cases/render_golden.json (intended? run "
                         "scripts/update-render-golden and review the diff):\n" + "\n".join(changed))


def test_the_golden_file_covers_every_profile() -> None:
    want = json.loads(GOLDEN.read_text())
    assert {k.split("@")[0] for k in want} == {p.relative_to(ROOT).as_posix() for p in good_profiles()}
    assert all(want.values()), "a profile that renders no file would make the comparison empty"


def test_a_changed_byte_is_caught(tmp_path: Path) -> None:
    """The comparison itself: one profile with one changed value names the file that moved."""
    source = ROOT / "examples" / "quickstart.yaml"
    changed = tmp_path / "quickstart.yaml"
    changed.write_text(source.read_text().replace("vm.swappiness: 10", "vm.swappiness: 11"))
    a = {f.path: f.content for f in build(source, model_root="", network=False).rendered.files}
    b = {f.path: f.content for f in build(changed, model_root="", network=False).rendered.files}
    assert [p for p in a if a[p] != b.get(p)] == ["/etc/sysctl.d/90-provision-llm-server.conf"]
