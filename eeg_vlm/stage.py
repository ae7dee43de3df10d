"""``eeg-vlm stage``: stage whole nights from their EDF files, with one command, into a sleep report.

    eeg-vlm stage NIGHT-PSG.edf --vision CKPT [--vlm CKPT [--model-base BASE]] --out DIR [--hypnogram H.edf] [--explain]
    eeg-vlm stage --edf-dir DIR --vision CKPT [--vlm CKPT ...] --out DIR

Steps, all in memory: the channels the vision checkpoint was trained on are read from the EDF; every complete
30-s epoch of the recording is drawn with the checkpoint's render settings (no PNG folder); the vision module
gives each epoch its feature and its five probabilities (with its temporal head, if it has one); with --vlm,
EEG-VLM answers each epoch in choices mode (the five stage answers scored, see llava.eval.choices), else the
vision module's own probabilities give the stages. The VLM is asked the first of the question templates
(sleep_eeg.cot.QUESTIONS) with the epoch's image and its feature, as in training.

Outputs (in --out; with --edf-dir one folder per night inside it), written into a temporary folder that then
replaces the night's folder whole:
- stages.csv: epoch, onset as clock time (from the EDF's start) and in seconds, stage, the five probabilities,
  the scored stage with --hypnogram, and with --explain the VLM's reasoning before its stage line (empty for a
  stage-only checkpoint);
- hypnogram.png: the hypnogram (and the scored one) above the hypnodensity (the five probabilities over the night);
- statistics.json: the AASM sleep statistics of the staged night (sleep_eeg.statistics; lights off to lights on =
  the recording);
- agreement.json with --hypnogram: accuracy, macro-F1, Cohen's kappa and the confusion matrix against the scored
  epochs, and the scored night's statistics;
- report.html: one self-contained file (the figure embedded) with the statistics, the agreement and the table.

Refused in one line, before anything is written: an unreadable EDF, a missing channel, a vision checkpoint without
recorded render settings, a VLM trained on images drawn otherwise (other channels or rendering) or on features of
another size, and a hypnogram that does not lie on the recording (another night's). With --edf-dir every night is
staged before any folder is written. Python: ``from eeg_vlm import stage_night``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from eeg_core.atomic import atomic_folder, atomic_path, write_json
from eeg_core.errors import FormatError
from eeg_core.formats import check_render
from eeg_core.stages import EPOCH_S, STAGES
from sleep_eeg.stages import UNSCORED_TAIL_S

CSV_NAME, FIGURE_NAME, STATISTICS_NAME = "stages.csv", "hypnogram.png", "statistics.json"
AGREEMENT_NAME, REPORT_NAME = "agreement.json", "report.html"


# ---------------------------------------------------------------------------------------------
# A staged night
# ---------------------------------------------------------------------------------------------
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
        The checkpoints that staged the night.
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
        """AASM sleep statistics of the staged night (``sleep_eeg.statistics.sleep_statistics``)."""
        from sleep_eeg.statistics import sleep_statistics

        return sleep_statistics(self.stages, self.epoch_s)

    @property
    def agreement(self) -> dict | None:
        """Agreement with the scored epochs (``sleep_eeg.score.compute_metrics``) and the scored night's
        statistics; None without a hypnogram."""
        if self.scored is None:
            return None
        from sleep_eeg.metrics import compute_metrics
        from sleep_eeg.statistics import sleep_statistics

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
        writer.writerow(["epoch", "onset_clock", "onset_s", "stage", *(f"p_{s}" for s in STAGES)]
                        + (["scored"] if self.scored is not None else [])
                        + (["reasoning"] if self.reasoning is not None else []))
        for i, (onset, stage, p) in enumerate(zip(self.onsets, self.stages, self.probabilities)):
            writer.writerow([i, self.clock(onset), f"{onset:g}", stage, *(f"{v:.6f}" for v in p)]
                            + ([self.scored[i] or ""] if self.scored is not None else [])
                            + ([self.reasoning[i]] if self.reasoning is not None else []))
        text = buf.getvalue()
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
        return text

    def plot(self, path: str | Path | None = None):
        """The hypnogram (and the scored one) above the hypnodensity, as a matplotlib Figure; saved as PNG to
        ``path`` when given."""
        from eeg_vlm.report import night_figure, save_png

        fig = night_figure(self)
        if path is not None:
            save_png(fig, path)
        return fig

    def save(self, out: str | Path) -> Path:
        """Write every output into the folder ``out`` (replaced whole, atomically) and return it."""
        from eeg_vlm.report import figure_png, report_html

        fig = self.plot()
        png = figure_png(fig)
        import matplotlib.pyplot as plt

        plt.close(fig)
        statistics, agreement = self.statistics, self.agreement
        with atomic_folder(out) as tmp:
            self.to_csv(tmp / CSV_NAME)
            (tmp / FIGURE_NAME).write_bytes(png)
            write_json(tmp / STATISTICS_NAME, statistics)
            if agreement is not None:
                write_json(tmp / AGREEMENT_NAME, agreement)
            (tmp / REPORT_NAME).write_text(report_html(self, png, statistics, agreement), encoding="utf-8")
        return Path(out)


# ---------------------------------------------------------------------------------------------
# Reading a night
# ---------------------------------------------------------------------------------------------
def night_name(psg: Path) -> str:
    """``SC4001E0-PSG.edf`` -> ``SC4001E0``; other files: the name without ``.edf``."""
    stem = psg.stem
    return stem[: -len("-PSG")] if stem.upper().endswith("-PSG") else stem


def read_signals(psg: Path, channels: Sequence[str], vision: str) -> tuple[dict, datetime.datetime | None, int]:
    """``({channel: (µV, rate)}, start, number of complete epochs)`` of the channels the checkpoint was trained on."""
    from sleep_eeg.edf import read_edf, signal_uv, start_datetime

    edf = read_edf(psg)
    missing = [c for c in channels if c not in edf.labels]
    if missing:
        raise FormatError(f"{psg}: no channel {missing[0]!r}, which the vision checkpoint {vision} was trained on "
                          f"({', '.join(channels)}); channels present: {', '.join(edf.labels)}")
    signals = {c: signal_uv(edf, c) for c in channels}
    n_epochs = min(int(len(x) // round(EPOCH_S * fs)) for x, fs in signals.values())
    if n_epochs < 1:
        raise FormatError(f"{psg}: shorter than one {EPOCH_S:g}-s epoch")
    return signals, start_datetime(edf), n_epochs


def read_scored(hypnogram: Path, psg: Path, start: datetime.datetime | None, n_epochs: int) -> list[str | None]:
    """The scored stage of each epoch; a hypnogram whose scoring does not lie on the recording (it begins before
    it or ends more than five minutes after it, by the two files' start times) is another night's."""
    from sleep_eeg.edf import read_edf, stage_annotations, start_datetime
    from sleep_eeg.stages import check_annotations, epoch_labels

    hyp = read_edf(hypnogram)
    theirs = start_datetime(hyp)
    offset = (theirs - start).total_seconds() if theirs is not None and start is not None else 0.0
    annotations = stage_annotations(hyp, hypnogram, offset)
    if not annotations:
        raise FormatError(f"{hypnogram}: no 'Sleep stage ...' annotations")
    check_annotations(annotations, hypnogram)
    first = min(o for o, _, _ in annotations)
    last = max(o + d for o, d, _ in annotations)
    duration = n_epochs * EPOCH_S
    if first < -EPOCH_S / 2 or last > duration + UNSCORED_TAIL_S or first >= duration:
        when = f"starting {theirs:%Y-%m-%d %H:%M:%S}" if theirs is not None else "as dated"
        raise FormatError(f"{hypnogram}: scores {first / 3600:+.2f} h to {last / 3600:+.2f} h ({when}) of a recording "
                          f"of {duration / 3600:.2f} h ({psg}): a hypnogram of another night")
    return epoch_labels(annotations, n_epochs)


# ---------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------
class Stager:
    """The checkpoints, loaded once, that stage nights.

    Parameters
    ----------
    vision : str or Path
        A vision-module checkpoint (``eeg-vlm vision train``) with recorded render settings.
    vlm : str or Path, optional
        An EEG-VLM checkpoint (full, LoRA or projector-only); without it the vision module gives the stages.
    model_base : str or Path, optional
        The base model of a LoRA or projector-only ``vlm``.
    device : str, optional
        Default: cuda if available, else cpu.
    batch_size : int
        Epochs per VLM batch.
    max_new_tokens : int
        Bound on a chain-of-thought checkpoint's reasoning per epoch.
    """

    def __init__(self, vision: str | Path, vlm: str | Path | None = None, model_base: str | Path | None = None,
                 device: str | None = None, batch_size: int = 32, max_new_tokens: int = 256):
        import torch

        from sleep_eeg.render import RenderConfig
        from vision_modules.checkpoint import load_vision_module

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.vision, self.batch_size, self.max_new_tokens = Path(vision), batch_size, max_new_tokens
        if batch_size < 1:
            raise FormatError(f"--batch-size must be at least 1, got {batch_size}")
        self.vision_model, self.vision_config = load_vision_module(self.vision, self.device)
        settings = self.vision_config.get("render")
        if not settings:
            raise FormatError(f"{self.vision}: the vision checkpoint records no render settings (trained before they "
                              "were recorded): train it again on records from eeg-vlm prepare")
        self.render = RenderConfig.from_dict(settings, f"{self.vision}/config.json: render")
        classes = list(self.vision_config.get("classes", STAGES))
        if sorted(classes) != sorted(STAGES):
            raise FormatError(f"{self.vision}: classes {classes} are not the stages {' '.join(STAGES)}")
        self.columns = [classes.index(s) for s in STAGES]
        self.models = {"vision": str(self.vision), "render": self.render.render_id}
        self.vlm = None
        if vlm is not None:
            self._load_vlm(Path(vlm), model_base)

    def _load_vlm(self, vlm: Path, model_base) -> None:
        from llava.conversation import get_conv_template
        from llava.eval import model_vqa
        from llava.model.config import load_config
        from sleep_eeg.cot import QUESTIONS

        config = load_config(vlm)  # checked before the weights load
        check_render(getattr(config, "eeg_render", None), self.vision_config["render"], str(vlm),
                     f"{self.vision} (the vision checkpoint)")
        dim = getattr(config, "mm_hidden_size", None)
        if dim is not None and int(dim) != int(self.vision_config["feature_dim"]):
            raise FormatError(f"{self.vision}: gives {self.vision_config['feature_dim']}-d features but the VLM {vlm} "
                              f"projects {dim}-d ones (mm_hidden_size)")
        self.vlm = model_vqa.load_model(str(vlm), None if model_base is None else str(model_base), self.device)
        config = self.vlm[1].config
        self.conv = get_conv_template(getattr(config, "conv_version", None) or "llava_v1")
        question = {"text": QUESTIONS[0], "image": ["epoch", "epoch"]}  # Image2: the placeholder for the feature
        self.user_text = model_vqa.user_text(question, bool(getattr(config, "mm_use_im_start_end", False)))
        self.models.update(vlm=str(vlm), model_base=None if model_base is None else str(model_base))

    def stage(self, psg: str | Path, hypnogram: str | Path | None = None, explain: bool = False,
              progress: bool = False) -> StagedNight:
        """Stage one night (see ``stage_night``)."""
        from tqdm.auto import tqdm

        from llava.eval import model_vqa
        from sleep_eeg.render import render_night
        from vision_modules.extract import night_features

        psg = Path(psg)
        if explain and self.vlm is None:
            raise FormatError("--explain needs --vlm: the vision module gives no reasoning")
        signals, start, n_epochs = read_signals(psg, self.render.channels, str(self.vision))
        scored = read_scored(Path(hypnogram), psg, start, n_epochs) if hypnogram is not None else None
        epochs = list(range(n_epochs))
        images = render_night(signals, epochs, self.render)
        features, probs = night_features(self.vision_model, images, epochs, device=self.device)
        probs = np.asarray(probs, dtype=np.float64)[:, self.columns]
        reasoning = None
        if self.vlm is not None:
            tokenizer, model, processor = self.vlm
            chosen = []
            bar = tqdm(total=n_epochs, desc=f"staging {night_name(psg)}", unit="epoch", disable=not progress,
                       leave=False)
            for s in range(0, n_epochs, self.batch_size):
                batch = range(s, min(s + self.batch_size, n_epochs))
                chosen += model_vqa.choose_batch(model, tokenizer, processor, [self.user_text] * len(batch),
                                                 [[images[i]] for i in batch], [features[i] for i in batch],
                                                 self.conv, self.max_new_tokens)
                bar.update(len(batch))
            bar.close()
            probs = np.asarray([[p[s] for s in STAGES] for _, p in chosen], dtype=np.float64)
            if explain:
                reasoning = [text.rpartition("\n")[0] if "\n" in text else "" for text, _ in chosen]
        probs = probs / probs.sum(axis=1, keepdims=True)
        stages = [STAGES[int(i)] for i in probs.argmax(axis=1)]
        return StagedNight(night_name(psg), psg, start, stages, probs, reasoning, scored,
                           {**self.models, "hypnogram": None if hypnogram is None else str(hypnogram)})


def stage_night(psg: str | Path, vision: str | Path, vlm: str | Path | None = None,
                model_base: str | Path | None = None, hypnogram: str | Path | None = None, explain: bool = False,
                device: str | None = None, batch_size: int = 32) -> StagedNight:
    """Stage a whole night from its EDF file.

    Parameters
    ----------
    psg : str or Path
        The night's PSG EDF; it must hold the channels the vision checkpoint was trained on.
    vision : str or Path
        A vision-module checkpoint folder (``eeg-vlm vision train``).
    vlm : str or Path, optional
        An EEG-VLM checkpoint; it answers in choices mode. Without it the vision module's own probabilities
        give the stages.
    model_base : str or Path, optional
        The base model of a LoRA or projector-only ``vlm``.
    hypnogram : str or Path, optional
        The night's scored hypnogram (EDF+ stage annotations), for ``.agreement``.
    explain : bool
        Keep the VLM's reasoning before each stage line (``.reasoning``).
    device : str, optional
        Default: cuda if available, else cpu.
    batch_size : int
        Epochs per VLM batch.

    Returns
    -------
    StagedNight
        ``.stages``, ``.probabilities``, ``.statistics``, ``.agreement``, ``.to_csv()``, ``.plot()``, ``.save()``.

    Examples
    --------
    >>> night = stage_night("SC4001E0-PSG.edf", vision="checkpoints/vision/resnet18")  # doctest: +SKIP
    >>> night.statistics["TST"], night.stages[:3]  # doctest: +SKIP
    """
    return Stager(vision, vlm, model_base, device, batch_size).stage(psg, hypnogram, explain)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def nights_in(edf_dir: str | Path) -> list[tuple[Path, Path | None]]:
    """``(PSG, hypnogram or None)`` of every night in a folder (paired by ``sleep_eeg.edf.find_nights``); an EDF+
    file with its own stage annotations is its own hypnogram."""
    from sleep_eeg.edf import STAGE_PREFIX, find_nights, read_edf

    out = []
    for night in find_nights(edf_dir):
        if night.hypnogram != night.psg:
            out.append((night.psg, night.hypnogram))
        else:
            own = any(a.text.strip().startswith(STAGE_PREFIX) for a in read_edf(night.psg).annotations)
            out.append((night.psg, night.psg if own else None))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eeg-vlm stage", description=__doc__.split("\n\n")[0])
    p.add_argument("psg", nargs="?", help="the night's PSG EDF file")
    p.add_argument("--edf-dir", default=None, help="stage every night in this folder instead (one folder each in --out)")
    p.add_argument("--hypnogram", default=None, help="the night's scored hypnogram (EDF+), for agreement")
    p.add_argument("--vision", required=True, help="vision-module checkpoint (eeg-vlm vision train)")
    p.add_argument("--vlm", default=None, help="EEG-VLM checkpoint; without it the vision module gives the stages")
    p.add_argument("--model-base", default=None, help="base model of a LoRA or projector-only --vlm")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--explain", action="store_true", help="keep the VLM's reasoning in stages.csv")
    p.add_argument("--batch-size", type=int, default=32, help="epochs per VLM batch")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--import-module", action="append", default=[], metavar="MODULE",
                   help="a Python module to import first (it registers the --vision checkpoint's module); repeatable")
    args = p.parse_args(argv)
    from vision_modules.registry import import_user_modules

    import_user_modules(args.import_module)
    if (args.psg is None) == (args.edf_dir is None):
        raise FormatError("give one PSG file or --edf-dir, not both or neither")
    if args.edf_dir is not None and args.hypnogram is not None:
        raise FormatError("--hypnogram goes with one PSG file; with --edf-dir hypnograms are paired by their names")
    jobs = nights_in(args.edf_dir) if args.edf_dir is not None else [(Path(args.psg), args.hypnogram)]
    stager = Stager(args.vision, args.vlm, args.model_base, args.device, args.batch_size)
    from tqdm.auto import tqdm

    staged = [stager.stage(psg, hyp, args.explain, progress=True)
              for psg, hyp in tqdm(jobs, desc="nights", unit="night", disable=len(jobs) < 2)]
    out = Path(args.out)
    for night in staged:
        folder = night.save(out / night.name if args.edf_dir is not None else out)
        line = f"{night.name}: {len(night.stages)} epochs, TST {night.statistics['TST']:.1f} min"
        agreement = night.agreement
        if agreement is not None:
            kappa = agreement["kappa"]
            line += f", accuracy {agreement['accuracy']:.3f}, kappa {'n/a' if kappa is None else f'{kappa:.3f}'}"
        print(f"{line} -> {folder / REPORT_NAME}")
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
