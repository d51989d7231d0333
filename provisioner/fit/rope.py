"""YaRN rope scaling: on only when the context needs it, at the factor the context needs.

Qwen's long-context guide (QwenLM/Qwen3 docs/source/inference/transformers.md, "Enabling
long context"): engines implement *static* YaRN, whose factor applies to every prompt and
can cost quality on short ones, so rope_scaling is added only when long contexts are
required, with the factor the application's context needs: 65,536 tokens on a 32,768
native model -> 2.0. The catalog's ``yarn_factor`` is the largest factor the model card
validates (``max_context = native_context x yarn_factor``), not the one to use.
"""

from __future__ import annotations

import math

from provisioner.profile.resolve import Spec


def yarn_factor(spec: Spec, context: int) -> float | None:
    """The YaRN factor for ``context`` tokens, None when it fits the native length."""
    native = spec.model.native_context
    if context <= native:
        return None
    needed = math.ceil(context / native * 100) / 100  # never below what the context needs
    return min(needed, spec.model.yarn_factor) if spec.model.yarn_factor else needed


def yarn_warnings(spec: Spec, context: int) -> list[str]:
    factor = yarn_factor(spec, context)
    if factor is None:
        return []
    return [f"context {context} is beyond {spec.model.name}'s native {spec.model.native_context} tokens: "
            f"static YaRN at factor {factor:g} applies to every prompt and can cost quality on short ones "
            f"(model card); a context of {spec.model.native_context} runs without it"]
