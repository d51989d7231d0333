"""Per-layer weight sizes from a real GGUF header (sparse full-size files from tests/support/ggufs.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from gguf import GGMLQuantizationType

from provisioner.cli.fit import fit_command
from provisioner.converge.fleet import Target
from provisioner.facts.gguf_layout import EXPERT_TENSOR, layout_of, local_layout, read_layout
from provisioner.fit import fit
from provisioner.fit.placement import WeightSplit
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.render.pipeline import build
from tests.conftest import ROOT
from tests.support.ggufs import moe_tensors, tensor_bytes, write_moe_header

PROFILE = ROOT / "examples" / "fit-real-gguf.yaml"  # names the file write_moe_header writes, by size
MODEL_PATH = "/srv/models/qwen3-30b-a3b/Qwen3-30B-A3B-BF16attn-Q4_K-experts.gguf"


def _model_under(root: Path, layers: int = 48) -> Path:
    model = Path(str(root) + MODEL_PATH)
    model.parent.mkdir(parents=True)
    write_moe_header(model, layers=layers)
    return model


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
    _model_under(root)
    spec = resolve(load_profile(PROFILE))
    layout, note = local_layout(spec, str(root))
    assert layout is not None and note is None
    assert local_layout(spec, str(tmp_path / "elsewhere")) == (None, None)  # files not here: catalog


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
    _model_under(root)
    assert fit_command(PROFILE, None, True, root=str(root)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights_from"] == "GGUF header of Qwen3-30B-A3B-BF16attn-Q4_K-experts.gguf"
    assert fit_command(PROFILE, None, True) == 0  # no file here: the size the profile names, spread evenly
    assert json.loads(capsys.readouterr().out)["weights_from"] == "model.source.files (1 file(s))"


def test_a_file_with_other_layers_falls_back_with_a_warning(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    size = write_moe_header(model, layers=40)
    data = yaml.safe_load(PROFILE.read_text())
    data["model"]["source"]["files"] = [{"path": str(model), "bytes": size, "sha256": "0" * 64}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = resolve(load_profile(path))
    placed = fit(dataclasses.replace(spec, layout=local_layout(spec)[0]))
    assert placed.weights_from == "catalog"
    assert any("40 layers" in w for w in placed.warnings)


def test_a_file_of_another_size_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another quant or a partial download at the profile's path: not the file the profile
    names, so its sizes are not used, and fit says why."""
    root = tmp_path / "root"
    model = _model_under(root)
    with model.open("r+b") as handle:
        handle.truncate(model.stat().st_size - 4096)
    spec = resolve(load_profile(PROFILE))
    layout, note = local_layout(spec, str(root))
    assert layout is None and note is not None and "the profile names 19415225869" in note
    fit_command(PROFILE, None, True, root=str(root))
    data = json.loads(capsys.readouterr().out)
    assert data["weights_from"] == "model.source.files (1 file(s))" and "the profile names" in data["warnings"][0]


def test_what_fit_places_is_what_the_run_script_states(tmp_path: Path) -> None:
    """render/apply build with the same file: the rendered --n-cpu-moe is fit's, not the
    catalog estimate's; a remote host's build (model_root None) keeps the estimate."""
    root = tmp_path / "root"
    _model_under(root)
    spec = dataclasses.replace(resolve(load_profile(PROFILE)), layout=local_layout(resolve(load_profile(PROFILE)),
                                                                                   str(root))[0])
    real_n = fit(spec).cpu_moe_layers
    here = build(PROFILE, model_root=str(root))
    remote = build(PROFILE)
    script = "".join(f.content.decode() for f in here.rendered.files if f.validate == "sh")
    assert here.placement.cpu_moe_layers == real_n and f"--n-cpu-moe {real_n}" in script
    assert remote.placement.cpu_moe_layers < real_n
    target = Target("local", PROFILE, lambda: None, model_root=str(root))  # type: ignore[arg-type,return-value]
    assert target.build(False).placement.cpu_moe_layers == real_n


def test_suggesting_another_quant_forgets_the_file_read(tmp_path: Path) -> None:
    from provisioner.fit.suggest import _with

    root = tmp_path / "root"
    _model_under(root)
    spec = resolve(load_profile(PROFILE))
    spec = dataclasses.replace(spec, layout=local_layout(spec, str(root))[0])
    assert spec.layout is not None
    other = _with(spec, model={"quant": "Q8_0"}, quant=spec.model.quants["Q8_0"])
    assert other.layout is None
    assert _with(spec, model={"context": 8192}).layout is spec.layout


def test_a_damaged_file_of_the_right_size_does_not_stop_planning(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Garbage with the profile's exact size: fit, validate, plan and verify go on with the
    catalog's sizes (verify reports the file); fit says why."""
    root = tmp_path / "root"
    model = _model_under(root)
    size = model.stat().st_size
    with model.open("r+b") as handle:
        handle.write(b"GGUF\xff\xff\xff\xff")  # an impossible version
    assert model.stat().st_size == size
    spec = resolve(load_profile(PROFILE))
    layout, note = local_layout(spec, str(root))
    assert layout is None and note is not None and "cannot read the GGUF header" in note
    assert build(PROFILE, model_root=str(root)).placement.weights_from == "model.source.files (1 file(s))"
    fit_command(PROFILE, None, True, root=str(root))
    assert "cannot read the GGUF header" in json.loads(capsys.readouterr().out)["warnings"][0]
