"""AASM sleep statistics of one night's hypnogram (one stage per 30-s epoch).

Computed here with numpy (YASA, which has ``sleep_statistics``, is only an optional extra). The definitions
follow the AASM scoring manual's report parameters; each is stated in :func:`sleep_statistics`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from eeg_core.errors import FormatError
from eeg_core.stages import EPOCH_S, STAGES

SLEEP_STAGES: tuple[str, ...] = tuple(s for s in STAGES if s != "W")


def _runs(mask: np.ndarray) -> int:
    """Number of runs of consecutive True values."""
    return int(np.count_nonzero(np.diff(np.concatenate([[0], mask.astype(np.int8)])) == 1))


def sleep_statistics(stages: Sequence[str | None], epoch_s: float = EPOCH_S, lights_off: int | None = None,
                     lights_on: int | None = None) -> dict:
    """AASM sleep statistics of a hypnogram.

    Parameters
    ----------
    stages : sequence of str or None
        One stage per consecutive epoch from the recording's start, each one of ``W N1 N2 N3 REM``; None marks an
        epoch without a stage (unscored, artefact): it counts in the time in bed but in no stage.
    epoch_s : float
        Epoch length in seconds (30).
    lights_off, lights_on : int, optional
        Index of the first epoch in bed (lights off) and of the first epoch after it (lights on). By default the
        recording: from its first epoch to its end. Epochs outside are ignored.

    Returns
    -------
    dict
        Durations in minutes, shares in percent, latencies in minutes (None when the stage never occurs):

        - ``TIB``: time in bed, lights off to lights on.
        - ``SOL``: sleep onset latency, lights off to the first epoch of any sleep stage (N1, N2, N3 or REM).
        - ``SPT``: sleep period time, the first to the last sleep epoch, both included.
        - ``TST``: total sleep time, the epochs of N1, N2, N3 and REM.
        - ``WASO``: wake after sleep onset, the W epochs within the sleep period.
        - ``SE``: sleep efficiency, ``100 * TST / TIB``.
        - ``REM_latency``: sleep onset to the first REM epoch.
        - ``W``, ``N1``, ``N2``, ``N3``, ``REM``: minutes of each stage in bed; ``N1_pct`` ... ``REM_pct``:
          minutes of each sleep stage as a percentage of TST.
        - ``awakenings``: bouts of wake (one or more consecutive W epochs) within the sleep period.
        - ``stage_shifts``: changes of stage between consecutive epochs within the sleep period (an epoch without
          a stage is skipped: the epochs either side of it are compared).
        - ``unscored``: minutes without a stage in bed; ``epochs``: epochs in bed; ``epoch_s``.

    Raises
    ------
    FormatError
        A stage that is not one of ``W N1 N2 N3 REM`` or None, or lights off / on outside the recording.
    """
    stages = list(stages)
    for i, s in enumerate(stages):
        if s is not None and s not in STAGES:
            raise FormatError(f"epoch {i}: stage {s!r} is not one of {' '.join(STAGES)}")
    start = 0 if lights_off is None else int(lights_off)
    stop = len(stages) if lights_on is None else int(lights_on)
    if not 0 <= start <= stop <= len(stages):
        raise FormatError(f"lights off (epoch {start}) and on (epoch {stop}) must lie within the recording's "
                          f"{len(stages)} epochs, in that order")
    bed = np.asarray([s if s is not None else "" for s in stages[start:stop]], dtype=object)
    minutes = epoch_s / 60.0
    asleep = np.isin(bed, SLEEP_STAGES)
    out: dict = {"epochs": int(len(bed)), "epoch_s": float(epoch_s), "TIB": len(bed) * minutes}
    sleep_idx = np.flatnonzero(asleep)
    if len(sleep_idx):
        onset, end = int(sleep_idx[0]), int(sleep_idx[-1])
        period = bed[onset : end + 1]
        rem = np.flatnonzero(period == "REM")
        scored = period[period != ""]
        out.update(
            SOL=onset * minutes,
            SPT=len(period) * minutes,
            WASO=float(np.count_nonzero(period == "W")) * minutes,
            REM_latency=float(rem[0]) * minutes if len(rem) else None,
            awakenings=_runs(period == "W"),
            stage_shifts=int(np.count_nonzero(scored[1:] != scored[:-1])),
        )
    else:
        out.update(SOL=None, SPT=0.0, WASO=0.0, REM_latency=None, awakenings=0, stage_shifts=0)
    tst = float(np.count_nonzero(asleep)) * minutes
    out["TST"] = tst
    out["SE"] = 100.0 * tst / out["TIB"] if len(bed) else None
    for s in STAGES:
        out[s] = float(np.count_nonzero(bed == s)) * minutes
    for s in SLEEP_STAGES:
        out[f"{s}_pct"] = 100.0 * out[s] / tst if tst else None
    out["unscored"] = float(np.count_nonzero(bed == "")) * minutes
    order = ("TIB", "SPT", "TST", "SE", "SOL", "REM_latency", "WASO", *STAGES, *(f"{s}_pct" for s in SLEEP_STAGES),
             "awakenings", "stage_shifts", "unscored", "epochs", "epoch_s")
    return {k: out[k] for k in order}


# Display names and units, in report order (the keys of ``sleep_statistics``).
LABELS: dict[str, tuple[str, str]] = {
    "TIB": ("time in bed", "min"),
    "SPT": ("sleep period time", "min"),
    "TST": ("total sleep time", "min"),
    "SE": ("sleep efficiency", "%"),
    "SOL": ("sleep onset latency", "min"),
    "REM_latency": ("REM latency (from sleep onset)", "min"),
    "WASO": ("wake after sleep onset", "min"),
    **{s: (f"{s}", "min") for s in STAGES},
    **{f"{s}_pct": (f"{s} share of TST", "%") for s in SLEEP_STAGES},
    "awakenings": ("awakenings", ""),
    "stage_shifts": ("stage shifts", ""),
    "unscored": ("without a stage", "min"),
}
