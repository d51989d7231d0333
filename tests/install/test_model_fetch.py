"""A model the catalog lacks, read from a Hub repo on the loopback stand-in: the listing for
the sizes of every shard, the GGUF header (or config.json and safetensors headers) through
range requests; then validate works offline from the cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.errors import ProvisionError
from provisioner.fit.kv import kv_bytes_per_token
from provisioner.install.model_fetch import fetch_model_shape, gguf_files
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from tests.conftest import make_profile
from tests.support.ggufs import LLAMA70B, llama70b_tensors, write_gguf
from tests.support.http_standin import HttpStandin
from tests.support.hub_standin import HubRepo, serve_repo
from tests.support.safetensors_files import write_qwen3_30b

COMMIT = "c0ffee" + "0" * 34
REPO = "acme/Llama-70B-Tune-GGUF"
SHARDS = ["Q4_K_M/Llama-70B-Tune-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/Llama-70B-Tune-Q4_K_M-00002-of-00002.gguf"]


@pytest.fixture
def http() -> Iterator[HttpStandin]:
    with HttpStandin() as standin:
        yield standin


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _gguf_repo(tmp_path: Path) -> HubRepo:
    """Two shards of a 70B GGUF, served as their headers; the listing gives the full sizes."""
    tensors = llama70b_tensors()
    half = len(tensors) // 2
    files: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    for path, part, meta in ((SHARDS[0], tensors[:half], LLAMA70B), (SHARDS[1], tensors[half:], {})):
        local = tmp_path / Path(path).name
        sizes[path] = write_gguf(local, "llama", meta, part, sparse=False)
        files[path] = local.read_bytes()
    files["README.md"] = b"# a fine-tune\n"
    files["Q8_0/Llama-70B-Tune-Q8_0.gguf"] = files[SHARDS[1]]  # another quant: never read
    return HubRepo(REPO, COMMIT, files, frozenset(p for p in files if p.endswith(".gguf")), listed_sizes=sizes)


def _profile(tmp_path: Path, repo: str, quant: str, source: dict[str, object], **patch: object) -> Path:
    return make_profile(tmp_path, {"model.id": repo, "model.quant": quant, "model.source": source,
                                   "model.context": 32768, **patch}, name="hub.yaml")


def test_fit_reads_a_gguf_repo_through_range_requests_then_works_offline(
        tmp_path: Path, http: HttpStandin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    hub = _gguf_repo(tmp_path)
    serve_repo(http, hub)
    monkeypatch.setenv("HF_ENDPOINT", http.url())
    path = _profile(tmp_path, REPO, "Q4_K_M", {"hf": {"repo": REPO, "revision": COMMIT, "dest": "/srv/models/l70",
                                                      "file": SHARDS[0]}})
    with pytest.raises(SystemExit) as done:
        main.main(["fit", str(path), "--json"])
    assert done.value.code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["kv_bytes_per_token"] == 80 * 8 * 128 * 2 * 2
    assert out["weights_from"].startswith(f"GGUF header of {REPO}/{SHARDS[0]}")
    # each shard's header came through a range request, never the whole file
    for shard in SHARDS:
        asked = http.to(f"/{REPO}/resolve/{COMMIT}/{shard}")
        assert asked and all(r.headers.get("range", "").startswith("bytes=0-") for r in asked)
    assert not http.to(f"/{REPO}/resolve/{COMMIT}/Q8_0/Llama-70B-Tune-Q8_0.gguf")
    # offline afterwards: no stand-in, HF_HUB_OFFLINE, and validate and fit still know the model
    http.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = resolve(load_profile(path))
    assert spec.quant.bytes == sum(hub.listed_sizes.values())  # every shard, from the listing
    assert spec.model.layers == 80 and kv_bytes_per_token(spec) == 327680
    with pytest.raises(SystemExit) as validated:
        main.main(["validate", str(path)])
    assert validated.value.code == 0


def test_a_safetensors_repo_is_read_from_config_json_and_headers(
        tmp_path: Path, http: HttpStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "q30"
    sizes = write_qwen3_30b(folder)
    files = {"config.json": (folder / "config.json").read_bytes()}
    listed: dict[str, int] = {}
    for p in folder.glob("*.safetensors"):
        with p.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            handle.seek(0)
            files[p.name] = handle.read(8 + length)  # the header alone is served
        listed[p.name] = p.stat().st_size
    repo = "acme/Qwen3-30B-Tune"
    serve_repo(http, HubRepo(repo, COMMIT, files, frozenset(listed), listed_sizes=listed))
    monkeypatch.setenv("HF_ENDPOINT", http.url())
    path = _profile(tmp_path, repo, "BF16", {"hf": {"repo": repo, "revision": COMMIT, "dest": "/srv/models/q30"}},
                    **{"runtime.engine": "vllm", "runtime.version": "0.11.0", "model.kv_cache": "auto",
                       "hardware.gpus": [{"model": "h100-sxm", "count": 1}]})
    assert fetch_model_shape(load_profile(path).profile) is True
    spec = resolve(load_profile(path))
    assert spec.model.experts_total == 128 and spec.quant.bytes == sum(sizes)
    assert spec.quant.method == "bf16"
    assert fetch_model_shape(load_profile(path).profile) is False  # cached: not asked again


def test_quant_names_pick_their_shards() -> None:
    sizes = dict.fromkeys([
        "UD-Q4_K_XL/M-UD-Q4_K_XL-00001-of-00002.gguf", "UD-Q4_K_XL/M-UD-Q4_K_XL-00002-of-00002.gguf",
        "M-Q4_K_XL.gguf", "M-Q6_K.gguf", "M-BF16.gguf", "mmproj-M-F16.gguf", "Q8_0/M-Q8_0.gguf"], 1)
    assert gguf_files(sizes, "UD-Q4_K_XL", None) == ["UD-Q4_K_XL/M-UD-Q4_K_XL-00001-of-00002.gguf",
                                                     "UD-Q4_K_XL/M-UD-Q4_K_XL-00002-of-00002.gguf"]
    assert gguf_files(sizes, "Q4_K_XL", None) == ["M-Q4_K_XL.gguf"]
    assert gguf_files(sizes, "q6_k", None) == ["M-Q6_K.gguf"]
    assert gguf_files(sizes, "BF16", None) == ["M-BF16.gguf"]
    assert gguf_files(sizes, "Q8_0", None) == ["Q8_0/M-Q8_0.gguf"]
    assert gguf_files(sizes, "*Q6*", None) == ["M-Q6_K.gguf"]
    assert gguf_files(sizes, "x", "UD-Q4_K_XL/M-UD-Q4_K_XL-00001-of-00002.gguf") == [
        "UD-Q4_K_XL/M-UD-Q4_K_XL-00001-of-00002.gguf", "UD-Q4_K_XL/M-UD-Q4_K_XL-00002-of-00002.gguf"]


def test_offline_without_a_record_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _profile(tmp_path, REPO, "Q4_K_M", {"hf": {"repo": REPO, "revision": COMMIT, "dest": "/srv/models/l70",
                                                      "file": SHARDS[0]}})
    with pytest.raises(ProvisionError) as info:
        fetch_model_shape(load_profile(path).profile)
    assert f"is read from {REPO} on the Hub, and HF_HUB_OFFLINE is set" in info.value.first.message


def test_a_state_space_gguf_on_the_hub_is_refused_by_name(
        tmp_path: Path, http: HttpStandin, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "m.gguf"
    write_gguf(local, "mamba", {"block_count": 64, "embedding_length": 4096, "context_length": 8192},
               llama70b_tensors()[:3], sparse=False)
    repo = "acme/Mamba-GGUF"
    serve_repo(http, HubRepo(repo, COMMIT, {"Mamba-Q8_0.gguf": local.read_bytes()}, frozenset({"Mamba-Q8_0.gguf"})))
    monkeypatch.setenv("HF_ENDPOINT", http.url())
    path = _profile(tmp_path, repo, "Q8_0", {"hf": {"repo": repo, "revision": COMMIT, "dest": "/srv/models/m",
                                                    "file": "Mamba-Q8_0.gguf"}})
    with pytest.raises(ProvisionError) as info:
        fetch_model_shape(load_profile(path).profile)
    assert "architecture mamba is not supported: state-space (Mamba) layers" in info.value.first.message
