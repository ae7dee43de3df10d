"""EDF / EDF+ files with edfio: find nights, read one EEG channel and the stage annotations, write nights.

Sleep-EDF names a night ``SC4ssNE0-PSG.edf`` with its scoring in ``SC4ssNEC-Hypnogram.edf`` (``ST7ssNJ0`` /
``ST7ssNJP`` for the ST study): the two names agree up to their last character before the dash. An EDF+
file that carries its own ``Sleep stage ...`` annotations is a night on its own.
"""
from __future__ import annotations

import datetime
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import edfio
import numpy as np
from scipy.signal import resample_poly

from eeg_core.errors import FormatError
from sleep_eeg.channels import DEFAULT_CHANNEL

STAGE_PREFIX = "Sleep stage"
_SLEEP_EDF_NAME = re.compile(r"^(S[CT]\d\d\d)(\d)")  # SC4 + subject (2 digits), then the night
_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}


@dataclass(frozen=True)
class Night:
    """One recording: its PSG file, where its stages come from, and who / which night it is."""

    name: str  # e.g. SC4001E0
    psg: Path
    hypnogram: Path  # the PSG itself for EDF+ files with their own stage annotations
    subject: str
    night: int


def _key(stem: str) -> str:
    """The part of a Sleep-EDF name shared by a PSG and its hypnogram (``SC4001E0`` -> ``SC4001E``)."""
    return stem[:-1]


def subject_and_night(name: str) -> tuple[str, int]:
    """``SC4012E0`` -> (``SC401``, 2); other names are one subject each, night 1."""
    m = _SLEEP_EDF_NAME.match(name)
    if m:
        return m.group(1), int(m.group(2))
    return name, 1


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


def stage_annotations(edf: edfio.Edf, path: Path, offset_s: float = 0.0) -> list[tuple[float, float, str]]:
    """``(onset_s, duration_s, text)`` for every ``Sleep stage ...`` / ``Movement time`` annotation."""
    out = []
    for ann in edf.annotations:
        text = ann.text.strip()
        if text.startswith(STAGE_PREFIX) or text.lower().startswith("movement"):
            if ann.duration is None:
                raise FormatError(f"{path}: stage annotation {text!r} at {ann.onset:g} s has no duration")
            out.append((float(ann.onset) + offset_s, float(ann.duration), text))
    return out


def find_nights(edf_dir: str | Path) -> list[Night]:
    """Pair ``*-PSG.edf`` with ``*-Hypnogram.edf``; other ``.edf`` files must carry their own stages."""
    edf_dir = Path(edf_dir)
    if not edf_dir.is_dir():
        raise FormatError(f"{edf_dir}: EDF folder not found")
    files = sorted(p for p in edf_dir.iterdir() if p.suffix.lower() == ".edf" and p.is_file())
    if not files:
        raise FormatError(f"{edf_dir}: no .edf files")
    psgs, hyps, plain = {}, {}, []
    for p in files:
        stem, _, kind = p.stem.rpartition("-")
        if kind.lower() == "psg":
            psgs[stem] = p
        elif kind.lower() == "hypnogram":
            hyps[stem] = p
        else:
            plain.append(p)
    # A hypnogram pairs with the PSG of the same stem, else with the one PSG that agrees up to the last character.
    paired: dict[str, Path] = {}
    for stem, hyp in hyps.items():
        candidates = [stem] if stem in psgs else [s for s in psgs if _key(s) == _key(stem)]
        if not candidates:
            raise FormatError(f"{hyp}: hypnogram has no matching PSG file ({_key(stem)}?-PSG.edf) in {edf_dir}")
        if len(candidates) > 1:
            raise FormatError(f"{hyp}: hypnogram matches several PSG files ({', '.join(c + '-PSG.edf' for c in candidates)})")
        if candidates[0] in paired:
            raise FormatError(f"{hyp}: {psgs[candidates[0]].name} already has the hypnogram {paired[candidates[0]].name}")
        paired[candidates[0]] = hyp
    nights = [Night(stem, psg, paired.get(stem, psg), *subject_and_night(stem)) for stem, psg in sorted(psgs.items())]
    for p in plain:
        nights.append(Night(p.stem, p, p, *subject_and_night(p.stem)))
    return nights


def start_datetime(edf: edfio.Edf) -> datetime.datetime | None:
    """The recording's start date and time, or None when the file does not say (an anonymised date)."""
    try:
        return edf.startdatetime
    except Exception:  # anonymised start date ("X")
        return None


def signal_uv(edf: edfio.Edf, channel: str) -> tuple[np.ndarray, float]:
    """One channel of a read EDF in µV (float64) and its sampling rate in Hz."""
    sig = edf.get_signal(channel)
    scale = _UNIT_TO_UV.get(sig.physical_dimension.strip().lower(), 1.0)
    return np.asarray(sig.data, dtype=np.float64) * scale, float(sig.sampling_frequency)


def read_channels(
    night: Night, channels: Sequence[str] = (DEFAULT_CHANNEL,), fs: float | None = None
) -> tuple[dict[str, tuple[np.ndarray, float]], list[tuple[float, float, str]]]:
    """``{channel: (samples in µV, rate)}`` and the stage annotations with onsets in seconds from the PSG's
    start. ``fs`` resamples the waveform channels (above 10 Hz); slower channels (a 1-Hz EMG level) keep
    their rate."""
    psg = read_edf(night.psg)
    missing = [c for c in channels if c not in psg.labels]
    if missing:
        raise FormatError(f"{night.psg}: no channel {missing[0]!r}; channels present: {', '.join(psg.labels)}")
    signals = {}
    for channel in channels:
        data, rate = signal_uv(psg, channel)
        if fs is not None and rate > 10.0 and abs(fs - rate) > 1e-9:
            ratio = Fraction(fs / rate).limit_denominator(1000)
            data = resample_poly(data, ratio.numerator, ratio.denominator)
            rate = float(fs)
        signals[channel] = (data, rate)
    if night.hypnogram == night.psg:
        annotations = stage_annotations(psg, night.psg)
        if not annotations:
            raise FormatError(f"{night.psg}: no hypnogram file and no '{STAGE_PREFIX} ...' annotations")
    else:
        hyp = read_edf(night.hypnogram)
        a, b = start_datetime(hyp), start_datetime(psg)
        offset = (a - b).total_seconds() if a is not None and b is not None else 0.0
        annotations = stage_annotations(hyp, night.hypnogram, offset)
        if not annotations:
            raise FormatError(f"{night.hypnogram}: no '{STAGE_PREFIX} ...' annotations")
    return signals, annotations


def read_night(
    night: Night, channel: str = DEFAULT_CHANNEL, fs: float | None = None
) -> tuple[np.ndarray, float, list[tuple[float, float, str]]]:
    """One channel of :func:`read_channels`: samples in µV, rate, stage annotations."""
    signals, annotations = read_channels(night, (channel,), fs)
    return (*signals[channel], annotations)


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        edf.write(tmp)
        tmp.replace(path)
