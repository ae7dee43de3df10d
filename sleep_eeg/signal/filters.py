"""Filters applied to a whole night's channel: the zero-phase band-pass that rendering and the baselines share,
and the resampling of a waveform channel to a drawing rate."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.signal import butter, resample_poly, sosfiltfilt

def bandpass(signal: np.ndarray, fs: float, band: tuple[float, float]) -> np.ndarray:
    """Zero-phase Butterworth band-pass of a whole night (the top edge is kept below Nyquist)."""
    lo, hi = band
    hi = min(hi, 0.45 * fs)  # with the render settings' fs, this edge is part of their identity
    sos = butter(4, (lo, hi), btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, np.asarray(signal, dtype=np.float64))


def resample(data: np.ndarray, rate: float, fs: float) -> tuple[np.ndarray, float]:
    """A waveform channel (above 10 Hz) at ``fs`` Hz (polyphase, ``scipy.signal.resample_poly``); a slower
    channel (a 1-Hz EMG level) and one at ``fs`` already are returned as they are."""
    if rate <= 10.0 or abs(fs - rate) <= 1e-9:
        return data, rate
    ratio = Fraction(fs / rate).limit_denominator(1000)
    return resample_poly(data, ratio.numerator, ratio.denominator), float(fs)
