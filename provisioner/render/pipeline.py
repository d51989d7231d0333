"""The pure pipeline: profile file -> Profile -> Spec -> Placement -> Rendered (with
installs), and writing a rendered tree to a folder."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from provisioner.errors import ProfileError, UsageError
from provisioner.facts.gguf_layout import local_layout
from provisioner.fit import fit
from provisioner.fit.placement import Placement
from provisioner.fit.suggest import suggestions
from provisioner.install import Install
from provisioner.install.select import install_items
from provisioner.lock import apply_lock, profile_lock
from provisioner.lock.sizes import real_size
from provisioner.profile.cluster import chosen_node, nodes_of
from provisioner.profile.loader import load_profile
from provisioner.profile.nodes import ClusterNodes
from provisioner.profile.resolve import Spec, resolve
from provisioner.render.files import render
from provisioner.render.inputs import consulted
from provisioner.render.resources import Rendered
from provisioner.units import format_size


@dataclass(frozen=True)
class Built:
    """A profile built for one target: resolved, placed, its installs resolved once, and
    rendered with the profile's own facts (a host's facts render it again, ``rendered_for``)."""

    spec: Spec
    placement: Placement
    rendered: Rendered
    installs: tuple[Install, ...] = ()  # every item of the profile (a cluster node takes its share)

    def rendered_for(self, facts: dict[str, str] | None = None, node: str | None = None) -> Rendered:
        return render(self.spec, self.placement, facts, node=node, installs=self.installs)

    @property
    def nodes(self) -> ClusterNodes:
        return nodes_of(self.spec)


def build(path: Path, *, ignore_fit: bool = False, overrides: dict[str, Any] | None = None,
          model_root: str | None = None, network: bool = True, require_lock: bool = False) -> Built:
    """``model_root``: where the model files are readable ("" this machine, a --root DIR);
    None (a remote host) plans with the catalog's sizes. With the files, placement uses
    the real per-layer sizes of their GGUF header, exactly as `provision fit` does.
    ``network`` False: a Hugging Face model download is checked but not resolved
    (validate, render). ``require_lock``: a model source named by branch or tag must have a
    fresh PROFILE.lock (plan, apply, verify on a target); without it such a source is left out
    of the installs, never asked of the hub."""
    loaded = load_profile(path, overrides)
    lock = profile_lock(loaded)
    loaded = apply_lock(loaded, lock, required=require_lock)
    spec = real_size(resolve(loaded), lock)
    if model_root is not None:
        for item in spec.profile.model.source.files or []:
            consulted(model_root + item.path)  # whether they are here decides the layout fit uses
        spec = dataclasses.replace(spec, layout=local_layout(spec, model_root)[0])
    placement = fit(spec)
    if not placement.fits and not ignore_fit:
        fitting = [s for s in suggestions(spec, placement) if s["fits"]]
        cheapest = f"cheapest change that fits: {fitting[0]['change']}; " if fitting else ""
        raise ProfileError(loaded.problem(
            ("model",),
            f"{spec.model.name} {spec.profile.model.quant} at {placement.context} tokens does "
            f"not fit this machine: {format_size(placement.missing_bytes)} missing",
            f"{cheapest}`provision fit` shows the placement and every option, or pass --ignore-fit"))
    installs = install_items(spec, network=network, lock=lock)
    return Built(spec, placement, render(spec, placement, installs=installs), installs)


def for_node(built: Built, node: str) -> Built:
    """The profile as one named cluster node renders it (--node NAME, checked)."""
    return replace(built, rendered=built.rendered_for(node=chosen_node(built.spec, node)))


def write_tree(rendered: Rendered, out_dir: Path, *, overwrite: bool) -> list[Path]:
    """Write each file under out_dir (its absolute path made relative), with its mode."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"--out {out_dir} is not empty",
                         hint="choose an empty folder or pass --overwrite")
    written: list[Path] = []
    for directory in rendered.directories:
        target = out_dir / directory.path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, directory.mode)
    for item in rendered.files:
        target = out_dir / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.provision-tmp")
        temp.write_bytes(item.content)
        os.chmod(temp, item.mode)
        os.replace(temp, target)
        written.append(target)
    return written
