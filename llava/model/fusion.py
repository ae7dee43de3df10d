"""How a high-level feature fills its placeholder image slot (config ``mm_hl_fusion``): one entry per mode.

A mode is a :class:`Fusion`: whether its slot is built from the sample's first real image (Image1), what it does
in words (the ``--hl_fusion`` help), and ``fill(image1, hl)``, the slot's tokens from Image1's projected CLIP patch
tokens (``[patches, hidden]``; None for a mode that does not read Image1) and the projected feature ``P_hl(h)``
(``[1, hidden]``). The config's choices, the training flag, the tiny builder and the splice all read ``FUSIONS``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class Fusion(NamedTuple):
    reads_image1: bool  # a sample whose only <image> is the placeholder is refused
    about: str
    fill: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]


def _add(image1: torch.Tensor, hl: torch.Tensor) -> torch.Tensor:
    return image1.to(hl.device) + hl  # P_hl(h) broadcast over every patch token


def _token(image1: torch.Tensor | None, hl: torch.Tensor) -> torch.Tensor:
    return hl


# The first is the default (the paper's).
FUSIONS: dict[str, Fusion] = {
    "add": Fusion(True, "P(CLIP(Image1)) + P(h) (the paper's)", _add),
    "token": Fusion(False, "the single token P(h)", _token),
}
