"""CPU-offload and multi-GPU flags fit states in the run script: threads, NUMA policy, batch
sizes, the tensor split; and the prefill model they go with."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.facts.host_load import HostLoad
from provisioner.fit import fit
from provisioner.fit.predict import pcie_gb_s, prefill_tokens_per_s
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.render.engine_command import chosen_flags
from provisioner.render.files import model_path
from provisioner.render.pipeline import build, write_tree
from provisioner.units import GIB
from tests.conftest import ROOT, make_profile

SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def _flags(path: Path, host: HostLoad | None = None) -> dict[str, object]:
    spec = dataclasses.replace(resolve(load_profile(path)), host=host)
    return chosen_flags(spec, fit(spec), model_path(spec))


def test_threads_and_batches_are_stated(tmp_path: Path) -> None:
    got = _flags(make_profile(tmp_path, {"hardware.cpu": {"cores": 24, "numa_nodes": 1}}))
    assert got["--threads"] == "24" and got["--threads-batch"] == "24"
    assert got["--batch-size"] == "2048" and got["--ubatch-size"] == "512"
    assert "--numa" not in got  # one node: nothing to spread


def test_two_numa_nodes_with_weights_in_ram_distribute(tmp_path: Path) -> None:
    got = _flags(make_profile(tmp_path, {"hardware.cpu": {"cores": 64, "numa_nodes": 2}}))
    assert got["--numa"] == "distribute" and got["--threads"] == "64"
    # everything on the GPU: RAM holds no weights, so no NUMA policy is stated
    small = make_profile(tmp_path, {"hardware.cpu": {"cores": 64, "numa_nodes": 2},
                                    "model.id": "qwen3-30b-a3b", "model.quant": "UD-Q4_K_XL"}, name="s.yaml")
    assert "--numa" not in _flags(small)


def test_two_gpus_get_an_explicit_layer_split(tmp_path: Path) -> None:
    path = make_profile(tmp_path, {"hardware.gpus": [{"model": "rtx-4090", "count": 2}]})
    assert _flags(path)["--tensor-split"] == "50,50"
    assert _flags(path)["--split-mode"] == "layer"
    # another process holds 8 GiB of GPU1: the split follows the memory each has free
    busy = HostLoad(gpu_used_by_others=(0, 8 * GIB))
    assert _flags(path, busy)["--tensor-split"] == "60,40"
    single = make_profile(tmp_path, {}, name="one.yaml")
    assert "--tensor-split" not in _flags(single)


def test_the_run_script_and_env_file_of_two_gpus(tmp_path: Path) -> None:
    """Rendered for real: the split in the run script (shellcheck clean), the device order in
    the environment file, so CUDA's GPU0 is nvidia-smi's GPU0."""
    path = make_profile(tmp_path, {"hardware.gpus": [{"model": "rtx-4090", "count": 2}],
                                   "hardware.cpu": {"cores": 32, "numa_nodes": 2}})
    built = build(path)
    out = tmp_path / "tree"
    write_tree(built.rendered, out, overwrite=True)
    scripts = [f.path for f in built.rendered.files if f.validate == "sh"]
    text = "".join((out / s.lstrip("/")).read_text() for s in scripts)
    assert "--tensor-split 50,50" in text and "--numa distribute" in text and "--threads-batch 32" in text
    env = "".join(f.content.decode() for f in built.rendered.files if f.path.startswith("/etc/default/"))
    assert 'CUDA_DEVICE_ORDER="PCI_BUS_ID"' in env
    for script in scripts:
        result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(out / script.lstrip("/"))],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout


def test_flags_exist_in_the_pinned_binary(llama_server_binary: Path) -> None:
    """numa, split_mode and tensor_split were read from llama-server b11312's --help: the
    real binary (scripts/build-llama-server, shared with the endpoint tests) still lists them."""
    text = subprocess.run([str(llama_server_binary), "--help"], capture_output=True, text=True, check=False).stdout
    for flag in ("--numa TYPE", "distribute", "isolate", "numactl", "--split-mode", "--tensor-split N0,N1",
                 "--threads-batch N", "--batch-size N", "--ubatch-size N"):
        assert flag in text, flag


def test_prefill_with_experts_in_ram_is_bounded_by_pcie(tmp_path: Path) -> None:
    """Per ubatch llama.cpp copies the RAM-resident experts to the GPU: with most of
    gpt-oss-120b's experts in RAM behind a 3090's PCIe 4 link that copy, not the GPU's
    compute, sets the prompt speed (the two overlap: the longer one counts)."""
    spec = resolve(load_profile(ROOT / "profiles" / "rtx-3090-gpt-oss-120b-llamacpp.yaml"))
    placement = fit(spec)
    assert placement.ram.weights_bytes > 20 * GIB
    copy_s = placement.ram.weights_bytes / (pcie_gb_s(spec) * 1e9 * 0.80)
    assert prefill_tokens_per_s(spec, placement) == pytest.approx(512 / copy_s, rel=1e-6)
    # the same model entirely in VRAM: compute-bound, much faster
    big = resolve(load_profile(ROOT / "profiles" / "rtx-pro-6000-gpt-oss-120b-vllm.yaml"))
    assert prefill_tokens_per_s(big, fit(big)) > 5 * prefill_tokens_per_s(spec, placement)


def test_the_profiles_ubatch_reaches_the_flags_buffer_and_prefill(tmp_path: Path) -> None:
    """runtime.ubatch is the -ub the run script states (the logical batch at least as
    large), the compute buffer fit budgets grows with it, and with experts in RAM the
    prefill model copies them once per ubatch, so a larger one is faster."""
    profile = ROOT / "profiles" / "rtx-3090-gpt-oss-120b-llamacpp.yaml"
    small = resolve(load_profile(profile))
    big = resolve(load_profile(profile, {"runtime": {"ubatch": 4096}}))
    got = chosen_flags(big, fit(big), model_path(big))
    assert got["--ubatch-size"] == "4096" and got["--batch-size"] == "4096"
    assert fit(big).gpus[0].buffers_bytes > fit(small).gpus[0].buffers_bytes
    assert prefill_tokens_per_s(big, fit(big)) > 2 * prefill_tokens_per_s(small, fit(small))
    # a short prompt is one batch of its own length, however large the ubatch: it gains
    # nothing, and the larger buffer pushed more experts to RAM, so it loses
    assert fit(big).ram.weights_bytes > fit(small).ram.weights_bytes
    assert prefill_tokens_per_s(big, fit(big), 128) < prefill_tokens_per_s(small, fit(small), 128)


def test_yarn_only_when_the_context_needs_it_at_the_factor_it_needs(tmp_path: Path) -> None:
    """Qwen3-235B's native context is 32,768: at that context no rope scaling; at 65,536 YaRN
    at factor 2 (the model card's example), not the catalog's largest factor (4), with a
    warning that static YaRN costs quality on short prompts. vLLM gets the same factor."""
    native = _flags(make_profile(tmp_path, {"model.context": 32768}, name="native.yaml"))
    assert "--rope-scaling" not in native and "--rope-scale" not in native
    path = make_profile(tmp_path, {"model.context": 65536}, name="long.yaml")
    got = _flags(path)
    assert got["--rope-scaling"] == "yarn" and got["--rope-scale"] == "2" and got["--yarn-orig-ctx"] == "32768"
    spec = resolve(load_profile(path))
    assert any("static YaRN at factor 2" in w for w in fit(spec).warnings)
    vllm = resolve(load_profile(ROOT / "profiles" / "4x-h100-qwen3-235b-fp8-vllm.yaml",
                                {"model": {"id": "qwen3-235b-a22b", "quant": "FP8", "context": 40960}}))
    overrides = json.loads(str(chosen_flags(vllm, fit(vllm), model_path(vllm))["--hf-overrides"]))
    assert overrides["rope_scaling"]["factor"] == 1.25


def test_fit_chooses_the_ubatch_by_its_prefill_model_and_shows_the_trade_off() -> None:
    """With most experts in RAM every ubatch copies them over PCIe: a larger one makes
    prefill several times faster, while its compute buffer pushes a few more experts off
    the GPU. fit keeps the fastest prefill whose decode stays within fit.yaml's allowance
    of the default's, and reports every size it weighed; a profile's own ubatch wins."""
    profile = ROOT / "profiles" / "rtx-4080-super-qwen3-235b-q2-llamacpp.yaml"
    spec = resolve(load_profile(profile))
    placement = fit(spec)
    options = {o.ubatch: o for o in placement.ubatch_options}
    assert set(options) == {512, 1024, 2048, 4096}
    chosen, default = options[placement.ubatch], options[512]
    assert placement.ubatch > 512 and chosen.prefill_tokens_per_s > 2 * default.prefill_tokens_per_s
    assert default.decode_tokens_per_s * 0.97 <= chosen.decode_tokens_per_s <= default.decode_tokens_per_s
    assert all(o.prefill_tokens_per_s <= chosen.prefill_tokens_per_s or
               o.decode_tokens_per_s < default.decode_tokens_per_s * 0.97 for o in options.values() if o.fits)
    assert options[4096].gpu_buffer_bytes > options[512].gpu_buffer_bytes
    assert chosen_flags(spec, placement, model_path(spec))["--ubatch-size"] == str(placement.ubatch)
    stated = resolve(load_profile(profile, {"runtime": {"ubatch": 512}}))
    assert fit(stated).ubatch_options == () and fit(stated).ubatch == 0


def test_decode_reads_the_files_own_dense_bytes_but_one_embedding_row(tmp_path: Path) -> None:
    """With the GGUF header, a token reads every dense tensor of the file but only one
    row of token_embd: the same bytes moved from the output matrix to the embedding make
    decode faster, and the layout's dense share replaces the catalog's estimate."""
    from provisioner.facts.gguf_layout import layout_of
    from provisioner.fit.predict import predict

    spec = resolve(load_profile(make_profile(tmp_path)))
    layers = spec.model.layers
    per_layer = spec.quant.bytes // (layers + 2)
    body = [(f"blk.{i}.attn_q.weight", per_layer // 4) for i in range(layers)]
    body += [(f"blk.{i}.ffn_up_exps.weight", per_layer - per_layer // 4) for i in range(layers)]
    in_output = layout_of([*body, ("token_embd.weight", 1000), ("output.weight", per_layer)], "a.gguf")
    in_embedding = layout_of([*body, ("token_embd.weight", per_layer), ("output.weight", 1000)], "b.gguf")
    assert in_output.token_embd == 1000 and in_embedding.token_embd == per_layer
    speeds = []
    for layout in (in_output, in_embedding):
        variant = dataclasses.replace(spec, layout=layout)
        speeds.append(predict(variant, fit(variant)).decode_tokens_per_s)
    assert speeds[1] > speeds[0]
