"""The bundled catalog: GPUs, models and engines, as data with sources."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError

from provisioner.catalog.schema import (
    Catalog,
    EngineFlag,
    EngineSpec,
    EngineVersion,
    GpuSpec,
    ModelSpec,
    QuantSpec,
    SamplingSpec,
)
from provisioner.errors import CatalogError

__all__ = [
    "Catalog",
    "EngineFlag",
    "EngineSpec",
    "EngineVersion",
    "GpuSpec",
    "ModelSpec",
    "QuantSpec",
    "SamplingSpec",
    "catalog_table",
    "load_catalog",
]

_PARTS = ("gpus", "models", "engines")


def load_bundled_yaml(text: str) -> Any:
    """Parse YAML that ships with provision (catalog, manifest): trusted, so the C
    parser (much faster than the pure-Python one) is fine; profiles never come here."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader either way


@functools.cache
def catalog_table(part: str) -> dict[str, Any]:
    """One bundled table beside the catalog (fit.yaml, cluster.yaml): parsed once."""
    return _read(part)


def _read(part: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"{part}.yaml").read_text(encoding="utf-8")
    data = load_bundled_yaml(text)
    if not isinstance(data, dict):
        raise CatalogError(f"catalog {part}.yaml is not a mapping", file=f"{part}.yaml")
    return data


@functools.cache
def load_catalog() -> Catalog:
    raw = {part: _read(part) for part in _PARTS}
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CatalogError(
            f"bundled catalog is invalid at {where}: {first['msg']}",
            hint="this is a bug in provision's catalog data; please report it",
        ) from exc
