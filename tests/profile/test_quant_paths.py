"""An hf source without include downloads the quant's files, every shard and nothing else,
listed from the Hub stand-in (tests/support/hub_standin.py) as plan would."""

from __future__ import annotations

from pathlib import Path

from provisioner.install.select import install_items
from provisioner.profile.loader import load_profile
from provisioner.profile.model_section import HfSource
from provisioner.profile.quant_paths import hf_include
from provisioner.profile.resolve import resolve
from tests.conftest import ROOT, make_profile
from tests.support.http_standin import HttpStandin
from tests.support.hub_standin import HubRepo, serve_repo

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SHARDS = {f"UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-0000{i}-of-00003.gguf": bytes([i]) * (1000 + i) for i in (1, 2, 3)}
OTHER = {"Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf": b"q4" * 600, "README.md": b"# card\n"}


def _hf_profile(tmp_path: Path, quant: str = "UD-Q3_K_XL") -> Path:
    return make_profile(tmp_path, {"model.quant": quant, "install": {"model": True}, "model.source": {
        "hf": {"repo": "unsloth/Qwen3-235B-A22B-GGUF", "revision": COMMIT, "dest": "/srv/models/q",
               "file": f"{quant}/Qwen3-235B-A22B-{quant}-00001-of-00003.gguf"}}})


def test_without_include_the_quant_selects_its_files(tmp_path: Path) -> None:
    shard = "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf"
    assert hf_include(load_profile(_hf_profile(tmp_path)).profile) == [
        "*[-_./]UD-Q3_K_XL.gguf", f"*[-_./]UD-Q3_K_XL{shard}", "*[-_./]ud-q3_k_xl.gguf", f"*[-_./]ud-q3_k_xl{shard}"]
    assert hf_include(load_profile(_hf_profile(tmp_path, "Q4_K_M")).profile)[:2] == [
        "*[-_./]Q4_K_M.gguf", f"*[-_./]Q4_K_M{shard}"]


def test_the_default_include_takes_the_quant_as_a_whole_word() -> None:
    """Q2_K must not also download Q2_K_L or UD-Q2_K_XL (a substring glob took all three)."""
    from huggingface_hub.utils._paths import filter_repo_objects  # what hf_hub_download and snapshot use

    files = ["Q2_K/M-Q2_K-00001-of-00002.gguf", "Q2_K/M-Q2_K-00002-of-00002.gguf",
             "Q2_K_L/M-Q2_K_L-00001-of-00002.gguf", "UD-Q2_K_XL/M-UD-Q2_K_XL-00001-of-00002.gguf",
             "m-q2_k.gguf", "README.md"]
    profile = load_profile(ROOT / "examples" / "quickstart.yaml").profile
    hf = HfSource(repo="o/m", revision="main", dest="/srv/models/m")
    profile = profile.model_copy(update={"model": profile.model.model_copy(update={
        "quant": "Q2_K", "source": profile.model.source.model_copy(update={"files": None, "hf": hf})})})
    assert list(filter_repo_objects(files, allow_patterns=hf_include(profile))) == [
        "Q2_K/M-Q2_K-00001-of-00002.gguf", "Q2_K/M-Q2_K-00002-of-00002.gguf", "m-q2_k.gguf"]


def test_every_shard_of_the_quant_is_downloaded_and_no_other_file(tmp_path: Path) -> None:
    with HttpStandin() as hub:
        serve_repo(hub, HubRepo("unsloth/Qwen3-235B-A22B-GGUF", COMMIT, {**SHARDS, **OTHER},
                                lfs=frozenset(p for p in {**SHARDS, **OTHER} if p.endswith(".gguf"))))
        spec = resolve(load_profile(_hf_profile(tmp_path)))
        [download] = [i for i in install_items(spec, hf_endpoint=hub.url(), hf_cache=tmp_path / "cache")
                      if i.name == "download:model"]
    files = download.files  # type: ignore[attr-defined]
    assert sorted(f.dest for f in files) == [f"/srv/models/q/{p}" for p in sorted(SHARDS)]
    assert all(len(f.sha256) == 64 for f in files)
