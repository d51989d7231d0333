"""Per-layer weight sizes from the GGUF header of the real model file.

The catalog knows a quant's file size and assumes the same bits per weight for
every tensor; real files differ (gpt-oss keeps attention in BF16 and experts in
MXFP4, Unsloth's dynamic quants vary per layer). When the profile's shards are
on this machine (or under --root), fit places the real per-layer bytes instead.

Only the header is read (the ``gguf`` package's reader maps the file and parses
the tensor table; no tensor data is touched). Tensors are split the way
llama.cpp's offload flags move them:

- routed experts: names matching llama.cpp's ``LLM_FFN_EXPS_REGEX``
  ``\\.ffn_(up|down|gate|gate_up)_(ch|)exps`` (common/common.h; ``--n-cpu-moe N``
  overrides ``blk\\.<i>`` + that regex for i < N, common/arg.cpp);
- the rest of ``blk.<i>.*``: attention, norms, router, shared experts (``_shexp``);
- everything outside the blocks (token_embd, output, output_norm): one extra
  "layer", as in the catalog estimate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import ProvisionError

EXPERT_TENSOR = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorLayout:
    """Stored bytes per repeating layer (dense and routed experts) and outside the layers."""

    dense: tuple[int, ...]
    experts: tuple[int, ...]
    outside: int
    source: str  # the file(s) it was read from, for the output
    # of ``outside``: the input embedding table, of which a decode step reads one row
    token_embd: int = 0

    @property
    def layers(self) -> int:
        return len(self.dense)

    @property
    def total(self) -> int:
        return sum(self.dense) + sum(self.experts) + self.outside


def layout_of(tensors: Iterable[tuple[str, int]], source: str = "") -> TensorLayout:
    """Pure: (tensor name, stored bytes) pairs -> per-layer sizes."""
    dense: dict[int, int] = {}
    experts: dict[int, int] = {}
    outside = 0
    token_embd = 0
    for name, size in tensors:
        block = _BLOCK.match(name)
        if block is None:
            outside += size
            token_embd += size if name == "token_embd.weight" else 0
            continue
        layer = int(block.group(1))
        table = experts if EXPERT_TENSOR.search(name) else dense
        table[layer] = table.get(layer, 0) + size
    count = max([*dense, *experts], default=-1) + 1
    return TensorLayout(tuple(dense.get(i, 0) for i in range(count)),
                        tuple(experts.get(i, 0) for i in range(count)), outside, source, token_embd)


def read_layout(paths: list[Path]) -> TensorLayout:
    """The tensor table of every shard (a split model lists each tensor in one shard)."""
    from gguf import GGUFReader  # noqa: PLC0415 - numpy and gguf load only when a file is read

    pairs: list[tuple[str, int]] = []
    for path in paths:
        try:
            reader: Any = GGUFReader(str(path), "r")
        except Exception as exc:  # a damaged file can fail anywhere in the gguf reader
            raise ProvisionError(f"cannot read the GGUF header of {path}: {exc}",
                                 hint="is it a complete GGUF file? `provision verify` checks size and sha256") from None
        pairs += [(str(t.name), int(t.n_bytes)) for t in reader.tensors]
    names = ", ".join(p.name for p in paths)
    return layout_of(pairs, names)


def local_layout(spec: Any, root: str = "") -> tuple[TensorLayout | None, str | None]:
    """(layout, note): the tensor table of the profile's GGUF shards when every one is a
    file here (under ``root``) of exactly the size the profile names. A file of another
    size is another file (another quant, a partial download): its sizes are not used,
    and the note says so."""
    files = spec.profile.model.source.files or []
    if spec.profile.runtime.engine != "llama.cpp" or not files:
        return None, None
    paths = [Path(root + item.path) for item in files]
    if not all(p.is_file() for p in paths):
        return None, None
    for item, path in zip(files, paths, strict=True):
        size = path.stat().st_size
        if item.bytes is not None and size != item.bytes:
            return None, (f"{path} is {size} bytes, the profile names {item.bytes}: placed with the "
                          "catalog's sizes (`provision verify` checks the file)")
    try:
        return read_layout(paths), None
    except ProvisionError as exc:  # a damaged file is verify's finding, not a reason to stop planning
        return None, f"{exc.first.message}: placed with the catalog's sizes"
