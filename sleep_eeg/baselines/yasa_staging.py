"""YASA's pretrained ``SleepStaging`` (Vallat & Walker, eLife 2021), never fitted here: what a sleep
researcher runs with no training at all. Needs the ``[baselines]`` extra; YASA is imported only when
a night is staged, so nothing else depends on it."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from sleep_eeg.baselines.features import yasa_version
from sleep_eeg.recording.channels import DEFAULT_CHANNEL

NAME = "YASA, pretrained (no training)"
# YASA's spellings (0.8 returns a Hypnogram of "WAKE" ... "REM"; earlier versions an array of "W" ... "R")
_STAGE = {"W": "W", "WAKE": "W", "N1": "N1", "N2": "N2", "N3": "N3", "R": "REM", "REM": "REM"}


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
        with warnings.catch_warnings():  # its classifier was pickled by an older scikit-learn
            warnings.simplefilter("ignore")
            pred = yasa.SleepStaging(raw, eeg_name="eeg", eog_name="eog" if eog is not None else None).predict()
    finally:
        logger.setLevel(level)
    values = pred.hypno if hasattr(pred, "hypno") else pred
    return [_STAGE[str(p).upper()] for p in values]


def stage_signals(signals: dict[str, np.ndarray], rates: dict[str, float], eeg: str = "EEG Fpz-Cz",
                  eog: Sequence[str] = ("EOG horizontal",)) -> list[str]:
    """:func:`stage_night` on a night's channels by name (the first of ``eog`` that the night has, if any)."""
    have = [c for c in eog if c in signals and rates.get(c) == rates[eeg]]
    return stage_night(signals[eeg], rates[eeg], signals[have[0]] if have else None)


def answer_questions(questions: dict[str, dict], order: Sequence[str], edf_dir: str | Path,
                     names: dict[str, str | None] | None = None) -> dict[str, str]:
    """YASA's stage of each question (key -> stage), from its night's PSG (``psg``, under the folder ``edf_dir``
    or named by the pairing CSV ``edf_dir``) at its ``epoch``; each night is staged once, whole, on its EEG
    channel (EEG Fpz-Cz, or ``names["eeg"]``) and its EOG (EOG horizontal, or ``names["eog"]``) when present."""
    from eeg_core.errors import FormatError
    from sleep_eeg.recording.channels import resolve_channels
    from sleep_eeg.recording.edf import read_recording, signal_uv
    from sleep_eeg.recording.nights import recording_lookup

    recording = recording_lookup(edf_dir)
    names = {"eeg": (names or {}).get("eeg"), "eog": (names or {}).get("eog")}
    nights: dict[str, list[str]] = {}
    for k in order:
        q = questions[k]
        if not isinstance(q.get("psg"), str) or isinstance(q.get("epoch"), bool) or not isinstance(q.get("epoch"), int):
            raise FormatError(f"question {q.get('question_id')!r} has no 'psg' and 'epoch' to stage with YASA "
                              "(rerun eeg-vlm prepare to add them)")
        nights.setdefault(q["psg"], []).append(k)
    out = {}
    for psg, keys in nights.items():
        path = recording(psg)
        edf = read_recording(path)
        labels = list(edf.labels)
        eeg = resolve_channels(labels, [DEFAULT_CHANNEL], names, str(path), " for YASA")[DEFAULT_CHANNEL]
        try:
            eog = resolve_channels(labels, ["EOG horizontal"], names, str(path))["EOG horizontal"]
        except FormatError:
            eog = None  # YASA stages on the EEG alone
        signals, rates = {}, {}
        for c in [eeg] + ([eog] if eog else []):
            signals[c], rates[c] = signal_uv(edf, c)
        stages = stage_signals(signals, rates, eeg, eog=(eog,) if eog else ())
        for k in keys:
            epoch = questions[k]["epoch"]
            if epoch >= len(stages):
                raise FormatError(f"{path}: epoch {epoch} is outside the recording")
            out[k] = stages[epoch]
    return out
