"""The model's files must be the quant the profile names.

A profile that extends a library profile and changes ``model.quant`` keeps the
library's file paths unless it says otherwise: fit would then place one quant
while the run script loads another. A path, ``hf.file`` or ``hf.include``
pattern that names another quant of the same catalog model and format (as a
word between ``/ _ . * -``) and not the profile's own quant is refused at its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from provisioner.catalog.schema import ModelSpec
from provisioner.errors import Problem
from provisioner.profile.loader import LoadedProfile
from provisioner.profile.models import Profile

Where = tuple[str | int, ...]


def _names(text: str, quant: str) -> bool:
    return re.search(rf"(^|[/_.*-]){re.escape(quant.lower())}($|[/_.*-])", text.lower()) is not None


def _paths(loaded: LoadedProfile) -> Iterator[tuple[Where, str]]:
    source = loaded.profile.model.source
    for i, item in enumerate(source.files or []):
        yield ("model", "source", "files", i, "path"), item.path
    if source.hf is not None:
        for i, pattern in enumerate(source.hf.include):
            yield ("model", "source", "hf", "include", i), pattern
        if source.hf.file:
            yield ("model", "source", "hf", "file"), source.hf.file


def quant_path_rules(loaded: LoadedProfile, model: ModelSpec) -> list[Problem]:
    quant = loaded.profile.model.quant
    own = model.quants.get(quant)
    # only quants of the same format: gpt-oss's GGUF quant MXFP4_MOE ships as files named "mxfp4",
    # the name of its safetensors quant
    others = [q for q, spec in model.quants.items() if q != quant and own is not None and spec.format == own.format]
    out = []
    for where, text in _paths(loaded):
        if _names(text, quant):
            continue
        named = next((q for q in others if _names(text, q)), None)
        if named is not None:
            out.append(loaded.problem(
                where, f"{text} is the {named} quant, but model.quant is {quant}",
                f"point model.source at the {quant} files (an hf source picks them from the quant when "
                "include is left out), then run `provision lock`"))
    return out


_SHARD = "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf"


def hf_include(loaded_profile: Profile) -> list[str]:
    """The globs an hf source downloads: its own include, else the quant's GGUF files, the
    quant as a whole word before ``.gguf`` or a shard suffix (``Q2_K`` must not take
    ``Q2_K_L`` or ``UD-Q2_K_XL``), in the case given and in lower case (repos use both).
    fnmatch's ``*`` crosses ``/``, so shards in a QUANT/ folder match."""
    model = loaded_profile.model
    assert model.source.hf is not None
    if model.source.hf.include:
        return list(model.source.hf.include)
    if loaded_profile.runtime.engine in ("llama.cpp", "ollama"):
        names = dict.fromkeys((model.quant, model.quant.lower()))
        return [f"*[-_./]{name}{end}" for name in names for end in (".gguf", _SHARD)]
    return []  # a safetensors repo is one quant: every file
