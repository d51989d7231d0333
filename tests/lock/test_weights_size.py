"""A catalog size nobody re-read (bytes_verified: false) is an estimate until something exact
is at hand: fit says so and how to get the exact size; after `provision lock` (against the
Hub stand-in on loopback) it places the bytes the lock pins and names the lock; the
profile's own files' bytes do the same; and the estimate never lands in a rendered file."""

from __future__ import annotations

import json
from pathlib import Path

from provisioner.catalog import load_catalog
from provisioner.cli.fit import fit_result
from provisioner.render.pipeline import build
from tests.conftest import make_profile
from tests.lock.test_lock import COMMIT, DEST, REPO, _shards, provision
from tests.support.http_standin import HttpStandin

# the quickstart's quant: its catalog size was recalled, not re-read (models.yaml)
QUANT = "UD-Q3_K_XL"
FIRST = f"{QUANT}/Qwen3-235B-A22B-{QUANT}-00001-of-00003.gguf"


def _profile(tmp_path: Path) -> Path:
    return make_profile(tmp_path, {"model.quant": QUANT,
                                   "model.source": {"hf": {"repo": REPO, "revision": "main", "dest": DEST,
                                                           "file": FIRST}}})


def test_the_quickstart_quant_is_flagged_as_recalled() -> None:
    quant = load_catalog().models["qwen3-235b-a22b"].quants[QUANT]
    assert quant.bytes_verified is False


def test_fit_shows_an_estimate_until_the_lock_gives_the_real_bytes(tmp_path: Path, hub: HttpStandin) -> None:
    profile = _profile(tmp_path)
    before = provision(hub, "fit", "--ignore-fit", "--json", str(profile))
    assert before.returncode == 0, before.stderr
    size = json.loads(before.stdout)["weights_size"]
    catalog = load_catalog().models["qwen3-235b-a22b"].quants[QUANT].bytes
    assert size["bytes"] == catalog and size["exact"] is False
    assert f"catalog estimate: run `provision lock {profile}` for the exact size" in size["note"]
    shown = provision(hub, "fit", "--ignore-fit", str(profile))
    human = shown.stdout + shown.stderr  # the human report goes where emit puts it
    assert "weights: catalog (~" in human and "catalog estimate" in human

    locked = provision(hub, "lock", str(profile))
    assert locked.returncode == 0, locked.stderr
    after = provision(hub, "fit", "--ignore-fit", "--json", str(profile))
    assert after.returncode == 0, after.stderr
    data = json.loads(after.stdout)
    shards = sum(len(c) for c in _shards(QUANT, 3).values())
    assert data["weights_from"] == f"p.lock (3 file(s) at {COMMIT[:12]})"
    assert data["weights_size"] == {"bytes": shards, "exact": True, "note": None}
    assert sum(d["weights_bytes"] for d in data["devices"]) == shards


def test_the_profiles_own_file_bytes_are_exact_too(tmp_path: Path) -> None:
    shards = {f"/srv/models/q/Qwen3-235B-A22B-{QUANT}-0000{i}-of-00003.gguf": 30_000_000_000 + i for i in (1, 2, 3)}
    profile = make_profile(tmp_path, {"model.quant": QUANT, "model.source": {
        "files": [{"path": path, "bytes": size} for path, size in shards.items()]}})
    result = fit_result(profile, None, ignore_fit=True, read_model_files=False)
    assert result.fields["weights_from"] == "model.source.files (3 file(s))"
    assert result.fields["weights_size"] == {"bytes": sum(shards.values()), "exact": True, "note": None}


def test_one_named_shard_of_three_is_not_taken_for_the_total(tmp_path: Path) -> None:
    first = f"/srv/models/q/Qwen3-235B-A22B-{QUANT}-00001-of-00003.gguf"
    profile = make_profile(tmp_path, {"model.quant": QUANT, "model.source": {
        "files": [{"path": first, "bytes": 49_950_000_000}]}})
    result = fit_result(profile, None, ignore_fit=True, read_model_files=False)
    assert result.fields["weights_from"] == "catalog"
    assert result.fields["weights_size"]["exact"] is False


def test_a_what_if_quant_is_priced_by_the_catalog_not_the_lock(tmp_path: Path, hub: HttpStandin) -> None:
    profile = _profile(tmp_path)
    assert provision(hub, "lock", str(profile)).returncode == 0
    what_if = provision(hub, "fit", "--set", "model.quant=Q4_K_M", "--ignore-fit", "--json", str(profile))
    assert what_if.returncode == 0, what_if.stderr
    data = json.loads(what_if.stdout)
    assert data["weights_from"] == "catalog"
    assert data["weights_size"]["bytes"] == load_catalog().models["qwen3-235b-a22b"].quants["Q4_K_M"].bytes


def test_an_estimated_size_is_written_into_no_rendered_file(tmp_path: Path) -> None:
    built = build(_profile(tmp_path), ignore_fit=True, network=False)
    estimate = str(built.spec.quant.bytes)
    assert built.spec.quant.bytes_verified is False
    assert not [f.path for f in built.rendered.files if estimate.encode() in f.content]


def test_safetensors_in_subfolders_are_not_counted(tmp_path: Path) -> None:
    """gpt-oss keeps its original checkpoint in original/: vLLM loads the top-level files only."""
    from provisioner.lock import Lock, LockedFile, ModelLock, lock_path
    from provisioner.lock.sizes import real_size
    from provisioner.profile.loader import load_profile
    from provisioner.profile.resolve import resolve

    repo = "openai/gpt-oss-120b"
    profile = make_profile(tmp_path, {
        "runtime.engine": "vllm", "runtime.version": "0.33.0", "model.id": "gpt-oss-120b", "model.quant": "MXFP4",
        "model.kv_cache": "auto", "model.mode": "thinking", "model.context": 8192, "install.model": False,
        "model.source": {"hf": {"repo": repo, "revision": "main", "include": ["*.safetensors"], "dest": "/srv/m"}}})
    top = (LockedFile("model-00000-of-00001.safetensors", 4_000, "a" * 64),)
    lock = ModelLock(repo, "main", ("*.safetensors",), COMMIT,
                     (*top, LockedFile("original/model--00001-of-00001.safetensors", 9_000, "b" * 64)))
    spec = real_size(resolve(load_profile(profile)), Lock(lock))
    assert spec.quant.bytes == 4_000
    assert spec.weights_size_from == f"{lock_path(profile).name} (1 file(s) at {COMMIT[:12]})"


def test_a_commit_pinned_source_is_sized_by_the_listing_plan_cached(tmp_path: Path, hub: HttpStandin) -> None:
    """No lock for a 40-hex revision: once plan has listed it, fit reads the cached listing offline."""
    profile = make_profile(tmp_path, {"model.quant": QUANT, "install": {"model": True},
                                      "model.source": {"hf": {"repo": REPO, "revision": COMMIT, "dest": DEST,
                                                              "file": FIRST}}})
    before = json.loads(provision(hub, "fit", "--ignore-fit", "--json", str(profile)).stdout)
    assert before["weights_from"] == "catalog" and before["weights_size"]["exact"] is False
    planned = provision(hub, "plan", "--root", str(tmp_path / "image"), "--ignore-fit", str(profile))
    assert planned.returncode in (0, 2), planned.stderr
    after = json.loads(provision(hub, "fit", "--ignore-fit", "--json", str(profile)).stdout)
    shards = sum(len(c) for c in _shards(QUANT, 3).values())
    assert after["weights_from"] == f"the cached Hub listing of {REPO}@{COMMIT[:12]} (3 file(s))"
    assert after["weights_size"] == {"bytes": shards, "exact": True, "note": None}
