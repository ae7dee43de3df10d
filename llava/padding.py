"""Padding a batch: the one helper that pads rows of unequal length, left (generation) or right (training).

The prompts of ``llava.eval.answering`` and ``llava.eval.choices`` (left), the collator of ``llava.train.dataset``
(right), the spliced embeddings, labels and positions of ``llava.model.multimodal`` (either side) and the tiny
model's training batch all go through ``pad_sequences``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from eeg_core.errors import FormatError

PADDING_SIDES = ("left", "right")


def pad_sequences(rows: Sequence[torch.Tensor], value, side: str,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of unequal length as one padded tensor, and where each row's own entries are.

    Parameters
    ----------
    rows : sequence of torch.Tensor
        ``[L_i, ...]``, one per sample, of one dtype and the same trailing shape.
    value : int or float
        What fills the padding (a pad token id, ``IGNORE_INDEX``, 0).
    side : {"left", "right"}
        Where the padding goes: left for generation (every row ends at the last position), right for training.
    device : torch.device or str, optional
        Where the result is built; default the first row's device.

    Returns
    -------
    padded : torch.Tensor
        ``[B, L, ...]`` in the rows' dtype, ``L`` the longest row.
    mask : torch.Tensor
        ``[B, L]`` bool, True at each row's own positions.
    """
    if side not in PADDING_SIDES:
        raise FormatError(f"padding side {side!r} is not left or right")
    first = rows[0]
    device = first.device if device is None else device
    length = max(row.shape[0] for row in rows)
    padded = torch.full((len(rows), length, *first.shape[1:]), value, dtype=first.dtype, device=device)
    mask = torch.zeros((len(rows), length), dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        n = row.shape[0]
        span = slice(length - n, length) if side == "left" else slice(0, n)
        padded[i, span] = row
        mask[i, span] = True
    return padded, mask
