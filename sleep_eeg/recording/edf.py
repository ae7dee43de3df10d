"""Recordings and hypnograms: find nights, read channels in µV and the stage annotations, write nights.

EDF / EDF+ files are read with edfio; BDF and MNE's other formats (BrainVision, EEGLAB, FIF, ...) with MNE
(``pip install eeg-vlm[recordings]``), and an ``mne.io.Raw`` or ``(data, sf, ch_names)`` arrays in memory become the
same kind of recording (:func:`from_mne`, :func:`from_arrays`). Every channel is converted to µV from its
header's physical dimension (V, mV, µV, uV, nV); amplitudes implausible for that unit are a warning
(:func:`unit_warnings`).

Sleep-EDF names a night ``SC4ssNE0-PSG.edf`` with its scoring in ``SC4ssNEC-Hypnogram.edf`` (``ST7ssNJ0`` /
``ST7ssNJP`` for the ST study): the two names agree up to their last character before the dash. An EDF+
file that carries its own stage annotations is a night on its own. A pairing CSV (columns ``recording``,
``hypnogram``, ``subject``; :func:`read_pairs`) pairs any files instead.

A hypnogram is an EDF+ file of stage annotations (AASM or R&K texts, see ``stages.stage_text``) or a CSV / TXT
file of one stage per line (:func:`read_stage_list`).
"""
from __future__ import annotations

import csv
import datetime
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import edfio
import numpy as np

from eeg_core.atomic import atomic_path
from eeg_core.errors import FormatError
from eeg_core.stages import EPOCH_S
from sleep_eeg.recording.channels import DEFAULT_CHANNEL, resolve_channels
from sleep_eeg.recording.stages import UNSCORED_TEXT, YASA_CODES, map_stage, stage_text
from sleep_eeg.signal.filters import resample

STAGE_PREFIX = "Sleep stage"
_SLEEP_EDF_NAME = re.compile(r"^(S[CT]\d\d\d)(\d)")  # SC4 + subject (2 digits), then the night
_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "\u03bcv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
EDF_SUFFIXES = (".edf",)  # read with edfio; other recordings go through MNE
RECORDING_SUFFIXES = (".edf", ".bdf")  # the recordings a folder is searched for
LIST_SUFFIXES = (".csv", ".tsv", ".txt")  # a hypnogram of one stage per line
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


@dataclass(frozen=True)
class Night:
    """One recording: its PSG file, where its stages come from, and who / which night it is."""

    name: str  # e.g. SC4001E0
    psg: Path
    hypnogram: Path  # the PSG itself for EDF+ files with their own stage annotations
    subject: str
    night: int
    hypnogram_epoch: float = EPOCH_S  # seconds per line of a CSV / TXT hypnogram


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


def stage_annotations(edf: edfio.Edf | Recording, path: Path, offset_s: float = 0.0) -> list[tuple[float, float, str]]:
    """``(onset_s, duration_s, text)`` for every stage annotation: ``Sleep stage ...``, ``Movement time`` and the
    other AASM / R&K spellings (``stages.stage_text``: "N2", "Stage 2", "Wake")."""
    out = []
    for ann in edf.annotations:
        text = ann.text.strip()
        if text.startswith(STAGE_PREFIX) or text.lower().startswith("movement") or stage_text(text) is not None:
            if ann.duration is None:
                raise FormatError(f"{path}: stage annotation {text!r} at {ann.onset:g} s has no duration")
            out.append((float(ann.onset) + offset_s, float(ann.duration), text))
    return out


def read_pairs(path: Path, hypnogram_epoch: float = EPOCH_S) -> list[Night]:
    """The nights of a pairing CSV: columns ``recording`` (required), ``hypnogram`` (empty: the recording's own
    annotations) and ``subject`` (empty: from the name, one subject per recording unless Sleep-EDF's), paths
    relative to the CSV's folder; a subject's nights are numbered in the file's order."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"{path}: unreadable pairing CSV ({type(e).__name__}: {e})") from None
    if not rows or "recording" not in (rows[0].keys() if rows else ()):
        raise FormatError(f"{path}: a pairing CSV needs a header with the column 'recording' (and 'hypnogram', "
                          "'subject') and one row per recording")
    nights, per_subject = [], {}
    for i, row in enumerate(rows, start=2):
        rec = (row.get("recording") or "").strip()
        if not rec:
            raise FormatError(f"{path}: line {i}: no recording")
        psg = (path.parent / rec)
        hyp = (row.get("hypnogram") or "").strip()
        hyp = path.parent / hyp if hyp else psg
        for f in {psg, hyp}:
            if not f.is_file():
                raise FormatError(f"{path}: line {i}: {f} not found")
        name = night_name_of(psg)
        subject, night = subject_and_night(name)
        if (row.get("subject") or "").strip():
            subject = row["subject"].strip()
            per_subject[subject] = night = per_subject.get(subject, 0) + 1
        nights.append(Night(name, psg, hyp, subject, night, hypnogram_epoch))
    return nights


def recording_lookup(edf_dir: str | Path):
    """``psg name -> file`` for records made by ``prepare`` (their ``psg``): under the folder ``edf_dir``, or the
    recording a pairing CSV names (:func:`read_pairs`)."""
    edf_dir = Path(edf_dir)
    if edf_dir.is_file() and edf_dir.suffix.lower() == ".csv":
        paths = {n.psg.name: n.psg for n in read_pairs(edf_dir)}
        return lambda psg: paths.get(psg, edf_dir.parent / psg)
    return lambda psg: edf_dir / psg


def night_name_of(psg: Path) -> str:
    """``SC4001E0-PSG.edf`` -> ``SC4001E0``; other files: the name without its suffix."""
    stem = psg.stem
    return stem[: -len("-PSG")] if stem.upper().endswith("-PSG") else stem


def find_nights(edf_dir: str | Path, hypnogram_epoch: float = EPOCH_S) -> list[Night]:
    """Pair ``*-PSG.edf`` with ``*-Hypnogram.edf`` (or ``.bdf`` / ``.csv`` / ``.txt``); other ``.edf`` / ``.bdf``
    files must carry their own stages. A CSV file instead of a folder pairs recordings explicitly
    (:func:`read_pairs`). ``hypnogram_epoch``: seconds per line of CSV / TXT hypnograms."""
    edf_dir = Path(edf_dir)
    if edf_dir.is_file() and edf_dir.suffix.lower() == ".csv":
        nights = read_pairs(edf_dir, hypnogram_epoch)
        _check_names(nights)
        return nights
    if not edf_dir.is_dir():
        raise FormatError(f"{edf_dir}: EDF folder not found")
    every = sorted(p for p in edf_dir.iterdir() if p.is_file())
    files = [p for p in every if p.suffix.lower() in RECORDING_SUFFIXES
             or (p.suffix.lower() in LIST_SUFFIXES and p.stem.lower().endswith("-hypnogram"))]
    if not any(p.suffix.lower() in RECORDING_SUFFIXES for p in files):
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
    nights = [Night(stem, psg, paired.get(stem, psg), *subject_and_night(stem), hypnogram_epoch)
              for stem, psg in sorted(psgs.items())]
    for p in plain:
        nights.append(Night(p.stem, p, p, *subject_and_night(p.stem), hypnogram_epoch))
    _check_names(nights)
    return nights


def _check_names(nights: Sequence[Night]) -> None:
    names: dict[str, Path] = {}
    for night in nights:  # a night's name names its images, records and report folder
        if night.name in names:
            raise FormatError(f"{night.psg}: the night name {night.name!r} is also {names[night.name].name}'s; "
                              "rename one of them")
        names[night.name] = night.psg


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


def _list_value(value: str, path: Path, line: int) -> str | None:
    """One line's stage: a YASA integer code (0-4 = W N1 N2 N3 REM, -1 artefact and -2 unscored: no stage) or a
    stage text in any known spelling (``stages.stage_text``); "?" and movement give no stage."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        canonical = stage_text(value)
        if canonical is None:
            raise FormatError(f"{path}: line {line}: unknown stage {value!r} (W N1 N2 N3 REM, R&K 'Stage 1'-'Stage 4', "
                              "or YASA's integer codes 0-4, -1, -2)") from None
        return map_stage(canonical)
    if number not in YASA_CODES:
        raise FormatError(f"{path}: line {line}: stage code {value!r} is not one of YASA's integer codes "
                          "(0 W, 1 N1, 2 N2, 3 N3, 4 REM, -1 artefact, -2 unscored)")
    return YASA_CODES[int(number)]


LIST_HEADERS = ("stage", "stages", "hypnogram", "label", "sleep stage")


def read_stage_list(path: str | Path, epoch_s: float = EPOCH_S) -> Recording:
    """A CSV / TXT hypnogram of one stage per line (:func:`_list_value`; blank lines and ``#`` comments skipped;
    an optional header line, or a table with a ``stage`` column as ``eeg-vlm stage`` writes it), each line
    ``epoch_s`` seconds long from the recording's start, as 30-s stage annotations.

    Lines of another length are mapped onto 30-s epochs by majority: an epoch takes the stage that covers more
    than half of it. An epoch that no stage covers more than half of (a tie of two stages of 5-s lines, or
    three stages) is left unscored (dropped), and their count is printed as a warning."""
    path = Path(path)
    if not (np.isfinite(epoch_s) and epoch_s > 0):
        raise FormatError(f"--hypnogram-epoch must be a positive number of seconds, got {epoch_s:g}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: unreadable hypnogram ({type(e).__name__}: {e})") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise FormatError(f"{path}: an empty hypnogram")
    delimiter = next((d for d in (",", "	", ";") if d in lines[0][1]), None)
    column = 0
    if delimiter is not None:
        header = [h.strip().lower() for h in next(csv.reader([lines[0][1]], delimiter=delimiter))]
        if "stage" not in header:
            raise FormatError(f"{path}: line {lines[0][0]}: a table needs a 'stage' column (else one stage per line)")
        column, lines = header.index("stage"), lines[1:]
    elif lines[0][1].strip().lower() in LIST_HEADERS:
        lines = lines[1:]
    stages = []
    for i, line in lines:
        fields = next(csv.reader([line], delimiter=delimiter)) if delimiter else [line]
        if column >= len(fields):
            raise FormatError(f"{path}: line {i}: no 'stage' column")
        stages.append(_list_value(fields[column], path, i))
    if not stages:
        raise FormatError(f"{path}: an empty hypnogram")
    if abs(epoch_s - EPOCH_S) < 1e-9:
        epochs = stages
        ties = 0
    else:
        epochs, ties = _majority(stages, epoch_s)
        if ties:
            print(f"warning: {path}: {ties} of {len(epochs)} 30-s epochs have no stage covering more than half of "
                  f"them ({epoch_s:g}-s lines); they are left unscored and dropped", file=sys.stderr)
    rk = {v: k for k, v in {"Sleep stage W": "W", "Sleep stage 1": "N1", "Sleep stage 2": "N2",
                            "Sleep stage 3": "N3", "Sleep stage R": "REM"}.items()}
    annotations = [Annotation(k * EPOCH_S, EPOCH_S, UNSCORED_TEXT if st is None else rk[st])
                   for k, st in enumerate(epochs)]
    return Recording({}, annotations, None, duration=len(stages) * epoch_s)


def _majority(stages: Sequence[str | None], epoch_s: float) -> tuple[list[str | None], int]:
    """30-s epochs from lines of ``epoch_s`` seconds: the stage covering more than half of each (None for no
    stage, counted as a tie)."""
    total = len(stages) * epoch_s
    n = int(np.ceil(total / EPOCH_S - 1e-9))
    out, ties = [], 0
    for k in range(n):
        a, b = k * EPOCH_S, (k + 1) * EPOCH_S
        cover: dict[str | None, float] = {}
        for j in range(int(a // epoch_s), min(len(stages), int(np.ceil(b / epoch_s - 1e-9)))):
            overlap = min(b, (j + 1) * epoch_s) - max(a, j * epoch_s)
            if overlap > 1e-9:
                cover[stages[j]] = cover.get(stages[j], 0.0) + overlap
        best = max(cover.items(), key=lambda kv: kv[1], default=(None, 0.0))
        if best[1] > EPOCH_S / 2 + 1e-9:
            out.append(best[0])
        else:
            out.append(None)
            ties += sum(v for v in cover.values()) > EPOCH_S / 2  # a scored stretch without a majority
    return out, ties


def read_hypnogram(path: str | Path, epoch_s: float = EPOCH_S) -> edfio.Edf | Recording:
    """A hypnogram file: CSV / TXT one stage per line (:func:`read_stage_list`), else an EDF+ file of stage
    annotations (:func:`read_edf`), else a recording MNE reads (its annotations)."""
    path = Path(path)
    if path.suffix.lower() in LIST_SUFFIXES:
        return read_stage_list(path, epoch_s)
    if path.suffix.lower() in EDF_SUFFIXES:
        return read_edf(path)
    return read_recording(path)


def _night_key(path: Path) -> tuple[str, int] | None:
    """(subject, night) of a Sleep-EDF file name (``SC4012E0-PSG.edf``, ``SC4012EC-Hypnogram.edf``), else None."""
    m = _SLEEP_EDF_NAME.match(path.name)
    return (m.group(1), int(m.group(2))) if m else None


def scoring_on_recording(psg_path: Path, psg: edfio.Edf | Recording, hyp_path: Path,
                         hyp: edfio.Edf | Recording | None = None) -> list[tuple[float, float, str]]:
    """The stage annotations of ``hyp_path`` (``hyp`` read, or the PSG itself when None) on the recording's time
    axis: onsets in seconds from the PSG's start. The one rule, in prepare and in stage, for which hypnogram
    belongs to which recording; a hypnogram of another night is refused in one line:

    - two Sleep-EDF names must name the same subject and night (``SC4001E0-PSG.edf``, ``SC4001EC-Hypnogram.edf``);
    - the two files' start times (when both are dated) place the scoring on the recording: it must not begin
      before the recording (by more than half an epoch) nor at or after its end;
    - a hypnogram that starts later than its recording must end within it (night 2's hypnogram beside night 1's
      recording starts minutes later and runs past its end).

    Scoring that starts with the recording and runs past its end (a cut recording, Sleep-EDF's trailing '?') is
    kept: the epochs without signal are dropped, with a warning with counts (``stages.scoring_warnings``). A
    CSV / TXT hypnogram (undated) starts with the recording."""
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
        raise FormatError(f"{hyp_path}: no '{STAGE_PREFIX} ...' annotations (nor 'N2', 'Stage 2', ...)")
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
    night: Night, channels: Sequence[str] = (DEFAULT_CHANNEL,), fs: float | None = None, names: dict | None = None
) -> tuple[dict[str, tuple[np.ndarray, float]], list[tuple[float, float, str]]]:
    """``{channel: (samples in µV, rate)}`` and the stage annotations with onsets in seconds from the PSG's
    start (:func:`scoring_on_recording`). ``channels`` are render panels; each reads the file's channel named
    for its role in ``names`` (``{"eeg": "C4-M1", ...}``) or of its derivation (:func:`channels_uv`). ``fs``
    resamples the waveform channels (above 10 Hz, see :func:`resample`); slower channels (a 1-Hz EMG level) keep
    their rate. Units implausible for a channel's header are a warning."""
    psg = read_recording(night.psg)
    signals, _, warned = channels_uv(psg, channels, names, night.psg)
    for warning in warned:
        print(f"warning: {warning}", file=sys.stderr)
    if fs is not None:
        signals = {c: resample(data, rate, fs) for c, (data, rate) in signals.items()}
    if night.hypnogram == night.psg:
        if not stage_annotations(psg, night.psg):
            raise FormatError(f"{night.psg}: no hypnogram file and no '{STAGE_PREFIX} ...' annotations")
        annotations = scoring_on_recording(night.psg, psg, night.psg)
    else:
        annotations = scoring_on_recording(night.psg, psg, night.hypnogram,
                                           read_hypnogram(night.hypnogram, night.hypnogram_epoch))
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
        with atomic_path(path) as tmp:
            edf.write(tmp)
