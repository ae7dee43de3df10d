"""Numbers computed from one epoch's own signal, cited by the ``measured`` chain of thought.

- relative band power (% of 0.5-30 Hz, Welch, 4-s Hann windows): delta 0.5-4, theta 4-8, alpha 8-12,
  sigma 12-16, beta 16-30 Hz;
- ``ptp``: peak-to-peak amplitude (µV);
- ``slow_waves``: % of the epoch covered by 0.5-2 Hz waves of at least 75 µV peak to peak (AASM N3 rule);
- ``spindles``: sigma bursts (11-16 Hz RMS envelope above 2.5x its median, and above 5 µV, for 0.5-3 s).
"""
from __future__ import annotations

import numpy as np
from scipy.signal import butter, sosfiltfilt, welch

from sleep_eeg.signal.bands import BANDS, BROAD

SLOW_WAVE_BAND = (0.5, 2.0)
SLOW_WAVE_UV = 75.0
SPINDLE_BAND = (11.0, 16.0)


def band_powers(x: np.ndarray, fs: float) -> dict[str, float]:
    """Relative power (%) of each band in 0.5-30 Hz."""
    nper = min(len(x), int(4 * fs))
    f, p = welch(x, fs=fs, nperseg=nper, window="hann", detrend="constant")
    total_mask = (f >= BROAD[0]) & (f < BROAD[1])
    total = p[total_mask].sum()
    out = {}
    for name, (lo, hi) in BANDS.items():
        m = (f >= lo) & (f < hi)
        out[name] = float(100.0 * p[m].sum() / total) if total > 0 else 0.0
    return out



def slow_wave_share(x: np.ndarray, fs: float, min_uv: float = SLOW_WAVE_UV) -> float:
    """% of the epoch covered by 0.5-2 Hz waves (between upward zero crossings) of >= ``min_uv`` p-p."""
    sos = butter(2, SLOW_WAVE_BAND, btype="bandpass", fs=fs, output="sos")
    y = sosfiltfilt(sos, x)
    ups = np.flatnonzero((y[:-1] < 0) & (y[1:] >= 0))
    covered = 0
    for a, b in zip(ups[:-1], ups[1:]):
        seg = y[a : b + 1]
        if seg.max() - seg.min() >= min_uv and (b - a) <= 2.0 * fs:  # one wave of 0.5-2 Hz
            covered += b - a
    return float(100.0 * covered / len(x))


def spindle_count(x: np.ndarray, fs: float, ratio: float = 2.5, floor_uv: float = 5.0) -> int:
    """Number of 0.5-3 s bursts where the 11-16 Hz RMS envelope exceeds ``ratio`` x its median."""
    sos = butter(4, SPINDLE_BAND, btype="bandpass", fs=fs, output="sos")
    y = sosfiltfilt(sos, x)
    win = max(1, int(0.3 * fs))
    env = np.sqrt(np.convolve(y**2, np.ones(win) / win, mode="same")) * np.sqrt(2)  # ~ sine amplitude
    above = env > max(ratio * np.median(env), floor_uv)
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    dur = (ends - starts) / fs
    return int(((dur >= 0.5) & (dur <= 3.0)).sum())


def epoch_measures(x: np.ndarray, fs: float) -> dict[str, float]:
    """Every number the ``measured`` chain of thought cites (keys as ``sleep_eeg.images.cot.MEASURE_KEYS``)."""
    x = np.asarray(x, dtype=np.float64)
    out = band_powers(x, fs)
    out["ptp"] = float(x.max() - x.min())
    out["slow_waves"] = slow_wave_share(x, fs)
    out["spindles"] = spindle_count(x, fs)
    return out
