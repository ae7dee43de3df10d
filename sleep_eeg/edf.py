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
from eeg_core.stages import EPOCH_S
from sleep_eeg.channels import DEFAULT_CHANNEL
from sleep_eeg.stages import map_stage

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
    names: dict[str, Path] = {}
    for night in nights:  # a night's name names its images, records and report folder
        if night.name in names:
            raise FormatError(f"{night.psg}: the night name {night.name!r} is also {names[night.name].name}'s; "
                              "rename one of them")
        names[night.name] = night.psg
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


def read_recording(path: str | Path) -> edfio.Edf:
    """A PSG read whole (:func:`read_edf`). An EDF+D (discontinuous) recording whose data records leave gaps is
    refused in one line: its samples are not one time axis, and epochs and clock times after a gap would be
    shifted. An EDF+D file whose records do follow each other without a gap is read as it is."""
    path = Path(path)
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


def _night_key(path: Path) -> tuple[str, int] | None:
    """(subject, night) of a Sleep-EDF file name (``SC4012E0-PSG.edf``, ``SC4012EC-Hypnogram.edf``), else None."""
    m = _SLEEP_EDF_NAME.match(path.name)
    return (m.group(1), int(m.group(2))) if m else None


def scoring_on_recording(psg_path: Path, psg: edfio.Edf, hyp_path: Path,
                         hyp: edfio.Edf | None = None) -> list[tuple[float, float, str]]:
    """The stage annotations of ``hyp_path`` (``hyp`` read, or the PSG itself when None) on the recording's time
    axis: onsets in seconds from the PSG's start. The one rule, in prepare and in stage, for which hypnogram
    belongs to which recording; a hypnogram of another night is refused in one line:

    - two Sleep-EDF names must name the same subject and night (``SC4001E0-PSG.edf``, ``SC4001EC-Hypnogram.edf``);
    - the two files' start times (when both are dated) place the scoring on the recording: it must not begin
      before the recording (by more than half an epoch) nor at or after its end;
    - a hypnogram that starts later than its recording must end within it (night 2's hypnogram beside night 1's
      recording starts minutes later and runs past its end).

    Scoring that starts with the recording and runs past its end (a cut recording, Sleep-EDF's trailing '?') is
    kept: the epochs without signal are dropped, with a warning with counts (``stages.scoring_warnings``)."""
    own = hyp is None
    hyp = psg if own else hyp
    if not own:
        a, b = _night_key(psg_path), _night_key(hyp_path)
        if a is not None and b is not None and a != b:
            raise FormatError(f"{hyp_path}: a hypnogram of subject {b[0]} night {b[1]}, not of {psg_path.name} "
                              f"(subject {a[0]} night {a[1]})")
    theirs, ours = start_datetime(hyp), start_datetime(psg)
    offset = (theirs - ours).total_seconds() if theirs is not None and ours is not None and not own else 0.0
    annotations = stage_annotations(hyp, hyp_path, offset)
    if not annotations:
        raise FormatError(f"{hyp_path}: no '{STAGE_PREFIX} ...' annotations")
    duration = float(psg.duration)
    first = min(o for o, _, _ in annotations)
    scored = [o + d for o, d, t in annotations if map_stage(t) is not None]
    last = max(scored, default=first)
    late_and_long = offset > EPOCH_S / 2 and last > duration + EPOCH_S / 2
    if first < -EPOCH_S / 2 or first >= duration or late_and_long:
        when = f"starting {theirs:%Y-%m-%d %H:%M:%S}" if theirs is not None and not own else "as dated"
        raise FormatError(f"{hyp_path}: scores {first / 3600:+.2f} h to {last / 3600:+.2f} h ({when}) of a recording "
                          f"of {duration / 3600:.2f} h ({psg_path}): a hypnogram of another night")
    return annotations


def read_channels(
    night: Night, channels: Sequence[str] = (DEFAULT_CHANNEL,), fs: float | None = None
) -> tuple[dict[str, tuple[np.ndarray, float]], list[tuple[float, float, str]]]:
    """``{channel: (samples in µV, rate)}`` and the stage annotations with onsets in seconds from the PSG's
    start (:func:`scoring_on_recording`). ``fs`` resamples the waveform channels (above 10 Hz, see
    :func:`resample`); slower channels (a 1-Hz EMG level) keep their rate."""
    psg = read_recording(night.psg)
    missing = [c for c in channels if c not in psg.labels]
    if missing:
        raise FormatError(f"{night.psg}: no channel {missing[0]!r}; channels present: {', '.join(psg.labels)}")
    signals = {}
    for channel in channels:
        data, rate = signal_uv(psg, channel)
        signals[channel] = resample(data, rate, fs) if fs is not None else (data, rate)
    if night.hypnogram == night.psg:
        if not stage_annotations(psg, night.psg):
            raise FormatError(f"{night.psg}: no hypnogram file and no '{STAGE_PREFIX} ...' annotations")
        annotations = scoring_on_recording(night.psg, psg, night.psg)
    else:
        annotations = scoring_on_recording(night.psg, psg, night.hypnogram, read_edf(night.hypnogram))
    return signals, annotations


def resample(data: np.ndarray, rate: float, fs: float) -> tuple[np.ndarray, float]:
    """A waveform channel (above 10 Hz) at ``fs`` Hz (polyphase, ``scipy.signal.resample_poly``); a slower
    channel (a 1-Hz EMG level) and one at ``fs`` already are returned as they are."""
    if rate <= 10.0 or abs(fs - rate) <= 1e-9:
        return data, rate
    ratio = Fraction(fs / rate).limit_denominator(1000)
    return resample_poly(data, ratio.numerator, ratio.denominator), float(fs)


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
