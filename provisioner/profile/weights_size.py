"""The real size of a catalog quant's weights, when something exact is at hand.

The catalog's ``bytes`` is what a file listing showed, or (``bytes_verified: false``) a
figure recalled from that page and not re-read. Exact sizes come from the profile's own
``model.source.files[].bytes`` (which verify checks against the files) or from its
PROFILE.lock (the hub's LFS sizes, lock/sizes.py). With either, fit places those bytes and
says where they came from; without, an unverified catalog figure is shown as an estimate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from provisioner.catalog.schema import QuantSpec
from provisioner.profile.resolve import Spec
from provisioner.units import format_size

# the files an engine loads as weights; configs, tokenizers and READMEs are left out
WEIGHT_SUFFIXES = (".gguf", ".safetensors")
_SHARD = re.compile(r"-(?P<k>[0-9]{5})-of-(?P<of>[0-9]{5})\.gguf$")


def is_weights(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES)


def with_size(spec: Spec, sizes: Iterable[int], source: str) -> Spec:
    """``spec`` with its quant's weights at the sum of ``sizes`` (exact), read from ``source``."""
    total = sum(sizes)
    if total <= 0:
        return spec
    quant = spec.quant.model_copy(update={"bytes": total, "bytes_verified": True})
    return dataclasses.replace(spec, quant=quant, weights_size_from=source)


def _all_shards(paths: list[str]) -> bool:
    """Whether every "-0000k-of-0000N.gguf" series among ``paths`` is whole: a profile may
    name only the first shard (llama.cpp finds the rest), whose bytes are not the total."""
    series: dict[tuple[str, int], set[int]] = {}
    for path in paths:
        if (m := _SHARD.search(path)) is not None:
            series.setdefault((path[:m.start()], int(m["of"])), set()).add(int(m["k"]))
    return all(found == set(range(1, of + 1)) for (_, of), found in series.items())


def sized_by_files(spec: Spec) -> Spec:
    """The profile's files, when every weight file among them names its bytes and no shard
    of a series is missing."""
    files = [f for f in spec.profile.model.source.files or [] if is_weights(f.path)]
    if not files or any(f.bytes is None for f in files) or not _all_shards([f.path for f in files]):
        return spec
    return with_size(spec, (f.bytes or 0 for f in files), f"model.source.files ({len(files)} file(s))")


def size_label(quant: QuantSpec) -> str:
    """The quant's size as fit prints it: '~' marks a catalog figure nobody re-read."""
    return format_size(quant.bytes) if quant.bytes_verified else f"~{format_size(quant.bytes)}"


def estimate_note(spec: Spec) -> str | None:
    """What fit says when the weights it placed are an unverified catalog figure."""
    if spec.quant.bytes_verified or spec.weights_size_from:
        return None
    how = (f"run `provision lock {spec.loaded.path}` for the exact size"
           if spec.profile.model.source.hf is not None else
           "give model.source.files their bytes for the exact size")
    return f"{size_label(spec.quant)}, catalog estimate: {how}"
