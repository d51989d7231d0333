"""`provision init` on recorded facts (tests/cases/init/*.yaml): each case is a host's
gather output as the gather script prints it (base facts, the GPU probe's `@gpu`
lines, init's `@init` lines) and the library profile init must choose for it.

Every profile init writes must pass what `provision validate` checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.cli.init import init_command
from provisioner.draft.host import choose_profile, render_init_profile
from provisioner.errors import ProvisionError, UsageError
from provisioner.facts.host import host_facts
from provisioner.render.pipeline import build
from provisioner.transport import Completed

ROOT = Path(__file__).resolve().parents[2]
CASES = sorted((ROOT / "tests" / "cases" / "init").glob("*.yaml"))


def _case(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_cases_cover_the_brief() -> None:
    names = {p.stem for p in CASES}
    assert {"rtx-pro-6000-192g", "rtx-4090-64g", "2x-rtx-3090-128g", "cpu-only-256g"} <= names


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_recorded_host(path: Path, tmp_path: Path) -> None:
    case = _case(path)
    facts = host_facts(case["facts"])
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(ProvisionError) as info:
            choose_profile(facts, case.get("model"))
        assert expect["error"] in info.value.first.message
        assert "closest:" in info.value.first.message
        return
    choice = choose_profile(facts, case.get("model"))
    assert choice.base == expect["base"], case["description"]
    assert choice.adapted is expect["adapted"]
    text = render_init_profile(choice)
    data = yaml.safe_load(text)
    assert data["extends"] == expect["base"]
    hw = data["hardware"]
    assert hw["gpus"] == expect["gpus"]
    assert hw["ram"] == expect["ram"]
    assert hw["cpu"] == {"cores": expect["cores"], "numa_nodes": expect["numa_nodes"]}
    if "memory_type" in expect:
        assert hw["memory"]["type"] == expect["memory_type"]
    # comments say where the values come from and what fit predicts
    assert f"Predicted by provision fit on this host: {choice.chosen.decode_tokens_per_s:.1f} tok/s" in text
    assert choice.chosen.decode_tokens_per_s > 0
    assert "# MemTotal" in text or "# dmidecode" in text
    if expect.get("verify_floor_lowered"):
        assert data["verify"]["min_tokens_per_s"] == pytest.approx(choice.chosen.decode_tokens_per_s / 2, abs=0.1)
    else:
        assert "verify" not in data
    # what init prints validates: schema, catalog, fit, render
    out = tmp_path / "host.yaml"
    out.write_text(text, encoding="utf-8")
    built = build(out, network=False)  # printed profiles validate; plan would need their lock
    assert built.placement.fits
    assert built.spec.profile.metadata.name == data["metadata"]["name"]


def test_validate_cli_accepts_an_init_profile(tmp_path: Path) -> None:
    choice = choose_profile(host_facts(_case(CASES[0])["facts"]))
    out = tmp_path / "host.yaml"
    out.write_text(render_init_profile(choice), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(out)],
                            capture_output=True, text=True, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_unknown_gpu_is_written_inline_for_the_user_to_finish(tmp_path: Path) -> None:
    text = _case(ROOT / "tests/cases/init/rtx-4090-64g.yaml")["facts"]
    line = next(ln for ln in text.splitlines() if ln.startswith("@gpu line csv-core"))
    extra = line.replace("00000000:01:00.0", "00000000:02:00.0").replace("NVIDIA GeForce RTX 4090", "Future GPU") \
        .replace("0x268410DE", "0xFFFF10DE")
    # what INIT_GATHER's nvidia-smi query prints for it: bus id, memory.total (MiB), compute_cap
    board = "@init gpu 00000000:02:00.0, 32607, 12.0"
    facts = host_facts(text.replace(line, line + "\n" + extra) + board + "\n")
    assert facts.gpu_groups == (("rtx-4090", 1),)
    assert [(g.name, g.memory_total_mib, g.compute_cap) for g in facts.unknown_gpus] == [("Future GPU", 32607, "12.0")]
    out = render_init_profile(choose_profile(facts))
    assert "GPU 'Future GPU' (PCI device 0xffff) is not in the catalog: described inline" in out
    spec = yaml.safe_load(out)["hardware"]["gpus"][0]["spec"]
    assert spec["memory"] == "32607MiB" and spec["compute_capability"] == "12.0"
    assert spec["pci_device_id"] == "0xffff" and spec["pcie"] == {"gen": 4, "lanes": 16}
    path = tmp_path / "host.yaml"
    path.write_text(out, encoding="utf-8")
    # the numbers nvidia-smi cannot give are placeholders validate refuses, naming what to put there
    with pytest.raises(ProvisionError) as refused:
        build(path)
    message = str(refused.value)
    assert "hardware.gpus[0].spec.bandwidth_gb_s: not filled in yet" in message
    assert "memory bandwidth in GB/s" in message and "bf16_tflops" in message
    # filled in, the profile validates and fit places the model on both GPUs
    filled = out.replace(spec["bandwidth_gb_s"], "1792").replace(spec["bf16_tflops"], "209.5")
    path.write_text(filled, encoding="utf-8")
    built = build(path)
    names = [d.name for d in built.placement.gpus]
    assert names == ["GPU0 Future GPU", "GPU1 NVIDIA GeForce RTX 4090"]
    assert built.spec.gpus[0].spec.vram == 32607 * 2**20 and built.spec.gpus[0].spec.architecture == "blackwell"


def test_model_filter_and_unknown_model() -> None:
    facts = host_facts(_case(ROOT / "tests/cases/init/rtx-pro-6000-192g.yaml")["facts"])
    assert choose_profile(facts, "llama-3.3-70b").base == "rtx-pro-6000-llama-3.3-70b-q8-llamacpp"
    with pytest.raises(UsageError) as info:
        choose_profile(facts, "no-such-model")
    assert "library models:" in (info.value.first.hint or "")


class _Recorded:
    """A transport that answers the gather script with recorded output."""

    name = "recorded"
    root = ""
    state_dir = "/var/lib/provision"

    def __init__(self, output: str) -> None:
        self.output = output
        self.scripts: list[str] = []

    def close(self) -> None:
        pass

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        self.scripts.append(script)
        return Completed(0, self.output, "")


def test_init_command_prints_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    transport = _Recorded(_case(ROOT / "tests/cases/init/rtx-4090-64g.yaml")["facts"])
    assert init_command(transport, None) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["extends"] == "rtx-4090-qwen3-30b-a3b-llamacpp"
    assert "rtx-4090-qwen3-30b-a3b-llamacpp" in err
    assert len(transport.scripts) == 1  # one round trip
    assert "@gpu" in transport.scripts[0] and "@init" in transport.scripts[0]


def test_init_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    transport = _Recorded(_case(ROOT / "tests/cases/init/2x-rtx-3090-128g.yaml")["facts"])
    assert init_command(transport, None, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["command"] == "init" and data["ok"] is True and data["error"] is None
    assert data["base"] == "rtx-3090-gpt-oss-120b-llamacpp" and data["adapted"] is True
    assert data["decode_tokens_per_s"] > 0
    assert yaml.safe_load(data["profile"])["hardware"]["gpus"] == [{"model": "rtx-3090", "count": 2}]
