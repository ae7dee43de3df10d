"""Stage annotations to one AASM label per 30-s epoch: R&K mapping, dropping, wake trimming, epoching."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from eeg_core.errors import FormatError
from eeg_core.stages import EPOCH_S
from sleep_eeg.signal.epochs import epoch_array

# Sleep-EDF's R&K annotation texts: each stage as written in its hypnograms (N3 as S3 or S4), and the unscorable.
RK_TEXT: dict[str, str] = {"W": "Sleep stage W", "N1": "Sleep stage 1", "N2": "Sleep stage 2", "N3": "Sleep stage 3",
                           "REM": "Sleep stage R"}
RK_S4_TEXT = "Sleep stage 4"
UNSCORED_TEXT = "Sleep stage ?"
MOVEMENT_TEXT = "Movement time"

# R&K (Sleep-EDF) and AASM annotation texts -> AASM stage; None = not scorable (dropped).
TEXT_TO_STAGE: dict[str, str | None] = {
    **{text: stage for stage, text in RK_TEXT.items()},
    RK_S4_TEXT: "N3",
    **{f"Sleep stage {stage}": stage for stage in ("N1", "N2", "N3", "REM")},
    UNSCORED_TEXT: None,
    MOVEMENT_TEXT: None,
}


# Other labs' texts for the same stages, compared lower-case with ``_`` as a space: AASM ("N2", "Sleep stage N2",
# "Wake", "REM") and R&K ("Stage 2", "Sleep stage 2", "S4"); the bare digits are not here (see YASA_CODES).
_TOKENS: dict[str, str | None] = {
    "w": "W", "wake": "W", "n1": "N1", "s1": "N1", "1": "N1", "n2": "N2", "s2": "N2", "2": "N2",
    "n3": "N3", "n4": "N3", "s3": "N3", "s4": "N3", "3": "N3", "4": "N3", "r": "REM", "rem": "REM",
    "?": None, "unscored": None, "u": None, "movement": None, "movement time": None, "mt": None, "artefact": None,
    "artifact": None,
}
_PREFIXES = ("sleep stage ", "stage ")
# YASA's integer codes, for a CSV / TXT hypnogram of numbers: 0-4 = W N1 N2 N3 REM; -1 (artefact), -2 (unscored).
YASA_CODES: dict[int, str | None] = {0: "W", 1: "N1", 2: "N2", 3: "N3", 4: "REM", -1: None, -2: None}
STAGE_TO_YASA: dict[str, int] = {s: c for c, s in YASA_CODES.items() if s is not None}


def _normal(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").split())


def stage_text(text: str) -> str | None:
    """The canonical text (a key of ``TEXT_TO_STAGE``) of a stage annotation in any of the known spellings, or None
    for a text that is not one: "N2", "Sleep stage N2", "Stage 2", "Sleep stage 2", "S2" -> "Sleep stage 2";
    "Wake", "W" -> "Sleep stage W"; "Movement time", "MT" -> "Movement time". A bare digit is not a stage text."""
    if text.strip() in TEXT_TO_STAGE:
        return text.strip()
    norm = _normal(text)
    for prefix in _PREFIXES:
        if norm.startswith(prefix):
            norm = norm[len(prefix):]
            break
    else:
        if norm.isdigit():
            return None
    if norm not in _TOKENS:
        return None
    stage = _TOKENS[norm]
    if stage is None:
        return MOVEMENT_TEXT if norm.startswith("m") else UNSCORED_TEXT
    return RK_TEXT[stage]


def map_stage(text: str) -> str | None:
    """AASM stage of an annotation text in any known spelling (:func:`stage_text`; S3 and S4 both N3); ``?``,
    movement and unknown texts give None (``check_annotations`` refuses unknown texts before this is used)."""
    canonical = stage_text(text)
    return None if canonical is None else TEXT_TO_STAGE[canonical]


def check_annotations(annotations: Sequence[tuple[float, float, str]], where: str | Path) -> None:
    """Stage annotations a careful scorer would not accept silently are errors naming the file and annotation:
    a text that is not a known stage ("Sleep stage N5": its epochs would be dropped), and two annotations that
    overlap and give different stages (the later one would win)."""
    known = ", ".join(repr(t) for t in TEXT_TO_STAGE)
    for onset, duration, text in annotations:
        if stage_text(text) is None:
            raise FormatError(f"{where}: unknown stage annotation {text!r} at {onset:g} s (known: {known}, and the "
                              "AASM / R&K spellings 'N2', 'Sleep stage N2', 'Stage 2', 'Wake', 'REM')")
    active: list[tuple[float, float, str]] = []  # annotations still open at the current onset
    for onset, duration, text in sorted(annotations, key=lambda a: (a[0], a[1])):
        active = [a for a in active if a[0] + a[1] > onset + 1e-3]
        for other in active:
            if map_stage(other[2]) != map_stage(text):
                end = min(other[0] + other[1], onset + duration)
                raise FormatError(f"{where}: annotations overlap and contradict: {other[2]!r} at {other[0]:g} s "
                                  f"({other[1]:g} s) and {text!r} at {onset:g} s ({duration:g} s) cover "
                                  f"{onset:g}-{end:g} s")
        active.append((onset, duration, text))


FLAT_UV = 1.0  # an epoch whose peak-to-peak is below this (µV) is a flat line: a blank image
UNSCORED_TAIL_S = 300.0  # a hypnogram ending more than this before the recording is worth a warning


def flat_warnings(signal: np.ndarray, fs: float, epochs: Sequence[int], psg: str | Path, channel: str,
                  epoch_s: float = EPOCH_S) -> list[str]:
    """A channel that is a flat line in some of ``epochs`` (they become blank images), as one line with counts."""
    if not len(epochs):
        return []
    ptp = np.ptp(epoch_array(signal, fs, epochs, epoch_s), axis=1)
    flat = int((ptp < FLAT_UV).sum())
    if not flat:
        return []
    return [f"{psg}: channel {channel!r} is flat (peak-to-peak under {FLAT_UV:g} µV) in {flat} of {len(epochs)} "
            "epochs; their images are blank"]


def scoring_warnings(annotations: Sequence[tuple[float, float, str]], n_epochs: int, duration_s: float,
                     psg: str | Path, hypnogram: str | Path, epoch_s: float = EPOCH_S) -> list[str]:
    """A hypnogram that ends well before its recording of ``n_epochs`` complete epochs (the epochs after it have
    no stage and are dropped), and one that scores past the recording's end (those epochs have no signal), as
    one line each with counts."""
    out = []
    scored_end = max((o + d for o, d, _ in annotations), default=0.0)
    unscored = n_epochs - min(n_epochs, int(np.ceil(scored_end / epoch_s - 1e-9)))
    if unscored * epoch_s > UNSCORED_TAIL_S:
        out.append(f"{hypnogram}: the hypnogram ends at {scored_end / 3600:.2f} h, {unscored * epoch_s / 3600:.2f} h "
                   f"before the recording does ({duration_s / 3600:.2f} h in {psg}); {unscored} of {n_epochs} "
                   "epochs have no stage and are dropped")
    labels = epoch_labels(annotations, None, epoch_s)
    beyond = sum(s is not None for s in labels[n_epochs:])
    if beyond:
        out.append(f"{hypnogram}: the hypnogram scores {beyond} epochs ({beyond * epoch_s / 3600:.2f} h) after the "
                   f"recording ends ({duration_s / 3600:.2f} h in {psg}); they have no signal and are dropped")
    return out


def night_warnings(signal: np.ndarray, fs: float, annotations: Sequence[tuple[float, float, str]],
                   epochs: Sequence[int], psg: str | Path, hypnogram: str | Path, channel: str,
                   epoch_s: float = EPOCH_S) -> list[str]:
    """Data that may be fine but is suspicious, as one line each with counts: a channel that is a flat line
    in kept epochs (:func:`flat_warnings`), and a hypnogram that ends well before the recording or scores past
    its end (:func:`scoring_warnings`)."""
    n_epochs = int(len(signal) // round(epoch_s * fs))
    return (flat_warnings(signal, fs, epochs, psg, channel, epoch_s)
            + scoring_warnings(annotations, n_epochs, len(signal) / fs, psg, hypnogram, epoch_s))


def epoch_labels(
    annotations: Sequence[tuple[float, float, str]], n_epochs: int | None = None, epoch_s: float = EPOCH_S
) -> list[str | None]:
    """One AASM label (or None) per epoch from ``(onset_s, duration_s, text)`` annotations.

    An epoch takes the stage of the annotation covering its midpoint. With ``n_epochs`` (the number of
    complete epochs in the signal) the list has exactly that length; otherwise it ends with the last
    annotation."""
    if n_epochs is None:
        end = max((o + d for o, d, _ in annotations), default=0.0)
        n_epochs = int(end // epoch_s)
    labels: list[str | None] = [None] * n_epochs
    mids = (np.arange(n_epochs) + 0.5) * epoch_s
    for onset, duration, text in annotations:
        stage = map_stage(text)
        lo = int(np.searchsorted(mids, onset, side="left"))
        hi = int(np.searchsorted(mids, onset + duration, side="left"))
        for i in range(lo, hi):
            labels[i] = stage
    return labels


def trim_wake(labels: Sequence[str | None], minutes: float | None = 30.0, epoch_s: float = EPOCH_S) -> range:
    """Epoch range kept: from ``minutes`` of wake before the first sleep epoch to ``minutes`` after the
    last (Sleep-EDF practice). ``None`` keeps everything; no sleep at all keeps everything too."""
    if minutes is None:
        return range(len(labels))
    sleep = [i for i, s in enumerate(labels) if s is not None and s != "W"]
    if not sleep:
        return range(len(labels))
    pad = int(round(minutes * 60 / epoch_s))
    return range(max(0, sleep[0] - pad), min(len(labels), sleep[-1] + pad + 1))


def scorable_epochs(
    annotations: Sequence[tuple[float, float, str]],
    n_samples: int,
    fs: float,
    trim_minutes: float | None = 30.0,
    epoch_s: float = EPOCH_S,
) -> tuple[np.ndarray, list[str]]:
    """Indices (from the recording's start) and AASM labels of the epochs to use: complete epochs of
    the signal, inside the wake trim, with a scorable stage."""
    n_epochs = int(n_samples // round(epoch_s * fs))
    labels = epoch_labels(annotations, n_epochs, epoch_s)
    keep = [i for i in trim_wake(labels, trim_minutes, epoch_s) if labels[i] is not None]
    return np.asarray(keep, dtype=np.int64), [labels[i] for i in keep]
