"""The five EEG bands and the reference spectral features (log relative band power) that the real Sleep-EDF
figures, the synthetic nights' calibration and the band-power baseline all share."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.signal import welch

from eeg_core.stages import EPOCH_S
from sleep_eeg.signal.epochs import epoch_array
from sleep_eeg.signal.filters import bandpass

BANDS: dict[str, tuple[float, float]] = {
    "delta": (0.5, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 12.0),
    "sigma": (12.0, 16.0),
    "beta": (16.0, 30.0),
}
BROAD = (0.5, 30.0)  # relative powers are relative to this band


def log_relative_band_power(
    signal: np.ndarray, fs: float, indices: Sequence[int] | None = None, epoch_s: float = EPOCH_S
) -> np.ndarray:
    """The reference spectral features: natural log of each band's power over the 0.5-30 Hz power.

    The definition of the real Sleep-EDF figures that the synthetic nights are calibrated against and
    of the band-power baseline: the whole recording is band-passed to 0.5-30 Hz (zero-phase
    Butterworth), each 30-s epoch gets a Welch spectrum (4-s Hamming windows, half overlap, **median**
    averaging, which ignores brief bursts), and the bands 0.5-4, 4-8, 8-12, 12-16 and 16-30 Hz are
    summed.

    Parameters
    ----------
    signal : ndarray, shape (n_samples,)
        A whole channel in µV.
    fs : float
        Sampling rate in Hz (above 60 Hz).
    indices : sequence of int, optional
        The epochs (counted from the start) to return; default every complete epoch.

    Returns
    -------
    ndarray, shape (n_epochs, 5)
        A flat epoch gives ``log(1e-12)`` in every band.

    Examples
    --------
    >>> x = np.sin(2 * np.pi * 10 * np.arange(6000) / 100)
    >>> log_relative_band_power(x, 100.0).argmax(axis=1)  # alpha, 8-12 Hz
    array([2, 2])
    """
    n_per = int(round(epoch_s * fs))
    filtered = bandpass(signal, fs, BROAD)
    if indices is None:
        indices = range(len(filtered) // n_per)
    epochs = epoch_array(filtered, fs, indices, epoch_s)
    f, p = welch(epochs, fs=fs, window="hamming", nperseg=int(round(4 * fs)), average="median", axis=-1)
    total = p[:, (f >= BROAD[0]) & (f < BROAD[1])].sum(axis=1, keepdims=True)
    bands = np.stack([p[:, (f >= lo) & (f < hi)].sum(axis=1) for lo, hi in BANDS.values()], axis=1)
    return np.log(np.maximum(bands / np.maximum(total, 1e-12), 1e-12))
