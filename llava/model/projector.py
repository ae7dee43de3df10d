"""The multimodal projector: ``linear``, ``mlp{N}x_gelu`` or ``identity`` (LLaVA-1.5's types and key layout)."""
from __future__ import annotations

import re

from torch import nn

from eeg_core.errors import FormatError


def build_vision_projector(config) -> nn.Module:
    """mm_hidden_size -> hidden_size. ``mlp2x_gelu`` is Sequential(Linear, GELU, Linear): keys ``0.*``, ``2.*``."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    in_size, out_size = config.mm_hidden_size, config.hidden_size
    if projector_type == "linear":
        return nn.Linear(in_size, out_size)
    if projector_type == "identity":
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match:
        layers: list[nn.Module] = [nn.Linear(in_size, out_size)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(out_size, out_size)]
        return nn.Sequential(*layers)
    raise FormatError(f"mm_projector_type {projector_type!r} is not one of linear, mlp<N>x_gelu, identity")
