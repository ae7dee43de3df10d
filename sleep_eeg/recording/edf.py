"""Recordings: a PSG read whole into channels in µV, and a night written as EDF.

EDF / EDF+ files are read with edfio; BDF and MNE's other formats (BrainVision, EEGLAB, FIF, ...) with MNE
(``pip install eeg-vlm[recordings]``), and an ``mne.io.Raw`` or ``(data, sf, ch_names)`` arrays in memory become the
same kind of recording (:func:`from_mne`, :func:`from_arrays`). Every channel is converted to µV from its
header's physical dimension (V, mV, µV, uV, nV); amplitudes implausible for that unit are a warning
(:func:`unit_warnings`). An EDF+D recording with gaps is refused (:func:`read_recording`).
"""
from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Sequence

import edfio
import numpy as np

from eeg_core.atomic import atomic_path
from eeg_core.errors import FormatError
from sleep_eeg.recording.channels import resolve_channels

_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "\u03bcv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
EDF_SUFFIXES = (".edf",)  # read with edfio; other recordings go through MNE
RECORDING_SUFFIXES = (".edf", ".bdf")  # the recordings a folder is searched for
PLAUSIBLE_UV = (0.5, 20000.0)  # the typical spread of a PSG channel in µV lies well inside this


class Signal:
    """One channel of an in-memory recording, with the attributes of ``edfio.EdfSignal`` that reading uses."""

    def __init__(self, data: np.ndarray, sampling_frequency: float, physical_dimension: str = "uV"):
        self.data, self.sampling_frequency = np.asarray(data, dtype=np.float64), float(sampling_frequency)
        self.physical_dimension = physical_dimension


class Annotation:
    def __init__(self, onset: float, duration: float | None, text: str):
        self.onset, self.duration, self.text = float(onset), duration, text


class Recording:
    """A recording held in memory (from MNE, arrays or a stage list) with the attributes of ``edfio.Edf`` that
    reading uses: ``labels``, ``get_signal``, ``duration``, ``annotations``, ``startdatetime``,
    ``is_continuous``."""

    def __init__(self, signals: dict[str, Signal], annotations=(), start: datetime.datetime | None = None,
                 duration: float | None = None):
        self.signals, self.annotations, self._start = signals, list(annotations), start
        self.labels = list(signals)
        self.duration = duration if duration is not None else max(
            (len(s.data) / s.sampling_frequency for s in signals.values()), default=0.0)
        self.is_continuous = True

    def get_signal(self, label: str) -> Signal:
        return self.signals[label]

    @property
    def startdatetime(self) -> datetime.datetime:
        if self._start is None:
            raise ValueError("no start time")
        return self._start


def from_arrays(data, sf: float, ch_names: Sequence[str], unit: str = "uV",
                start: datetime.datetime | None = None) -> Recording:
    """A recording of ``data`` ``[channels, samples]`` at ``sf`` Hz with the channels ``ch_names``, in ``unit``
    (µV by default; ``"V"`` for MNE's arrays)."""
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or data.shape[0] != len(ch_names):
        raise FormatError(f"arrays: data of shape {data.shape} for {len(ch_names)} channel name(s)")
    if not (np.isfinite(sf) and sf > 0):
        raise FormatError(f"arrays: the sampling rate must be a positive number, got {sf!r}")
    if len(set(ch_names)) != len(ch_names):
        raise FormatError(f"arrays: a channel is named twice ({', '.join(ch_names)})")
    return Recording({str(c): Signal(x, sf, unit) for c, x in zip(ch_names, data)}, start=start)


def from_mne(raw) -> Recording:
    """An ``mne.io.Raw`` as a recording: its data (volts, MNE's unit) and its annotations, onsets from its first
    sample; its measurement date as the start (naive, as EDF headers give it)."""
    raw = raw.copy().load_data() if not getattr(raw, "preload", False) else raw
    start = raw.info.get("meas_date")
    start = start.replace(tzinfo=None) if start is not None else None
    rec = from_arrays(raw.get_data(), float(raw.info["sfreq"]), list(raw.ch_names), "V", start)
    shift = raw.first_time if raw.annotations.orig_time is not None else 0.0
    rec.annotations = [Annotation(a["onset"] - shift, float(a["duration"]), str(a["description"]))
                       for a in raw.annotations]
    return rec


def read_with_mne(path: Path) -> Recording:
    """A recording in a format MNE reads (BDF, BrainVision, EEGLAB, FIF, ...); MNE is an optional dependency."""
    try:
        import mne
    except ImportError:
        raise FormatError(f"{path}: reading {path.suffix} files needs MNE (pip install 'eeg-vlm[recordings]')") from None
    try:
        raw = mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as e:  # noqa: BLE001 - MNE raises many kinds on a broken file
        raise FormatError(f"{path}: not a readable recording ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return from_mne(raw)


def unit_warnings(data_uv: np.ndarray, label: str, unit: str, where: str | Path, rate: float | None = None) -> list[str]:
    """A waveform channel whose amplitudes are implausible for its header's unit (a volts file labelled µV spreads
    over millionths of a µV; a µV file labelled V over tens of volts), as one line. A flat channel, a channel of
    10 Hz or less (a level, such as Sleep-EDF's 1-Hz EMG rms) and a unit that is not a voltage say nothing here."""
    if unit.strip().lower() not in _UNIT_TO_UV or (rate is not None and rate <= 10.0):
        return []
    x = np.asarray(data_uv, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return []
    spread = float(np.percentile(x, 95) - np.percentile(x, 5))
    if spread == 0.0 or PLAUSIBLE_UV[0] <= spread <= PLAUSIBLE_UV[1]:
        return []
    guess = next((name for name, factor in (("volts", 1e6), ("millivolts", 1e3), ("microvolts", 1.0),
                                            ("nanovolts", 1e-3))
                  if PLAUSIBLE_UV[0] <= spread / _UNIT_TO_UV.get(unit.strip().lower(), 1.0) * factor <= PLAUSIBLE_UV[1]),
                 None)
    said = f"; the values look like {guess}" if guess else ""
    return [f"{where}: channel {label!r} is labelled {unit.strip() or 'without a unit'!r} and spreads over "
            f"{spread:.3g} µV (5th-95th percentile), implausible for a PSG channel{said}: check the unit in the header"]


def read_edf(path: str | Path) -> edfio.Edf:
    """Read a whole EDF file; unreadable or truncated files raise a one-line FormatError."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: EDF file not found")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            edf = edfio.read_edf(path, lazy_load_data=False)
        except Exception as e:  # edfio raises ValueError, IndexError, ... on a broken header
            raise FormatError(f"{path}: not a readable EDF file ({type(e).__name__}: {e})") from None
    for w in caught:
        text = str(w.message)
        if "ncomplete data record" in text or "header indicates" in text:
            raise FormatError(f"{path}: truncated EDF file ({text.splitlines()[0]})")
    return edf


def start_datetime(edf: edfio.Edf) -> datetime.datetime | None:
    """The recording's start date and time, or None when the file does not say (an anonymised date)."""
    try:
        return edf.startdatetime
    except Exception:  # anonymised start date ("X")
        return None


def signal_uv(edf: edfio.Edf | Recording, channel: str) -> tuple[np.ndarray, float]:
    """One channel of a read recording in µV (float64), from its header's physical dimension (V, mV, µV, uV,
    nV; another or none is taken as µV), and its sampling rate in Hz."""
    sig = edf.get_signal(channel)
    scale = _UNIT_TO_UV.get(sig.physical_dimension.strip().lower(), 1.0)
    return np.asarray(sig.data, dtype=np.float64) * scale, float(sig.sampling_frequency)


def channels_uv(edf: edfio.Edf | Recording, panels: Sequence[str], names: dict | None = None,
                where: str | Path = "", why: str = "") -> tuple[dict[str, tuple[np.ndarray, float]], dict[str, str], list[str]]:
    """``({panel: (µV, rate)}, {panel: the file's label}, unit warnings)``: each render panel's channel, found by
    ``channels.resolve_channels`` (the channel named for its role, else the one of its derivation)."""
    found = resolve_channels(list(edf.labels), panels, names, str(where), why)
    signals, warned = {}, []
    for panel, label in found.items():
        signals[panel] = signal_uv(edf, label)
        warned += unit_warnings(signals[panel][0], label, edf.get_signal(label).physical_dimension, where,
                                signals[panel][1])
    return signals, found, warned


def _gaps(edf: edfio.Edf) -> list[tuple[float, float]]:
    """``(seconds of data before the gap, gap in seconds)`` of each gap between an EDF+ file's data records, from
    their timekeeping annotations (empty when unreadable)."""
    try:
        from edfio.edf_annotations import _get_data_record_onset

        signal = edf._timekeeping_signal
        records = signal.digital.reshape((-1, signal._bytes_per_data_record))
        onsets = [float(_get_data_record_onset(r)) for r in records]
    except Exception:  # noqa: BLE001 - edfio internals; the caller's message stands without the detail
        return []
    step = float(edf.data_record_duration)
    return [((i + 1) * step, b - a - step) for i, (a, b) in enumerate(zip(onsets, onsets[1:])) if abs(b - a - step) > 1e-6]


def read_recording(path: str | Path) -> edfio.Edf | Recording:
    """A PSG read whole: EDF with edfio (:func:`read_edf`), other formats with MNE (:func:`read_with_mne`; MNE
    gives all channels one rate, the highest). An EDF+D (discontinuous) recording whose data records leave gaps
    is refused in one line: its samples are not one time axis, and epochs and clock times after a gap would be
    shifted. An EDF+D file whose records do follow each other without a gap is read as it is."""
    path = Path(path)
    if path.suffix.lower() not in EDF_SUFFIXES:
        if not path.is_file():
            raise FormatError(f"{path}: recording not found")
        return read_with_mne(path)
    edf = read_edf(path)
    try:
        continuous = edf.is_continuous
    except Exception as e:  # noqa: BLE001 - an unreadable timekeeping annotation
        raise FormatError(f"{path}: unreadable EDF+ data record times ({type(e).__name__}: {e})") from None
    if not continuous:
        gaps = _gaps(edf)
        detail = (f"{len(gaps)} gap(s), the first {gaps[0][1]:g} s long after {gaps[0][0]:g} s of data"
                  if gaps else "its data records do not follow each other")
        raise FormatError(f"{path}: a discontinuous EDF+D recording ({detail}): epochs and clock times after a gap "
                          "would be shifted; export each continuous part as its own file (EDF+C)")
    return edf


def write_night(
    psg_path: str | Path,
    hyp_path: str | Path,
    signals: dict[str, np.ndarray],
    fs: float | dict[str, float],
    annotations: Sequence[tuple[float, float, str]],
    start: datetime.datetime,
    physical_range: tuple[float, float] = (-500.0, 500.0),
    record_s: float = 30.0,
) -> None:
    """Write a Sleep-EDF-style pair: a PSG (µV channels, 30-s data records) and an annotation-only
    EDF+ hypnogram. ``fs`` is one rate for all channels or one per label. Values outside
    ``physical_range`` are clipped."""
    recording = edfio.Recording(startdate=start.date())
    rates = fs if isinstance(fs, dict) else {label: fs for label in signals}
    edf_signals = [
        edfio.EdfSignal(
            np.clip(x, *physical_range), rates[label], label=label, physical_dimension="uV",
            physical_range=physical_range, prefiltering="HP:0.1Hz LP:40Hz",
        )
        for label, x in signals.items()
    ]
    psg = edfio.Edf(edf_signals, recording=recording, starttime=start.time(), data_record_duration=record_s)
    hyp = edfio.Edf(
        [], recording=recording, starttime=start.time(),
        annotations=[edfio.EdfAnnotation(o, d, t) for o, d, t in annotations],
    )
    for edf, path in ((psg, Path(psg_path)), (hyp, Path(hyp_path))):
        with atomic_path(path) as tmp:
            edf.write(tmp)
