"""Per-layer weight sizes from a real GGUF header (sparse full-size files from tests/ggufs.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from gguf import GGMLQuantizationType

from provisioner.fit import WeightSplit, fit
from provisioner.fit_command import fit_command
from provisioner.gguf_layout import EXPERT_TENSOR, layout_of, local_layout, read_layout
from provisioner.loader import load_profile
from provisioner.resolve import resolve
from tests.conftest import ROOT
from tests.ggufs import moe_tensors, tensor_bytes, write_moe_header

PROFILE = ROOT / "profiles" / "rtx-4080-super-qwen3-30b-a3b-llamacpp.yaml"
MODEL_PATH = "/srv/models/qwen3-30b-a3b/Qwen3-30B-A3B-UD-Q4_K_XL.gguf"


@pytest.mark.parametrize(("name", "expert"), [
    ("blk.3.ffn_gate_exps.weight", True), ("blk.3.ffn_up_exps.weight", True),
    ("blk.3.ffn_down_exps.weight", True), ("blk.3.ffn_gate_up_exps.weight", True),
    ("blk.3.ffn_down_chexps.weight", True), ("blk.3.ffn_gate_exps.bias", True),  # gpt-oss biases
    ("blk.3.ffn_up_shexp.weight", False), ("blk.3.ffn_gate_inp.weight", False),
    ("blk.3.attn_q.weight", False), ("blk.3.ffn_up.weight", False)])
def test_expert_tensors_are_what_n_cpu_moe_moves(name: str, expert: bool) -> None:
    assert bool(EXPERT_TENSOR.search(name)) is expert


def test_layout_sums_the_real_tensor_sizes(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_moe_header(path, layers=48)
    layout = read_layout([path])
    tensors = moe_tensors(48, GGMLQuantizationType.BF16, GGMLQuantizationType.Q4_K)
    sizes = {name: tensor_bytes(shape, q) for name, shape, q in tensors}
    assert layout.layers == 48
    assert layout.experts[7] == sum(v for k, v in sizes.items() if k.startswith("blk.7.") and "_exps" in k)
    assert layout.dense[7] == sum(v for k, v in sizes.items() if k.startswith("blk.7.") and "_exps" not in k)
    assert layout.outside == sizes["token_embd.weight"] + sizes["output.weight"] + sizes["output_norm.weight"]
    assert layout.total == sum(sizes.values())


def test_split_shards_add_up() -> None:
    first = layout_of([("token_embd.weight", 100), ("blk.0.attn_q.weight", 10), ("blk.0.ffn_up_exps.weight", 50)])
    both = layout_of([("token_embd.weight", 100), ("blk.0.attn_q.weight", 10), ("blk.0.ffn_up_exps.weight", 50),
                      ("blk.1.attn_q.weight", 12), ("blk.1.ffn_up_exps.weight", 60), ("output.weight", 100)])
    assert (first.layers, both.layers) == (1, 2)
    assert both.dense == (10, 12) and both.experts == (50, 60) and both.outside == 200


def test_fit_places_the_real_per_layer_bytes(tmp_path: Path) -> None:
    """BF16 attention and Q4_K experts (a dynamic quant's mix): the dense part is twice the
    catalog's uniform estimate, so fit keeps more experts in RAM, and the bytes on the GPU
    are exactly those of the tensors of the GPU's layers."""
    root = tmp_path / "root"
    model = Path(str(root) + MODEL_PATH)
    model.parent.mkdir(parents=True)
    write_moe_header(model, layers=48)
    spec = resolve(load_profile(PROFILE))
    layout = local_layout(spec, str(root))
    assert layout is not None
    assert local_layout(spec, str(tmp_path / "elsewhere")) is None  # files not here: catalog


    real = dataclasses.replace(spec, layout=layout)
    catalog_fit, real_fit = fit(spec), fit(real)
    assert real_fit.weights_from.startswith("GGUF header of ")
    assert WeightSplit.of(real).dense[0] > 1.8 * WeightSplit.of(spec).dense[0]
    n = real_fit.cpu_moe_layers
    assert n > catalog_fit.cpu_moe_layers
    on_gpu = sum(layout.dense) + layout.outside + sum(layout.experts[n:])
    assert real_fit.gpus[0].weights_bytes == on_gpu
    assert real_fit.ram.weights_bytes == sum(layout.experts[:n])


def test_fit_command_reads_the_file_under_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    model = Path(str(root) + MODEL_PATH)
    model.parent.mkdir(parents=True)
    write_moe_header(model, layers=48)
    assert fit_command(PROFILE, None, True, root=str(root)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights_from"] == "GGUF header of Qwen3-30B-A3B-UD-Q4_K_XL.gguf"
    assert fit_command(PROFILE, None, True) == 0  # no file here: the catalog's estimate
    assert json.loads(capsys.readouterr().out)["weights_from"] == "catalog"


def test_a_file_with_other_layers_falls_back_with_a_warning(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    write_moe_header(model, layers=40)
    data = yaml.safe_load(PROFILE.read_text())
    data["model"]["source"]["files"][0]["path"] = str(model)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))


    spec = resolve(load_profile(path))
    placed = fit(dataclasses.replace(spec, layout=local_layout(spec)))
    assert placed.weights_from == "catalog"
    assert any("40 layers" in w for w in placed.warnings)
