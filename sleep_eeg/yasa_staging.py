"""YASA's pretrained ``SleepStaging`` (Vallat & Walker, eLife 2021), never fitted here: what a sleep
researcher runs with no training at all. Needs the ``[baselines]`` extra; YASA is imported only when
a night is staged, so nothing else depends on it."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from sleep_eeg.features import yasa_version

NAME = "YASA, pretrained (no training)"
_STAGE = {"W": "W", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM"}


def available() -> bool:
    """Whether YASA is installed and importable."""
    return yasa_version() is not None


def stage_night(eeg: np.ndarray, fs: float, eog: np.ndarray | None = None) -> list[str]:
    """One stage (W N1 N2 N3 REM) per complete 30-s epoch of a night, from one EEG channel and
    optionally one EOG channel, in µV at ``fs``."""
    import mne
    import yasa

    names, types, data = ["eeg"], ["eeg"], [np.asarray(eeg, dtype=float)]
    if eog is not None:
        names.append("eog")
        types.append("eog")
        data.append(np.asarray(eog, dtype=float))
    n = min(len(x) for x in data)
    raw = mne.io.RawArray(np.stack([x[:n] for x in data]) * 1e-6, mne.create_info(names, fs, types, verbose=False),
                          verbose=False)
    logger = logging.getLogger("yasa")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "A minimum of 5 minutes of data is recommended" on short nights
    try:
        pred = yasa.SleepStaging(raw, eeg_name="eeg", eog_name="eog" if eog is not None else None).predict()
    finally:
        logger.setLevel(level)
    return [_STAGE[str(p)] for p in pred]


def stage_signals(signals: dict[str, np.ndarray], rates: dict[str, float], eeg: str = "EEG Fpz-Cz",
                  eog: Sequence[str] = ("EOG horizontal",)) -> list[str]:
    """:func:`stage_night` on a night's channels by name (the first of ``eog`` that the night has, if any)."""
    have = [c for c in eog if c in signals and rates.get(c) == rates[eeg]]
    return stage_night(signals[eeg], rates[eeg], signals[have[0]] if have else None)
