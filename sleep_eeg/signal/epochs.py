"""A night's channel cut into 30-s epochs."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from eeg_core.stages import EPOCH_S


def epoch_array(signal: np.ndarray, fs: float, indices: Sequence[int], epoch_s: float = EPOCH_S) -> np.ndarray:
    """``[len(indices), samples_per_epoch]`` view-copy of the signal's epochs."""
    n = int(round(epoch_s * fs))
    return np.stack([signal[i * n : (i + 1) * n] for i in indices]) if len(indices) else np.zeros((0, n))
