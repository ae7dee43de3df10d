"""Per-epoch features of a night's signals for the classic baselines (``sleep_eeg.baselines.classic``).

Two feature sets:

- **Band power** (the project's reference baseline): per channel, the five log relative band powers
  of :func:`sleep_eeg.signal.bands.log_relative_band_power`.
- **The sleep field's everyday feature set**, as YASA's ``SleepStaging`` computes it (Vallat & Walker,
  eLife 2021): ``yasa_night_features`` calls YASA itself when it is installed (the ``[baselines]``
  extra); ``scipy_night_features`` is the stand-in on scipy alone. Per channel: std, IQR, skewness,
  kurtosis, zero crossings, Hjorth mobility and complexity, total 0.4-30 Hz power; for EEG and EOG
  the relative power in 0.4-1, 1-4, 4-8, 8-12, 12-16, 16-30 Hz (plus, in the stand-in, the log absolute
  power of each band and the spectral entropy); for EEG the ratios delta/theta, delta/sigma, delta/beta,
  alpha/theta; permutation entropy, Petrosian and Higuchi fractal dimension. Every feature is also
  smoothed over the neighbouring epochs of the same night, as YASA 0.8 does: a centred 15-epoch (7.5-min)
  triangular-weighted mean and a past 4-epoch (2-min) mean, each robust-z-scored within the night (median,
  5-95 % range); plus the time since the recording's start in hours and as a fraction of the recording.

Channels take a role from their name: ``EOG`` in the name is an EOG, ``EMG`` an EMG, anything else an EEG
(at most one of each, as in YASA). Signals are in µV; the feature sets work at 100 Hz.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import welch
from scipy.signal.windows import triang

from eeg_core.stages import EPOCH_S
from sleep_eeg.signal.epochs import epoch_array
from sleep_eeg.signal.filters import bandpass

FEATURES_FS = 100.0

# YASA's bands for its feature set.
YASA_BANDS: tuple[tuple[float, float, str], ...] = (
    (0.4, 1.0, "sdelta"), (1.0, 4.0, "fdelta"), (4.0, 8.0, "theta"),
    (8.0, 12.0, "alpha"), (12.0, 16.0, "sigma"), (16.0, 30.0, "beta"),
)
YASA_BROAD = (0.4, 30.0)
ROLES: tuple[str, ...] = ("eeg", "eog", "emg")

_TINY = 1e-12


# ---------------------------------------------------------------------------------------------
# The everyday feature set: YASA itself, or the same on scipy
# ---------------------------------------------------------------------------------------------
def yasa_version() -> str | None:
    """The installed YASA's version, or None when YASA is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        version("yasa")
    except PackageNotFoundError:
        return None
    try:
        import yasa  # noqa: F401
    except Exception:  # installed but not importable (a broken dependency): treat as absent
        return None
    return version("yasa")


def yasa_night_features(signals: dict[str, np.ndarray], fs: float = FEATURES_FS) -> tuple[np.ndarray, list[str]]:
    """YASA ``SleepStaging`` features of every complete 30-s epoch of a night.

    Parameters
    ----------
    signals : dict
        Role (``eeg``, ``eog``, ``emg``) to the channel in µV, all at ``fs``; ``eeg`` is required.
    fs : float
        Sampling rate of the signals (YASA works at 100 Hz and resamples otherwise).

    Returns
    -------
    features : numpy.ndarray
        ``[n_epochs, n_features]`` float64, row k for the epoch starting at ``30 k`` s.
    names : list of str
        YASA's feature names (sorted, as YASA returns them).
    """
    import logging

    import mne
    import yasa

    names = [r for r in ROLES if r in signals]
    info = mne.create_info(names, fs, ch_types=names, verbose=False)
    raw = mne.io.RawArray(np.stack([signals[r] for r in names]) * 1e-6, info, verbose=False)  # µV -> V
    logger = logging.getLogger("yasa")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "A minimum of 5 minutes of data is recommended" on short nights
    try:
        table = yasa.SleepStaging(
            raw, eeg_name="eeg", eog_name="eog" if "eog" in signals else None, emg_name="emg" if "emg" in signals else None
        ).get_features()
    finally:
        logger.setLevel(level)
    return table.to_numpy(dtype=np.float64), [str(c) for c in table.columns]


def _robust_z(x: np.ndarray) -> np.ndarray:
    """Per column: minus the median, over the 5-95 % range (1 where the range is 0); NaN ignored."""
    with np.errstate(all="ignore"):
        med = np.nanmedian(x, axis=0)
        lo, hi = np.nanpercentile(x, [5, 95], axis=0)
    scale = hi - lo
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return (x - med) / scale


def _weighted_rolling(x: np.ndarray, weights: np.ndarray, offset: int) -> np.ndarray:
    """Weighted mean over rows ``i - offset ... i - offset + len(weights) - 1``, renormalised where the night
    ends or a value is NaN (YASA's pandas rolling with ``min_periods=1``)."""
    n = len(x)
    total = np.zeros_like(x)
    norm = np.zeros_like(x)
    for j, w in enumerate(weights):
        shift = j - offset  # row i uses row i + shift
        lo, hi = max(0, -shift), min(n, n - shift)
        if hi <= lo:
            continue
        src = x[lo + shift : hi + shift]
        ok = np.isfinite(src)
        total[lo:hi] += np.where(ok, src, 0.0) * w
        norm[lo:hi] += ok * w
    with np.errstate(all="ignore"):
        return np.where(norm > 0, total / norm, np.nan)


def _perm_entropy(x: np.ndarray, order: int = 3) -> np.ndarray:
    """Normalised permutation entropy (order 3, delay 1) of each row."""
    n = x.shape[1] - order + 1
    patterns = np.stack([x[:, i : i + n] for i in range(order)], axis=-1).argsort(axis=-1)
    codes = (patterns * (order ** np.arange(order))).sum(axis=-1)
    n_codes = order ** order
    counts = np.stack([np.bincount(c, minlength=n_codes) for c in codes]).astype(np.float64)
    p = counts / n
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=1)
    return h / np.log2(float(np.prod(np.arange(1, order + 1))))


def _petrosian(x: np.ndarray) -> np.ndarray:
    """Petrosian fractal dimension of each row."""
    n = x.shape[1]
    d = np.diff(x, axis=1)
    n_delta = (d[:, 1:] * d[:, :-1] < 0).sum(axis=1)
    return np.log10(n) / (np.log10(n) + np.log10(n / (n + 0.4 * n_delta)))


def _higuchi(x: np.ndarray, kmax: int = 10) -> np.ndarray:
    """Higuchi fractal dimension of each row (``kmax`` 10, as antropy)."""
    n = x.shape[1]
    log_k, log_l = [], []
    for k in range(1, kmax + 1):
        lengths = []
        for m in range(k):
            seg = x[:, m::k]
            count = seg.shape[1] - 1
            if count < 1:
                continue
            lengths.append(np.abs(np.diff(seg, axis=1)).sum(axis=1) * (n - 1) / (count * k) / k)
        log_l.append(np.log(np.maximum(np.mean(lengths, axis=0), _TINY)))
        log_k.append(np.log(1.0 / k))
    log_k = np.asarray(log_k)
    log_l = np.stack(log_l, axis=1)
    kc = log_k - log_k.mean()
    return ((log_l - log_l.mean(axis=1, keepdims=True)) * kc).sum(axis=1) / (kc**2).sum()


def _channel_features(role: str, epochs: np.ndarray, fs: float) -> dict[str, np.ndarray]:
    """One channel's per-epoch features (``epochs`` filtered to 0.4-30 Hz)."""
    with np.errstate(all="ignore"):
        dev = epochs - epochs.mean(axis=1, keepdims=True)
        m2 = (dev**2).mean(axis=1)
        d1 = np.diff(epochs, axis=1)
        d2 = np.diff(d1, axis=1)
        mob = np.sqrt(d1.var(axis=1) / epochs.var(axis=1))
        q25, q75 = np.quantile(epochs, [0.25, 0.75], axis=1)
        feat = {
            "std": epochs.std(axis=1, ddof=1),
            "iqr": q75 - q25,
            "skew": (dev**3).mean(axis=1) / m2**1.5,
            "kurt": (dev**4).mean(axis=1) / m2**2 - 3.0,
            "nzc": (np.diff(np.signbit(epochs), axis=1)).sum(axis=1).astype(np.float64),
            "hmob": mob,
            "hcomp": np.sqrt(d2.var(axis=1) / d1.var(axis=1)) / mob,
        }
        freqs, psd = welch(epochs, fs, window="hamming", nperseg=int(round(5 * fs)), average="median", axis=-1)
        broad = (freqs >= YASA_BROAD[0]) & (freqs <= YASA_BROAD[1])
        df = freqs[1] - freqs[0]
        total = psd[:, broad].sum(axis=1) * df
        if role != "emg":
            for lo, hi, name in YASA_BANDS:
                band = psd[:, (freqs >= lo) & (freqs < hi)].sum(axis=1) * df
                feat[name] = band / total
                feat[f"log_{name}"] = np.log(np.maximum(band, _TINY))
            p = psd[:, broad] / np.maximum(psd[:, broad].sum(axis=1, keepdims=True), _TINY)
            feat["spec_entropy"] = -np.where(p > 0, p * np.log2(np.maximum(p, _TINY)), 0.0).sum(axis=1) / np.log2(
                broad.sum())
        if role == "eeg":
            delta = feat["sdelta"] + feat["fdelta"]
            feat["dt"] = delta / feat["theta"]
            feat["ds"] = delta / feat["sigma"]
            feat["db"] = delta / feat["beta"]
            feat["at"] = feat["alpha"] / feat["theta"]
        feat["abspow"] = total
        feat["perm"] = _perm_entropy(epochs)
        feat["higuchi"] = _higuchi(epochs)
        feat["petrosian"] = _petrosian(epochs)
    return {f"{role}_{k}": np.where(np.isfinite(v), v, np.nan) for k, v in feat.items()}


def scipy_night_features(signals: dict[str, np.ndarray], fs: float = FEATURES_FS) -> tuple[np.ndarray, list[str]]:
    """The stand-in for YASA's feature set, on scipy: same shape of output as ``yasa_night_features``.

    Parameters
    ----------
    signals : dict
        Role (``eeg``, ``eog``, ``emg``) to the channel in µV, all at ``fs``.
    fs : float
        Sampling rate of the signals.

    Returns
    -------
    features : numpy.ndarray
        ``[n_epochs, n_features]`` float64 for every complete 30-s epoch; NaN where a feature is undefined
        (a flat epoch), which the gradient-boosted classifier handles.
    names : list of str
        Sorted feature names.
    """
    base: dict[str, np.ndarray] = {}
    n_epochs = None
    for role in ROLES:
        if role not in signals:
            continue
        filtered = bandpass(signals[role], fs, YASA_BROAD)
        epochs = epoch_array(filtered, fs, range(len(filtered) // int(round(EPOCH_S * fs))))
        n_epochs = len(epochs)
        base.update(_channel_features(role, epochs, fs))
    if not n_epochs:
        return np.zeros((0, 0)), []
    names = sorted(base)
    x = np.stack([base[k] for k in names], axis=1)
    centred = _robust_z(_weighted_rolling(x, triang(15), offset=7))
    past = _robust_z(_weighted_rolling(x, np.ones(4), offset=3))
    times = np.arange(n_epochs) * EPOCH_S
    columns = {k: x[:, i] for i, k in enumerate(names)}
    columns.update({f"{k}_c7min_norm": centred[:, i] for i, k in enumerate(names)})
    columns.update({f"{k}_p2min_norm": past[:, i] for i, k in enumerate(names)})
    columns["time_hour"] = times / 3600.0
    columns["time_norm"] = times / times[-1] if times[-1] > 0 else np.zeros(n_epochs)
    all_names = sorted(columns)
    return np.stack([columns[k] for k in all_names], axis=1), all_names
