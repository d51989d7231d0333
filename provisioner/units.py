"""Sizes with units. Decimal (GB) and binary (GiB) are never confused; a bare
"G" is refused because half the world means GB by it and the other half GiB."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

GIB = 2**30

_FACTORS: dict[str, int] = {
    "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
MAX_BYTES = 2**60  # 1 EiB: anything above is a typo, not a machine


def parse_size(value: object) -> int:
    """'192GiB' -> 206158430208, '96GB' -> 96000000000, 4096 -> 4096."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 192GiB or 96GB, got a boolean")
    if isinstance(value, int):
        number = Decimal(value)
        unit = "B"
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"expected a size such as 192GiB or 96GB, got {value!r}")
        try:
            number = Decimal(match.group(1))
        except InvalidOperation as exc:  # pragma: no cover - the regex guards it
            raise ValueError(f"not a number: {value!r}") from exc
        unit = match.group(2).upper() or "B"
        if unit in {"K", "M", "G", "T"}:
            raise ValueError(
                f"ambiguous unit in {value!r}: write {match.group(1)}{unit}iB (binary) "
                f"or {match.group(1)}{unit}B (decimal)"
            )
        if unit not in _FACTORS:
            raise ValueError(f"unknown unit {match.group(2)!r} in {value!r}: use B, KB..TB, KiB..TiB")
    else:
        raise ValueError(f"expected a size such as 192GiB or 96GB, got {type(value).__name__}")
    total = number * _FACTORS[unit]
    if total != total.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of bytes")
    if total < 0:
        raise ValueError(f"size must not be negative, got {value!r}")
    if total > MAX_BYTES:
        raise ValueError(f"{value!r} is absurdly large (more than 1 EiB)")
    return int(total)


def format_size(num_bytes: int) -> str:
    """Human size in binary units, e.g. 206158430208 -> '192.0 GiB'."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
