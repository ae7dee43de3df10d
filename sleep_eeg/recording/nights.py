"""Nights: which recording goes with which hypnogram, and a night's channels with its scoring on one time axis.

Sleep-EDF names a night ``SC4ssNE0-PSG.edf`` with its scoring in ``SC4ssNEC-Hypnogram.edf`` (``ST7ssNJ0`` /
``ST7ssNJP`` for the ST study): the two names agree up to their last character before the dash. An EDF+
file that carries its own stage annotations is a night on its own. A pairing CSV (columns ``recording``,
``hypnogram``, ``subject``; :func:`read_pairs`) pairs any files instead. :func:`scoring_on_recording` is the one
rule for which hypnogram belongs to which recording.
"""
from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import edfio
import numpy as np

from eeg_core.errors import FormatError
from eeg_core.stages import EPOCH_S
from sleep_eeg.recording.channels import DEFAULT_CHANNEL
from sleep_eeg.recording.edf import RECORDING_SUFFIXES, Recording, channels_uv, read_recording, start_datetime
from sleep_eeg.recording.hypnogram import LIST_SUFFIXES, STAGE_PREFIX, read_hypnogram, stage_annotations
from sleep_eeg.recording.stages import map_stage
from sleep_eeg.signal.filters import resample

_SLEEP_EDF_NAME = re.compile(r"^(S[CT]\d\d\d)(\d)")  # SC4 + subject (2 digits), then the night


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
