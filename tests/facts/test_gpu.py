"""The one GPU record and the one --query-gpu CSV parser, on recorded real rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provisioner.facts.gpu import CLOCK_BITS, Gpu, catalog_gpu_id, load_xid_table, parse_query_row, query_fields

ROOT = Path(__file__).resolve().parents[2]
CAPTURE = ROOT / "tests/cases/monitor/rtx-4080-super-595-capture.yaml"


def _capture() -> tuple[list[str], dict[str, str]]:
    data = yaml.safe_load(CAPTURE.read_text())
    names = [re.sub(r" \[.*\]$", "", n.strip()) for n in data["gpu"]["header"].split(", ")]
    return names, data["gpu"]


def test_one_row_serves_every_reader() -> None:
    """The full 200-column capture of an RTX 4080 SUPER: the fields verify asks for and those
    monitor asks for come out of the same row, with units and [N/A] handled."""
    names, rows = _capture()
    gpu = parse_query_row(names, rows["load"])
    assert gpu is not None
    assert (gpu.index, gpu.bus_id, gpu.name, gpu.device_id, gpu.driver) == (
        0, "00000000:01:00.0", "NVIDIA GeForce RTX 4080 SUPER", "0x2702", "595.71.05")
    assert (gpu.temperature_c, gpu.power_w, gpu.power_limit_w, gpu.power_default_w, gpu.power_max_w) == (
        46.0, 84.24, 320.0, 320.0, 400.0)
    assert (gpu.sm_clock_mhz, gpu.memory_used_mib, gpu.memory_total_mib, gpu.utilization_pct) == (
        2805.0, 1474.0, 16376.0, 7.0)
    assert (gpu.pcie_gen_current, gpu.pcie_gen_max, gpu.pcie_width_current, gpu.pcie_width_max) == (4, 4, 16, 16)
    assert (gpu.persistence, gpu.clock_mask, gpu.clock_reasons) == (False, 0, ())
    # [N/A] on a GeForce card: no ECC, no retired pages, no row remapping
    assert (gpu.ecc_uncorrected, gpu.retired_sbe, gpu.retired_pending, gpu.remapped_uncorrectable) == (
        None, None, None, None)
    assert gpu.catalog_id == "rtx-4080-super"


def test_idle_row_decodes_the_clock_mask() -> None:
    names, rows = _capture()
    gpu = parse_query_row(names, rows["idle"])
    assert gpu is not None and gpu.clock_mask == 1 and gpu.clock_reasons == ("Idle",)
    assert CLOCK_BITS[1] == "Idle"


@pytest.mark.parametrize("row", ["No devices were found",
                                 "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
                                 "0, 43"])
def test_a_row_that_does_not_match_the_fields_is_none(row: str) -> None:
    assert parse_query_row(query_fields("index,temperature.gpu,power.draw"), row) is None


def test_not_known_values_are_none() -> None:
    gpu = parse_query_row(query_fields("index, power.draw, pcie.link.gen.max, name, persistence_mode"),
                          "1, [N/A], [Not Supported], N/A, [Unknown Error]")
    assert gpu == Gpu(index=1)


def test_merged_keeps_what_the_other_did_not_read() -> None:
    first = Gpu(bus_id="00000000:01:00.0", name="NVIDIA H100 80GB HBM3", power_limit_w=700.0)
    second = Gpu(bus_id="00000000:01:00.0", power_limit_w=350.0, clock_reasons=())
    assert first.merged(second) == Gpu(bus_id="00000000:01:00.0", name="NVIDIA H100 80GB HBM3",
                                       power_limit_w=350.0, clock_reasons=())


def test_catalog_id_by_pci_device_id_then_name() -> None:
    assert catalog_gpu_id("0x2bb1", None) == "rtx-pro-6000-blackwell"
    assert catalog_gpu_id(None, "NVIDIA GeForce RTX 4090") == "rtx-4090"
    assert catalog_gpu_id("0xffff", "Some Future GPU") is None


def test_xid_table_is_data_with_source() -> None:
    table = load_xid_table()
    assert table[79]["severity"] == "fail"
    assert "docs.nvidia.com/deploy/xid-errors" in (ROOT / "provisioner/facts/xid.yaml").read_text()
