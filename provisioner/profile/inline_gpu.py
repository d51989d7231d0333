"""A GPU described in the profile (``hardware.gpus[].spec``) becomes a catalog GpuSpec.

The same schema checks it as a catalog entry (GpuSpec's own validator), so fit,
render and verify treat it exactly like a board from gpus.yaml. What a profile
cannot know is derived from tables with sources: the architecture from the compute
capability and the kernel modules every Turing-or-later board runs
(catalog/architectures.yaml). No driver minimum is known for such a board, so none
is checked.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

from provisioner.catalog import GpuSpec, catalog_table
from provisioner.profile.hardware_section import InlineGpu

# the catalog's field names in GpuSpec's messages, as a profile spells them
_SPELLED = (("pcie_gen and pcie_lanes", "pcie: {gen, lanes}"), ("pci_device_ids", "pci_device_id"))


def inline_id(gpu: InlineGpu) -> str:
    """The id a profile's own GPU goes by in fit's output and the GPU groups."""
    return "inline-" + re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-")


def gpu_spec(gpu: InlineGpu, where: str) -> GpuSpec:
    """Raises ValueError (message | hint) when the description is not a valid board."""
    table = catalog_table("architectures")
    architecture = table["compute_capability"].get(gpu.compute_capability)
    if architecture is None:
        known = ", ".join(table["compute_capability"])
        raise ValueError(f"compute capability {gpu.compute_capability} is not one provision supports "
                         f"| hint: Turing (7.5) and later: {known}")
    given = {"vram", "memory_bandwidth_gb_s", "fp16_dense_tflops", "compute_capability", "unified_memory"}
    fields: dict[str, object] = {
        "name": gpu.name, "architecture": architecture, "compute_capability": gpu.compute_capability,
        "vram": gpu.memory, "memory_bandwidth_gb_s": gpu.bandwidth_gb_s, "unified_memory": gpu.unified_memory,
        "fp16_dense_tflops": gpu.bf16_tflops, "fp8_dense_tflops": gpu.fp8_tflops,
        "kernel_modules": list(table["kernel_modules"]), "inline": True,
        "pci_device_ids": [gpu.pci_device_id] if gpu.pci_device_id else [],
    }
    if gpu.fp8_tflops is not None:
        given.add("fp8_dense_tflops")
    if gpu.pcie is not None:
        fields.update(pcie_gen=gpu.pcie.gen, pcie_lanes=gpu.pcie.lanes)
        given |= {"pcie_gen", "pcie_lanes"}
    if gpu.pci_device_id is not None:
        given.add("pci_device_ids")
    sources: dict[str, list[str]] = {url: sorted(given) for url in gpu.sources} or {where: sorted(given)}
    sources.setdefault(table["sources"][0], ["architecture", "kernel_modules"])
    try:
        return GpuSpec.model_validate({**fields, "sources": sources})
    except ValidationError as exc:
        first = exc.errors()[0]
        rule = first["msg"].removeprefix("Value error, ")
        for catalog_name, profile_name in _SPELLED:
            rule = rule.replace(catalog_name, profile_name)
        raise ValueError(f"{rule} | hint: describe the board as the catalog would (docs/models.md)") from None
