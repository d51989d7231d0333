"""Fit: where every byte of a model lives on a machine, and how fast it will run (pure).

``fit()`` places one host's model (``placement``) or a cluster's (``cluster``);
``predict`` turns a placement into tok/s; ``suggest`` lists the cheapest changes
that would fit. docs/fit.md explains the model and its evidence.
"""

from __future__ import annotations

from provisioner.fit.cluster import fit_cluster
from provisioner.fit.placement import Placement, fit_layers, fit_vllm
from provisioner.fit.ubatch import choose, chooses_ubatch
from provisioner.profile.resolve import Spec

__all__ = ["Placement", "fit"]


def fit(spec: Spec, context: int | None = None) -> Placement:
    p = spec.profile
    ctx = context or p.model.context
    if p.cluster is not None and not spec.node:
        return fit_cluster(spec, ctx)
    if p.runtime.engine == "vllm":
        return fit_vllm(spec, ctx)
    if chooses_ubatch(spec):
        return choose(spec, lambda variant: fit_layers(variant, ctx))
    return fit_layers(spec, ctx)
