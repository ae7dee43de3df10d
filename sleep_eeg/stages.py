"""Stage annotations to one AASM label per 30-s epoch: R&K mapping, dropping, wake trimming, epoching."""
from __future__ import annotations

from typing import Sequence

import numpy as np

EPOCH_S = 30.0

# R&K (Sleep-EDF) and AASM annotation texts -> AASM stage; None = not scorable (dropped).
TEXT_TO_STAGE: dict[str, str | None] = {
    "Sleep stage W": "W",
    "Sleep stage 1": "N1",
    "Sleep stage 2": "N2",
    "Sleep stage 3": "N3",
    "Sleep stage 4": "N3",
    "Sleep stage R": "REM",
    "Sleep stage N1": "N1",
    "Sleep stage N2": "N2",
    "Sleep stage N3": "N3",
    "Sleep stage REM": "REM",
    "Sleep stage ?": None,
    "Movement time": None,
}


def map_stage(text: str) -> str | None:
    """AASM stage of an annotation text (S3 and S4 both N3); ``?``, movement and unknown texts give None."""
    return TEXT_TO_STAGE.get(text.strip())


def epoch_labels(
    annotations: Sequence[tuple[float, float, str]], n_epochs: int | None = None, epoch_s: float = EPOCH_S
) -> list[str | None]:
    """One AASM label (or None) per epoch from ``(onset_s, duration_s, text)`` annotations.

    An epoch takes the stage of the annotation covering its midpoint. With ``n_epochs`` (the number of
    complete epochs in the signal) the list has exactly that length; otherwise it ends with the last
    annotation."""
    if n_epochs is None:
        end = max((o + d for o, d, _ in annotations), default=0.0)
        n_epochs = int(end // epoch_s)
    labels: list[str | None] = [None] * n_epochs
    mids = (np.arange(n_epochs) + 0.5) * epoch_s
    for onset, duration, text in annotations:
        stage = map_stage(text)
        lo = int(np.searchsorted(mids, onset, side="left"))
        hi = int(np.searchsorted(mids, onset + duration, side="left"))
        for i in range(lo, hi):
            labels[i] = stage
    return labels


def trim_wake(labels: Sequence[str | None], minutes: float | None = 30.0, epoch_s: float = EPOCH_S) -> range:
    """Epoch range kept: from ``minutes`` of wake before the first sleep epoch to ``minutes`` after the
    last (Sleep-EDF practice). ``None`` keeps everything; no sleep at all keeps everything too."""
    if minutes is None:
        return range(len(labels))
    sleep = [i for i, s in enumerate(labels) if s is not None and s != "W"]
    if not sleep:
        return range(len(labels))
    pad = int(round(minutes * 60 / epoch_s))
    return range(max(0, sleep[0] - pad), min(len(labels), sleep[-1] + pad + 1))


def scorable_epochs(
    annotations: Sequence[tuple[float, float, str]],
    n_samples: int,
    fs: float,
    trim_minutes: float | None = 30.0,
    epoch_s: float = EPOCH_S,
) -> tuple[np.ndarray, list[str]]:
    """Indices (from the recording's start) and AASM labels of the epochs to use: complete epochs of
    the signal, inside the wake trim, with a scorable stage."""
    n_epochs = int(n_samples // round(epoch_s * fs))
    labels = epoch_labels(annotations, n_epochs, epoch_s)
    keep = [i for i in trim_wake(labels, trim_minutes, epoch_s) if labels[i] is not None]
    return np.asarray(keep, dtype=np.int64), [labels[i] for i in keep]


def epoch_array(signal: np.ndarray, fs: float, indices: Sequence[int], epoch_s: float = EPOCH_S) -> np.ndarray:
    """``[len(indices), samples_per_epoch]`` view-copy of the signal's epochs."""
    n = int(round(epoch_s * fs))
    return np.stack([signal[i * n : (i + 1) * n] for i in indices]) if len(indices) else np.zeros((0, n))
