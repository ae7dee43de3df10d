"""Hypnogram files: their stage annotations.

A hypnogram is an EDF+ file of stage annotations (AASM or R&K texts, see ``stages.stage_text``), a recording MNE
reads with such annotations, or a CSV / TXT file of one stage per line (:func:`read_stage_list`; lines of 5 or 20 s
are mapped onto 30-s epochs by majority).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Sequence

import edfio
import numpy as np

from eeg_core.errors import FormatError
from eeg_core.stages import EPOCH_S
from sleep_eeg.recording.edf import EDF_SUFFIXES, Annotation, Recording, read_edf, read_recording
from sleep_eeg.recording.stages import UNSCORED_TEXT, YASA_CODES, map_stage, stage_text

STAGE_PREFIX = "Sleep stage"
LIST_SUFFIXES = (".csv", ".tsv", ".txt")  # a hypnogram of one stage per line


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
