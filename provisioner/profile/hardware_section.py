"""The profile's ``hardware:`` section: the GPUs (catalog ids or described inline), the
RAM with its type and channels or a measured bandwidth, and the CPU.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from provisioner.profile.field_types import HINT_MARK, Bytes, ProfileModel, Text
from provisioner.units import parse_size

# What `provision init` writes for a number nvidia-smi cannot report; validate refuses it.
PLACEHOLDER = "FILL-IN"


def _filled(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(PLACEHOLDER):
        what = value.removeprefix(PLACEHOLDER).lstrip(": ") or "this number"
        raise ValueError(f"not filled in yet ({PLACEHOLDER}){HINT_MARK}put {what} here")
    return value


Measured = Annotated[float, BeforeValidator(_filled), Field(gt=0, le=100_000)]


class InlinePcie(ProfileModel):
    gen: Annotated[int, BeforeValidator(_filled), Field(ge=3, le=6)]
    """PCIe generation of the slot the GPU runs at (nvidia-smi pcie.link.gen.max)."""
    lanes: Annotated[int, BeforeValidator(_filled), Field(ge=1, le=16)]
    """PCIe lanes (nvidia-smi pcie.link.width.max)."""


class InlineGpu(ProfileModel):
    """A GPU the catalog lacks, described in the profile (checked like a catalog entry by
    profile/inline_gpu.py): the numbers fit needs, from the board's data sheet."""

    name: Text
    """The board's name, as nvidia-smi prints it."""
    memory: Annotated[int, BeforeValidator(parse_size), BeforeValidator(_filled), Field(gt=0)]  # last runs first
    """Memory size, e.g. 20GiB."""
    bandwidth_gb_s: Measured
    """Memory bandwidth in GB/s, from the data sheet."""
    bf16_tflops: Measured
    """Dense (not sparse) BF16/FP16 tensor TFLOPS, from the data sheet."""
    fp8_tflops: Measured | None = None
    """Dense FP8 tensor TFLOPS where the board has FP8 (Ada, Hopper, Blackwell)."""
    compute_capability: Annotated[str, BeforeValidator(_filled), Field(pattern=r"^[0-9]+\.[0-9]+$")]
    """CUDA compute capability, e.g. "8.9" (nvidia-smi compute_cap)."""
    pcie: InlinePcie | None = None
    """The PCIe link; leave it out only with unified_memory."""
    unified_memory: bool = False
    """One memory pool shared with the CPU and the OS (GB10, Jetson): no PCIe hop."""
    pci_device_id: Annotated[str, Field(pattern=r"^0x[0-9a-f]{4}$")] | None = None
    """The PCI device id ("0x2684"), so verify can match the board."""
    sources: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = []
    """URLs of the data sheet the numbers come from."""


class GpuEntry(ProfileModel):
    """A catalog GPU by id (``model``) or one described inline (``spec``)."""

    model: Text | None = None
    """A GPU id from the catalog (provisioner/catalog/gpus.yaml), e.g. rtx-pro-6000-blackwell."""
    spec: InlineGpu | None = None
    """A GPU the catalog lacks, described from its data sheet (docs/models.md)."""
    count: int = Field(default=1, ge=1, le=16)
    """How many of this GPU the machine (or node) has."""

    @model_validator(mode="after")
    def _one(self) -> GpuEntry:
        if (self.model is None) == (self.spec is None):
            raise ValueError("give exactly one of model (a catalog id) or spec (the GPU described inline)")
        return self


class Memory(ProfileModel):
    """RAM for the roofline: a type and channel count, or a measured bandwidth."""

    type: Annotated[str, Field(pattern=r"^(ddr4|ddr5|lpddr5x?|hbm[0-9e]*)-[0-9]{3,5}$")] | None = None
    """Memory type and speed in MT/s, e.g. ddr5-5600: with channels, the theoretical bandwidth."""
    channels: int | None = Field(default=None, ge=1, le=24)
    """Populated memory channels (with type)."""
    bandwidth_gb_s: float | None = Field(default=None, gt=0, le=20000)
    """A measured RAM bandwidth in GB/s; used instead of type x channels."""

    @model_validator(mode="after")
    def _type_or_measured(self) -> Memory:
        if self.bandwidth_gb_s is None and (self.type is None or self.channels is None):
            raise ValueError("give either type and channels (ddr5-5600, 2) or bandwidth_gb_s")
        return self

    def bandwidth(self) -> float:
        """Bandwidth in GB/s: measured if given, else the theoretical peak."""
        if self.bandwidth_gb_s is not None:
            return self.bandwidth_gb_s
        assert self.type is not None and self.channels is not None
        mt_s = int(self.type.rsplit("-", 1)[1])
        return mt_s * 8 * self.channels / 1000  # 64-bit channel: 8 bytes per transfer


class Cpu(ProfileModel):
    cores: int = Field(ge=1, le=1024)
    """Physical CPU cores: the engine's default thread count and fit's CPU compute."""
    numa_nodes: int = Field(default=1, ge=1, le=64)
    """NUMA nodes; above 1 the run script adds --numa distribute when weights sit in RAM."""


class Hardware(ProfileModel):
    gpus: list[GpuEntry] = []
    """The machine's GPUs by catalog id and count; empty for CPU only (and for a cluster, whose nodes list theirs)."""
    ram: Bytes
    """Installed system RAM, a size with its unit: 192GiB (2^30) or 96GB (10^9); a bare 192G is refused."""
    memory: Memory
    """The RAM's type and channels, or its measured bandwidth (fit's CPU speed model)."""
    cpu: Cpu
    """The CPU's cores and NUMA nodes."""

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)
