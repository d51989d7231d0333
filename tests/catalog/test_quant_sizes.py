"""Every quant size in models.yaml is either read from the page it cites or flagged as
recalled (bytes_verified: false), and the flag and the file's "# unverified:" comments
agree, so code (fit's estimate, profile/weights_size.py) acts on what the comments say."""

from __future__ import annotations

import re

import yaml

from provisioner.catalog import Catalog, load_catalog
from tests.conftest import ROOT

MODELS = ROOT / "provisioner" / "catalog" / "models.yaml"


def _quant_blocks() -> dict[tuple[str, str], str]:
    """(model id, quant name) -> the quant's lines in models.yaml, comments included."""
    blocks: dict[tuple[str, str], str] = {}
    model = quant = None
    in_quants = False
    for line in MODELS.read_text().splitlines():
        if re.match(r"^[a-z0-9][\w.-]*:\s*$", line):
            model, in_quants, quant = line.rstrip(":").strip(), False, None
        elif re.match(r"^  quants:\s*$", line):
            in_quants = True
        elif re.match(r"^  \S", line):
            in_quants, quant = False, None
        elif in_quants and re.match(r"^    \S", line) and not line.strip().startswith("#"):
            quant = str(yaml.safe_load(line.strip().rstrip(":")))
            blocks[(str(model), quant)] = ""
        elif quant is not None:
            blocks[(str(model), quant)] += line + "\n"
    return blocks


def test_the_flag_and_the_unverified_comments_agree() -> None:
    catalog: Catalog = load_catalog()
    blocks = _quant_blocks()
    assert set(blocks) == {(m, q) for m, spec in catalog.models.items() for q in spec.quants}
    for (model, quant), text in blocks.items():
        flagged = not catalog.models[model].quants[quant].bytes_verified
        commented = "unverified" in text
        assert flagged == commented, (
            f"{model} {quant}: bytes_verified is {not flagged} but the comments "
            f"{'say' if commented else 'do not say'} unverified")


def test_the_sizes_read_in_the_hub_listings() -> None:
    """Sums of the per-shard sizes the Hub's folder listings show (models.yaml comments)."""
    models = load_catalog().models
    read = {("deepseek-r1", "UD-IQ1_S"): 140_200_000_000, ("deepseek-r1", "UD-Q2_K_XL"): 226_600_000_000,
            ("deepseek-r1", "Q4_K_M"): 404_300_000_000, ("deepseek-v3", "Q4_K_M"): 404_400_000_000,
            ("llama-3.1-8b", "Q4_K_M"): 4_920_000_000, ("llama-3.1-8b", "Q8_0"): 8_540_000_000,
            ("llama-3.3-70b", "Q4_K_M"): 42_500_000_000, ("llama-3.3-70b", "Q8_0"): 74_900_000_000,
            ("gpt-oss-20b", "MXFP4"): 13_760_000_000}
    for (model, quant), size in read.items():
        spec = models[model].quants[quant]
        assert spec.bytes_verified and spec.bytes == size, (model, quant)
