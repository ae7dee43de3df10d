"""``eeg-vlm stage``: stage whole nights from their EDF files, with one command, into a sleep report.

    eeg-vlm stage NIGHT-PSG.edf --vision CKPT [--vlm CKPT [--model-base BASE]] --out DIR [--hypnogram H.edf] [--explain]
    eeg-vlm stage --edf-dir DIR|PAIRS.csv --vision CKPT [--vlm CKPT ...] --out DIR
    [--eeg-name C4-M1 --eog-name E1-M2 --emg-name Chin1-Chin2] [--hypnogram H.csv --hypnogram-epoch 20]

Steps, all in memory: the channels the vision checkpoint was trained on are read from the recording (each the
channel named for its role by --eeg-name / --eog-name / --emg-name, else the one of its derivation; another
derivation than the checkpoint's is said in one line; µV from the header's unit, a unit that does not fit the
amplitudes a warning); every complete
30-s epoch of the recording is drawn with the checkpoint's render settings (no PNG folder); the vision module
gives each epoch its feature and its five probabilities (through its sequence encoder over the whole recording,
if it has one); with --vlm,
EEG-VLM answers each epoch in choices mode (the five stage answers scored, see llava.eval.choices), else the
vision module's own probabilities give the stages. The VLM is asked the first of the question templates
(sleep_eeg.images.cot.QUESTIONS) with the epoch's image and its feature, as in training.

Outputs (in --out; with --edf-dir one folder per night inside it), each file written atomically. Stage writes only
these files into the folder and leaves every other file there alone; it overwrites one of them only when it wrote
it there itself (a hidden manifest, .eeg-vlm-stage.json, keeps their sha256), else it refuses before any work:
- stages.csv: epoch, onset as clock time (from the EDF's start) and in seconds, stage, the five probabilities,
  the stage as YASA's integer code (yasa: 0 W, 1 N1, 2 N2, 3 N3, 4 REM), the scored stage with --hypnogram, and
  with --explain the VLM's reasoning before its stage line (empty for a stage-only checkpoint);
- hypnogram.edf: the stages as EDF+ annotations ("Sleep stage W" / "N1" / "N2" / "N3" / "R", one per 30-s epoch,
  onsets from the recording's start, dated as the recording), which EDFbrowser, MNE and edfio read;
- hypnogram.png: the hypnogram (and the scored one) above the hypnodensity (the five probabilities over the night);
- statistics.json: the AASM sleep statistics of the staged night (sleep_eeg.evaluation.statistics; lights off to
  lights on = the recording);
- agreement.json with --hypnogram: accuracy, macro-F1, Cohen's kappa and the confusion matrix against the scored
  epochs, and the scored night's statistics;
- report.html: one self-contained file (the figure embedded) with the statistics, the agreement and the table.

Refused in one line, before anything is written: an --out that is a file (or lies under one), an unreadable EDF, a missing channel, a vision checkpoint without
recorded render settings, an EDF+D recording with gaps, a channel sampled too slowly for its band, a VLM trained on
images drawn otherwise (other channels or rendering) or on features of another size, and a hypnogram of another
night (sleep_eeg.recording.nights.scoring_on_recording, the rule prepare follows). A flat channel and a hypnogram that
runs past the recording are warnings with counts. With --edf-dir every night is staged before any folder is
written. Python: ``from eeg_vlm import stage_night``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from eeg_core.errors import FormatError
from eeg_core.formats import check_render
from eeg_core.layout import VISION_CONFIG
from eeg_core.options import add_options, option, options_from_args
from eeg_core.outputs import check_out_folder
from eeg_core.stages import EPOCH_S, STAGES
from eeg_vlm.staged import REPORT_NAME, StagedNight, check_output_folder
from sleep_eeg.evaluation.metrics import HEADLINE, metric_line


# ---------------------------------------------------------------------------------------------
# Reading a night
# ---------------------------------------------------------------------------------------------
def night_name(psg: Path) -> str:
    """``SC4001E0-PSG.edf`` -> ``SC4001E0``; other files: the name without ``.edf``."""
    stem = psg.stem
    return stem[: -len("-PSG")] if stem.upper().endswith("-PSG") else stem


def open_recording(source) -> tuple[Path, object]:
    """``(the path or a name, the recording)`` of what ``stage_night`` is given: a path (EDF with edfio, BDF and
    other formats with MNE), an ``mne.io.Raw`` (volts, as MNE keeps them), or ``(data, sf, ch_names)`` arrays in
    µV (``data`` ``[channels, samples]``)."""
    from sleep_eeg.recording.edf import from_arrays, from_mne, read_recording

    if isinstance(source, (str, Path)):
        return Path(source), read_recording(source)
    if isinstance(source, (tuple, list)) and len(source) == 3:
        data, sf, ch_names = source
        return Path("arrays"), from_arrays(data, sf, list(ch_names))
    if hasattr(source, "get_data") and hasattr(source, "info"):
        files = [f for f in (getattr(source, "filenames", None) or []) if f]
        return (Path(files[0]) if files else Path("raw")), from_mne(source)
    raise FormatError(f"stage_night: a path, an mne.io.Raw or (data, sf, ch_names) arrays, not {type(source).__name__}")


def read_signals(psg: Path, channels: Sequence[str], vision: str, names: dict | None = None, recording=None):
    """``({channel: (µV, rate)}, start, number of complete epochs, the read recording, {channel: the recording's
    label})`` of the channels the checkpoint was trained on (``sleep_eeg.recording.edf.read_recording``: an EDF+D
    recording with gaps is refused): each panel reads the channel named for its role in ``names``, else the one of
    its derivation. A channel of another derivation than the checkpoint's is said in one line; units implausible
    for their header are a warning."""
    from sleep_eeg.recording.channels import derivation
    from sleep_eeg.recording.edf import channels_uv, read_recording, start_datetime

    edf = read_recording(psg) if recording is None else recording
    signals, found, warned = channels_uv(edf, channels, names, psg,
                                         f", which the vision checkpoint {vision} was trained on ({', '.join(channels)})")
    other = [f"{label} for {panel}" for panel, label in found.items() if derivation(label) != derivation(panel)]
    if other:
        print(f"note: {psg}: another derivation than the vision checkpoint was trained on: {'; '.join(other)}",
              file=sys.stderr)
    for warning in warned:
        print(f"warning: {warning}", file=sys.stderr)
    n_epochs = min(int(len(x) // round(EPOCH_S * fs)) for x, fs in signals.values())
    if n_epochs < 1:
        raise FormatError(f"{psg}: shorter than one {EPOCH_S:g}-s epoch")
    return signals, start_datetime(edf), n_epochs, edf, found


def read_scored(hypnogram: Path, psg: Path, edf, n_epochs: int,
                hypnogram_epoch: float = EPOCH_S) -> tuple[list[str | None], list[str]]:
    """The scored stage of each epoch, and the warnings about the scoring (one line each, with counts). Which
    hypnogram belongs to which recording is ``sleep_eeg.recording.nights.scoring_on_recording``'s rule, as in prepare:
    another night's is refused. ``hypnogram_epoch``: seconds per line of a CSV / TXT hypnogram."""
    from sleep_eeg.recording.hypnogram import read_hypnogram
    from sleep_eeg.recording.nights import scoring_on_recording
    from sleep_eeg.recording.stages import check_annotations, epoch_labels, scoring_warnings

    hypnogram, psg = Path(hypnogram), Path(psg)
    own = hypnogram.resolve() == psg.resolve()
    annotations = scoring_on_recording(psg, edf, hypnogram, None if own else read_hypnogram(hypnogram, hypnogram_epoch))
    check_annotations(annotations, hypnogram)
    return (epoch_labels(annotations, n_epochs),
            scoring_warnings(annotations, n_epochs, float(edf.duration), psg, hypnogram))


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

        from sleep_eeg.images.render import RenderConfig
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
        self.render = RenderConfig.from_dict(settings, f"{self.vision / VISION_CONFIG}: render")
        classes = list(self.vision_config.get("classes", STAGES))
        if sorted(classes) != sorted(STAGES):
            raise FormatError(f"{self.vision}: classes {classes} are not the stages {' '.join(STAGES)}")
        self.columns = [classes.index(s) for s in STAGES]
        self.models = {"vision": str(self.vision), "render": self.render.render_id}
        self.vlm = None
        if vlm is not None:
            self._load_vlm(Path(vlm), model_base)

    @classmethod
    def from_options(cls, vision: str | Path, options: "StageOptions") -> "Stager":
        """The stager of ``vision`` and ``options``' VLM, base model, device and batch size."""
        return cls(vision, options.vlm, options.model_base, options.device, options.batch_size)

    def stage_with(self, psg, options: "StageOptions", progress: bool = False) -> StagedNight:
        """Stage one night with ``options``' hypnogram, explain, channel names and hypnogram epoch."""
        return self.stage(psg, options.hypnogram, options.explain, progress, options.eeg_name, options.eog_name,
                          options.emg_name, options.hypnogram_epoch)

    def _load_vlm(self, vlm: Path, model_base) -> None:
        from llava.conversation import checkpoint_conv_template
        from llava.eval import answering
        from llava.model.config import load_config
        from sleep_eeg.images.cot import QUESTIONS

        config = load_config(vlm)  # checked before the weights load
        check_render(getattr(config, "eeg_render", None), self.vision_config["render"], str(vlm),
                     f"{self.vision} (the vision checkpoint)")
        dim = getattr(config, "mm_hidden_size", None)
        if dim is not None and int(dim) != int(self.vision_config["feature_dim"]):
            raise FormatError(f"{self.vision}: gives {self.vision_config['feature_dim']}-d features but the VLM {vlm} "
                              f"projects {dim}-d ones (mm_hidden_size)")
        self.vlm = answering.load_model(str(vlm), None if model_base is None else str(model_base), self.device)
        config = self.vlm[1].config
        self.conv = checkpoint_conv_template(config)
        # Two images: the epoch's, and the placeholder its feature fills.
        self.user_text = answering.user_turn(QUESTIONS[0], 2, answering.uses_im_start_end(config))
        self.models.update(vlm=str(vlm), model_base=None if model_base is None else str(model_base))

    def stage(self, psg, hypnogram: str | Path | None = None, explain: bool = False,
              progress: bool = False, eeg_name: str | None = None, eog_name: str | None = None,
              emg_name: str | None = None, hypnogram_epoch: float = EPOCH_S) -> StagedNight:
        """Stage one night (see ``stage_night``)."""
        from tqdm.auto import tqdm

        from llava.eval.answering import choose_batch
        from sleep_eeg.images.render import check_rates, render_night
        from sleep_eeg.recording.channels import channel_role
        from sleep_eeg.recording.stages import flat_warnings
        from vision_modules.extract import night_features

        if explain and self.vlm is None:
            raise FormatError("--explain needs --vlm: the vision module gives no reasoning")
        psg, recording = open_recording(psg)
        names = {"eeg": eeg_name, "eog": eog_name, "emg": emg_name}
        signals, start, n_epochs, edf, found = read_signals(psg, self.render.channels, str(self.vision), names,
                                                            recording)
        check_rates(signals, self.render, psg)
        scored, warnings = (read_scored(hypnogram, psg, edf, n_epochs, hypnogram_epoch) if hypnogram is not None
                            else (None, []))
        epochs = list(range(n_epochs))
        warnings += [w for c in self.render.channels if channel_role(c) != "emg"
                     for w in flat_warnings(*signals[c], epochs, psg, c)]
        for warning in dict.fromkeys(warnings):
            print(f"warning: {warning}", file=sys.stderr)
        images = render_night(signals, epochs, self.render)  # prepare draws through the same functions
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
                chosen += choose_batch(model, tokenizer, processor, [self.user_text] * len(batch),
                                       [[images[i]] for i in batch], [features[i] for i in batch], self.conv,
                                       self.max_new_tokens)
                bar.update(len(batch))
            bar.close()
            probs = np.asarray([[p[s] for s in STAGES] for _, p in chosen], dtype=np.float64)
            if explain:
                reasoning = [text.rpartition("\n")[0] if "\n" in text else "" for text, _ in chosen]
        probs = probs / probs.sum(axis=1, keepdims=True)
        stages = [STAGES[int(i)] for i in probs.argmax(axis=1)]
        return StagedNight(night_name(psg), psg, start, stages, probs, reasoning, scored,
                           {**self.models, "channels": found,
                            "hypnogram": None if hypnogram is None else str(hypnogram)})


@dataclass(frozen=True)
class StageOptions:
    """``eeg-vlm stage``'s options besides the night(s), the vision checkpoint and the output folder: the keyword
    parameters of :func:`stage_night` (documented there), one field each."""

    vlm: str | Path | None = option(None, "EEG-VLM checkpoint; without it the vision module gives the stages")
    model_base: str | Path | None = option(None, "base model of a LoRA or projector-only --vlm")
    hypnogram: str | Path | None = option(None, "the night's scored hypnogram (EDF+, or CSV / TXT of one stage per "
                                                "line), for agreement")
    explain: bool = option(False, "keep the VLM's reasoning in stages.csv")
    device: str | None = option(None, "default: cuda if available, else cpu")
    batch_size: int = option(32, "epochs per VLM batch")
    eeg_name: str | None = option(None, "the recording's channel for the checkpoint's EEG panel (e.g. C4-M1)")
    eog_name: str | None = option(None, "the recording's channel for the checkpoint's EOG panel (e.g. E1-M2)")
    emg_name: str | None = option(None, "the recording's channel for the checkpoint's EMG panel (e.g. Chin1-Chin2)")
    hypnogram_epoch: float = option(EPOCH_S, "seconds per line of a CSV / TXT hypnogram (5 or 20: mapped onto 30-s "
                                             "epochs by majority)")


def stage_night(psg, vision: str | Path, options: StageOptions | None = None, **overrides) -> StagedNight:
    """Stage a whole night from its recording.

    Parameters
    ----------
    psg : str, Path, mne.io.Raw or (data, sf, ch_names)
        The night's PSG: a file (EDF with edfio; BDF and MNE's other formats with MNE), an ``mne.io.Raw`` (in
        volts, as MNE keeps it), or arrays ``data`` ``[channels, samples]`` in µV at ``sf`` Hz. The same signal
        gives the same result in each form. It must hold a channel for each the vision checkpoint was trained on
        (of the same derivation, or named by role below).
    vision : str or Path
        A vision-module checkpoint folder (``eeg-vlm vision train``).
    options : StageOptions, optional
        The keyword parameters below as one object (what ``eeg-vlm stage`` builds from its flags); keywords given
        beside it replace its fields.
    vlm : str or Path, optional
        An EEG-VLM checkpoint; it answers in choices mode. Without it the vision module's own probabilities
        give the stages.
    model_base : str or Path, optional
        The base model of a LoRA or projector-only ``vlm``.
    hypnogram : str or Path, optional
        The night's scored hypnogram (EDF+ stage annotations, or CSV / TXT of one stage per line), for
        ``.agreement``.
    explain : bool, default False
        Keep the VLM's reasoning before each stage line (``.reasoning``).
    device : str, optional
        Default: cuda if available, else cpu.
    batch_size : int, default 32
        Epochs per VLM batch.
    eeg_name, eog_name, emg_name : str, optional
        The recording's channel for the checkpoint's EEG, EOG and EMG panel (YASA's names), e.g. ``"C4-M1"``,
        ``"E1-M2"``, ``"Chin1-Chin2"``; comma-separated for several panels of one role. Without one, the
        recording's channel of the checkpoint's derivation (``EEG C4-A1`` for ``C4-M1``). Another derivation than
        the checkpoint's is said in one line.
    hypnogram_epoch : float, default 30
        Seconds per line of a CSV / TXT ``hypnogram`` (5 or 20: mapped onto 30-s epochs by majority).

    Returns
    -------
    StagedNight
        ``.stages``, ``.probabilities``, ``.statistics``, ``.agreement``, ``.to_csv()``, ``.plot()``, ``.save()``.

    Examples
    --------
    >>> night = stage_night("SC4001E0-PSG.edf", vision="checkpoints/vision/resnet18")  # doctest: +SKIP
    >>> night.statistics["TST"], night.stages[:3]  # doctest: +SKIP
    """
    opts = replace(options or StageOptions(), **overrides)
    return Stager.from_options(vision, opts).stage_with(psg, opts)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def nights_in(edf_dir: str | Path) -> list[tuple[Path, Path | None]]:
    """``(PSG, hypnogram or None)`` of every night in a folder or pairing CSV (paired by
    ``sleep_eeg.recording.nights.find_nights``); a recording with its own stage annotations is its own hypnogram."""
    from sleep_eeg.recording.edf import read_recording
    from sleep_eeg.recording.hypnogram import stage_annotations
    from sleep_eeg.recording.nights import find_nights

    out = []
    for night in find_nights(edf_dir):
        if night.hypnogram != night.psg:
            out.append((night.psg, night.hypnogram))
        else:
            own = bool(stage_annotations(read_recording(night.psg), night.psg))
            out.append((night.psg, night.psg if own else None))
    return out


def build_parser() -> argparse.ArgumentParser:
    """``eeg-vlm stage``'s command line: the night(s), the vision checkpoint, the output folder and
    :class:`StageOptions`."""
    p = argparse.ArgumentParser(prog="eeg-vlm stage", description=__doc__.split("\n\n")[0])
    p.add_argument("psg", nargs="?", help="the night's PSG EDF file")
    p.add_argument("--edf-dir", default=None, help="stage every night in this folder (or pairing CSV) instead (one "
                   "folder each in --out)")
    p.add_argument("--vision", required=True, help="vision-module checkpoint (eeg-vlm vision train)")
    p.add_argument("--out", required=True, help="output folder")
    add_options(p, StageOptions)
    p.add_argument("--import-module", action="append", default=[], metavar="MODULE",
                   help="a Python module to import first (it registers the --vision checkpoint's module); repeatable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = options_from_args(StageOptions, args)
    from vision_modules.registry import import_user_modules

    import_user_modules(args.import_module)
    if (args.psg is None) == (args.edf_dir is None):
        raise FormatError("give one PSG file or --edf-dir, not both or neither")
    if args.edf_dir is not None and opts.hypnogram is not None:
        raise FormatError("--hypnogram goes with one PSG file; with --edf-dir hypnograms are paired by their names")
    out = Path(args.out)
    check_out_folder(out)
    jobs = nights_in(args.edf_dir) if args.edf_dir is not None else [(Path(args.psg), opts.hypnogram)]
    for psg, _ in jobs:  # every output folder is checked before any work
        check_output_folder(out / night_name(Path(psg)) if args.edf_dir is not None else out)
    stager = Stager.from_options(args.vision, opts)
    from tqdm.auto import tqdm

    staged = [stager.stage_with(psg, replace(opts, hypnogram=hyp), progress=True)
              for psg, hyp in tqdm(jobs, desc="nights", unit="night", disable=len(jobs) < 2)]
    for night in staged:
        folder = night.save(out / night.name if args.edf_dir is not None else out)
        line = f"{night.name}: {len(night.stages)} epochs, TST {night.statistics['TST']:.1f} min"
        agreement = night.agreement
        if agreement is not None:
            line += ", " + metric_line(agreement, HEADLINE, ", ")
        print(f"{line} -> {folder / REPORT_NAME}")
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
