"""A staged night (:class:`StagedNight`: what ``stage_night`` returns) and the files ``eeg-vlm stage`` writes of it:
stages.csv, hypnogram.edf, hypnogram.png, statistics.json, agreement.json and report.html, into a folder where it
writes only its own files (:func:`check_output_folder`, :func:`write_outputs`)."""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eeg_core.atomic import atomic_path, file_sha256, write_files, write_json
from eeg_core.errors import FormatError
from eeg_core.outputs import check_out_folder
from eeg_core.stages import EPOCH_S, STAGES

CSV_NAME, FIGURE_NAME, STATISTICS_NAME = "stages.csv", "hypnogram.png", "statistics.json"
AGREEMENT_NAME, REPORT_NAME, EDF_NAME = "agreement.json", "report.html", "hypnogram.edf"
OUTPUT_NAMES = (CSV_NAME, FIGURE_NAME, STATISTICS_NAME, AGREEMENT_NAME, REPORT_NAME, EDF_NAME)
EDF_TEXT = {"W": "Sleep stage W", "N1": "Sleep stage N1", "N2": "Sleep stage N2", "N3": "Sleep stage N3",
            "REM": "Sleep stage R"}  # the AASM texts of the EDF+ hypnogram stage writes (as MNE and YASA name them)
MANIFEST_NAME = ".eeg-vlm-stage.json"  # what stage wrote into an output folder, with each file's sha256


@dataclass
class StagedNight:
    """One night's stages, as ``stage_night`` returns it.

    Attributes
    ----------
    name : str
        The night (the PSG file's name without ``-PSG.edf`` / ``.edf``).
    psg : Path
        The PSG file.
    start : datetime.datetime or None
        The recording's start, from the EDF header (None when anonymised).
    stages : list of str
        One AASM stage per complete 30-s epoch of the recording, from its start.
    probabilities : numpy.ndarray
        ``[N, 5]`` float, the probability of each stage (columns in ``STAGES`` order: W N1 N2 N3 REM).
    reasoning : list of str or None
        With ``explain``: the VLM's text before its stage line, per epoch.
    scored : list of str or None
        With a hypnogram: the scored stage of each epoch (None where it gives none).
    models : dict
        The checkpoints that staged the night, and ``channels``: the recording's channel read for each channel
        the vision checkpoint was trained on.
    """

    name: str
    psg: Path
    start: datetime.datetime | None
    stages: list[str]
    probabilities: np.ndarray
    reasoning: list[str] | None = None
    scored: list[str | None] | None = None
    models: dict = field(default_factory=dict)
    epoch_s: float = EPOCH_S

    @property
    def onsets(self) -> np.ndarray:
        """Each epoch's onset in seconds from the recording's start."""
        return np.arange(len(self.stages)) * self.epoch_s

    def clock(self, onset_s: float) -> str:
        """An onset as clock time (``YYYY-MM-DD HH:MM:SS``), or "" when the start is unknown."""
        return "" if self.start is None else (self.start + datetime.timedelta(seconds=float(onset_s))).isoformat(" ")

    @property
    def statistics(self) -> dict:
        """AASM sleep statistics of the staged night (``sleep_eeg.evaluation.statistics.sleep_statistics``)."""
        from sleep_eeg.evaluation.statistics import sleep_statistics

        return sleep_statistics(self.stages, self.epoch_s)

    @property
    def agreement(self) -> dict | None:
        """Agreement with the scored epochs (``sleep_eeg.evaluation.score.compute_metrics``) and the scored night's
        statistics; None without a hypnogram."""
        if self.scored is None:
            return None
        from sleep_eeg.evaluation.metrics import compute_metrics
        from sleep_eeg.evaluation.statistics import sleep_statistics

        both = [(s, p) for s, p in zip(self.scored, self.stages) if s is not None]
        if not both:
            raise FormatError(f"{self.psg}: the hypnogram scores none of the recording's epochs")
        metrics = compute_metrics([s for s, _ in both], [p for _, p in both])
        metrics["scored_statistics"] = sleep_statistics(self.scored, self.epoch_s)
        return metrics

    def to_csv(self, path: str | Path | None = None) -> str:
        """The stages table as CSV text; written (atomically) to ``path`` when given."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        from sleep_eeg.recording.stages import STAGE_TO_YASA

        writer.writerow(["epoch", "onset_clock", "onset_s", "stage", *(f"p_{s}" for s in STAGES), "yasa"]
                        + (["scored"] if self.scored is not None else [])
                        + (["reasoning"] if self.reasoning is not None else []))
        for i, (onset, stage, p) in enumerate(zip(self.onsets, self.stages, self.probabilities)):
            writer.writerow([i, self.clock(onset), f"{onset:g}", stage, *(f"{v:.6f}" for v in p), STAGE_TO_YASA[stage]]
                            + ([self.scored[i] or ""] if self.scored is not None else [])
                            + ([self.reasoning[i]] if self.reasoning is not None else []))
        text = buf.getvalue()
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return text

    @property
    def yasa_codes(self) -> np.ndarray:
        """The stages as YASA's integer codes (0 W, 1 N1, 2 N2, 3 N3, 4 REM)."""
        from sleep_eeg.recording.stages import STAGE_TO_YASA

        return np.asarray([STAGE_TO_YASA[s] for s in self.stages], dtype=np.int64)

    def to_yasa(self):
        """A ``yasa.Hypnogram`` of the stages with their probabilities (``proba``) and the start (needs yasa)."""
        try:
            import pandas as pd
            import yasa
        except ImportError:
            raise FormatError("to_yasa needs yasa (pip install 'eeg-vlm[baselines]')") from None
        names = {"W": "WAKE", "N1": "N1", "N2": "N2", "N3": "N3", "REM": "REM"}
        proba = pd.DataFrame(self.probabilities, columns=[names[s] for s in STAGES])
        return yasa.Hypnogram([names[s] for s in self.stages], n_stages=len(STAGES), freq=f"{self.epoch_s:g}s",
                              start=self.start, proba=proba)

    def to_edf(self, path: str | Path | None = None) -> bytes:
        """The stages as an EDF+ file of annotations (``EDF_TEXT``, one per epoch, onsets from the recording's
        start, dated as the recording), written with edfio; written (atomically) to ``path`` when given."""
        import edfio

        start = self.start or datetime.datetime(1985, 1, 1)  # EDF's clipping date: an undated recording
        edf = edfio.Edf([], recording=edfio.Recording(startdate=start.date()), starttime=start.time(),
                        annotations=[edfio.EdfAnnotation(float(o), self.epoch_s, EDF_TEXT[s])
                                     for o, s in zip(self.onsets, self.stages)])
        buf = io.BytesIO()
        edf.write(buf)
        data = buf.getvalue()
        if path is not None:
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
        return data

    def plot(self, path: str | Path | None = None):
        """The hypnogram (and the scored one) above the hypnodensity, as a matplotlib Figure; saved as PNG to
        ``path`` when given."""
        from eeg_vlm.report import night_figure, save_png

        fig = night_figure(self)
        if path is not None:
            save_png(fig, path)
        return fig

    def save(self, out: str | Path) -> Path:
        """Write every output into the folder ``out`` and return it (see :func:`write_outputs`)."""
        from eeg_vlm.report import figure_png, report_html

        previous = check_output_folder(out)
        fig = self.plot()
        png = figure_png(fig)
        import matplotlib.pyplot as plt

        plt.close(fig)
        statistics, agreement = self.statistics, self.agreement
        files = {CSV_NAME: self.to_csv().encode("utf-8"), FIGURE_NAME: png,
                 STATISTICS_NAME: json_bytes(statistics), EDF_NAME: self.to_edf()}
        if agreement is not None:
            files[AGREEMENT_NAME] = json_bytes(agreement)
        files[REPORT_NAME] = report_html(self, png, statistics, agreement).encode("utf-8")
        return write_outputs(out, files, previous)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _manifest(out: Path) -> dict[str, list[str]]:
    """``{file name: [sha256, ...]}`` of the files stage wrote into ``out`` (its manifest), or {}."""
    path = out / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return {}
    if path.is_symlink() or not path.is_file():
        raise FormatError(f"{path}: not a file that eeg-vlm stage wrote; move it, or choose another --out")
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}  # unreadable: nothing in the folder counts as written by stage
    if not isinstance(files, dict):
        return {}
    return {str(k): [str(h) for h in v] for k, v in files.items() if isinstance(v, list)}


def check_output_folder(out: str | Path) -> dict[str, list[str]]:
    """Refuse, before any work, an output folder that is a file or lies under one, and a folder holding a file of
    one of stage's names (``OUTPUT_NAMES``) that stage did not write there, or that was changed since: stage
    never overwrites or deletes a file it did not write. Returns the folder's manifest (see ``write_outputs``)."""
    out = check_out_folder(out)
    if not out.exists():
        return {}
    manifest = _manifest(out)
    for name in OUTPUT_NAMES:
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file() or file_sha256(path) not in manifest.get(name, []):
            raise FormatError(f"{path}: is there and eeg-vlm stage did not write it (or it was changed since); "
                              "stage does not overwrite files it did not write: move it, or choose another --out")
    return manifest


def write_outputs(out: str | Path, files: dict[str, bytes], previous: dict[str, list[str]]) -> Path:
    """The rule for ``--out``: stage writes only its own files (``OUTPUT_NAMES``) into the folder, each atomically,
    and leaves every other file there as it is. A hidden manifest (``MANIFEST_NAME``) keeps the sha256 of what it
    wrote: a rerun replaces those files, removes its own file that the new run does not write (an agreement.json
    of an earlier run with --hypnogram) when it is unchanged, and refuses to touch anything else
    (:func:`check_output_folder`, called before any work)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    new = {name: [hashlib.sha256(data).hexdigest()] for name, data in files.items()}
    stale = [name for name in previous if name in OUTPUT_NAMES and name not in files and (out / name).is_file()
             and not (out / name).is_symlink() and file_sha256(out / name) in previous[name]]
    # While the files are replaced, the manifest accepts both the old and the new ones: a run killed midway
    # leaves a folder that the next run may still write into.
    during = {name: previous.get(name, []) + new.get(name, []) for name in {*previous, *new}}
    write_json(out / MANIFEST_NAME, {"files": during})
    write_files(out, files)
    for name in stale:
        (out / name).unlink()
    write_json(out / MANIFEST_NAME, {"files": new})
    return out
