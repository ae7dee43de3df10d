"""``eeg-vlm demo``: the whole EEG-VLM pipeline on synthetic nights, on the CPU, one command per step.

    synth (nights calibrated to real Sleep-EDF) -> prepare -> vision train -> vision extract (train, eval)
    -> vision predict -> the baselines (train, predict) -> tiny LLaVA base
    -> deepspeed llava/train/train_mem.py -> llava/eval/model_vqa.py -> eeg-vlm score --compare ...

It ends with one table on the same held-out epochs: the majority class, YASA's pretrained stager (no
training; when YASA is installed, the ``[baselines]`` extra), the band-power baselines (Fpz-Cz alone and
three channels), the feature baseline, the vision module and EEG-VLM (accuracy, macro-F1, kappa, N1 F1,
REM F1). ``--edf-dir DIR`` runs the same recipe on a folder of Sleep-EDF-style nights (yours), or on
the nights of a pairing CSV (recording, hypnogram, subject), instead of synthesizing them; subjects are held
out as with the synthetic nights. ``--eeg-name`` / ``--eog-name`` / ``--emg-name`` name your channels (the
baselines then read the named channels too) and ``--hypnogram-epoch`` the length of a CSV hypnogram's lines.

What is drawn and trained is a named recipe (``--recipe``, the rows of the ablation in docs/benchmarks.md,
``benchmarks/ablation.py``); the default is the best one that fits the demo's time.

Each step runs the command a user would run, printed before it runs, from inside ``--workdir`` (so the
paths read as in the README: ``sleep_data/eeg_ft.json`` ...). A step whose command, inputs and upstream
steps are unchanged and whose outputs exist is skipped: its stamp ``<workdir>/.demo/<step>.json`` holds
a hash of all of them. ``--quick`` runs the same pipeline at a toy size (for CI).

The recipe (see docs/benchmarks.md, "Demo"): the documented LoRA command (``--lora_r 128 --lora_alpha 256``,
ZeRO-3) on a random tiny LLaVA, with the feature given its own projector and its own token
(``--hl_projector separate --hl_fusion token``) and a projector learning rate of 1e-3 instead of the
paper's 2e-5: a random base learns the paper's shared projector too slowly for a demo on two cores.
Answers are the stage alone (``--cot none``); ``--cot stage`` keeps the paper's stage-wise chain of
thought, which the tiny model learns more slowly (the N1 / REM decision comes after three shared sentences).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from eeg_core import layout
from eeg_core.atomic import write_json
from eeg_core.errors import FormatError
from eeg_core.formats import features_sidecar, read_records
from eeg_core.options import add_options, option, options_from_args
from eeg_core.outputs import check_out_folder
from eeg_vlm.commands import train_argv
from eeg_vlm.steps import Step, run_steps, subprocess_env
from llava.constants import NON_LORA_TRAINABLES
from sleep_eeg.recording.nights import find_nights

REPO = Path(__file__).resolve().parents[1]

# Folders and files inside the workdir (the seed's sleep_data/ layout).
EDF = "edf"
DATA = layout.DATA_DIR
TRAIN_RECORDS = f"{DATA}/{layout.TRAIN_RECORDS}"
EVAL_RECORDS = f"{DATA}/{layout.EVAL_RECORDS}"
TRAIN_IMAGES = f"{DATA}/{layout.TRAIN_IMAGES}"
EVAL_IMAGES = f"{DATA}/{layout.EVAL_IMAGES}"
TRAIN_FEATURES = f"{DATA}/{layout.FEATURES_TRAIN_NAME}"
EVAL_FEATURES = f"{DATA}/{layout.FEATURES_EVAL_NAME}"
ANSWERS = f"{DATA}/answers/eeg_answers.jsonl"
VISION = "checkpoints/vision/resnet18"
VISION_ANSWERS = f"{DATA}/answers/vision_answers.jsonl"
# name -> (kind, channels, row name): trained on the training nights, answering the held-out questions
BASELINES = {
    "bandpower": ("bandpower", "EEG Fpz-Cz", "band-power baseline (Fpz-Cz)"),
    "bandpower3": ("bandpower", "EEG Fpz-Cz,EEG Pz-Oz,EOG horizontal", "band-power baseline (3 channels)"),
    "features": ("features", "EEG Fpz-Cz,EOG horizontal", "feature baseline (EEG + EOG)"),
}
TINY = "checkpoints/tiny-llava"
RUN = "checkpoints/eeg-vlm-tiny-lora"
SCORES = "results/vlm"


@dataclass(frozen=True)
class Size:
    """How big the demo is: the full run (default) or ``--quick`` (CI)."""

    nights: int = 10  # one subject per night; 20 % held out for evaluation
    hours: float = 4.0  # 480 epochs per night
    vision_epochs: int = 5
    sequence_epochs: int = 3  # then the image model and its sequence encoder together (recipes with context)
    tiny_hidden: int = 256
    tiny_layers: int = 4
    train_steps: int = 240  # batch 16: one pass over the ~3,800 train records
    max_new_tokens: int = 16  # answers 'Sleep stage: X' (--cot none)
    max_new_tokens_cot: int = 128  # stage-wise chain of thought: up to ~70 tokens


FULL = Size()
QUICK = Size(nights=3, hours=0.25, vision_epochs=1, sequence_epochs=1, tiny_hidden=64, tiny_layers=1, train_steps=3,
             max_new_tokens=12, max_new_tokens_cot=12)


@dataclass(frozen=True)
class Recipe:
    """What is drawn, how the vision module sees it, and how the VLM is fine-tuned."""

    about: str
    channels: str = "EEG Fpz-Cz"
    spectrogram: bool = False
    context_s: float = 0.0  # seconds of each neighbouring epoch drawn in grey
    px_per_s: float = 8.0
    height: int = 96  # EEG panel (px); EOG 64, EMG 24 and spectrogram 48 as RenderConfig's defaults
    night_norm: bool = False  # each channel scaled by its own night's level (prepare --night-norm)
    context: int | str = 0  # the vision module's sequence encoder: epochs i-k..i+k, or "night"; 0: none
    sequence: str = "gru"  # which registered sequence encoder
    class_balance: float = 0.0  # LLaVA fine-tuning: --class_balance

    def prepare_args(self) -> list[str]:
        args = ["--channels", self.channels, "--px-per-s", str(self.px_per_s), "--height", str(self.height)]
        return args + (["--spectrogram"] if self.spectrogram else []) + (
            ["--context", str(self.context_s)] if self.context_s else []) + (["--night-norm"] if self.night_norm else [])

    def vision_args(self, size: "Size") -> list[str]:
        """The vision module's training flags beside the data: its sequence encoder."""
        return (["--context", str(self.context), "--sequence", self.sequence, "--sequence-epochs",
                 str(size.sequence_epochs)] if self.context else [])

    def image_size(self) -> tuple[int, int]:
        """(H, W) the vision module sees: half the drawn image each way (4 px/s; what a CPU trains in minutes;
        the spectrogram panel keeps the frequencies that the waveform's pixels no longer resolve)."""
        from sleep_eeg.images.render import RenderConfig

        w, h = RenderConfig(channels=tuple(self.channels.split(",")), px_per_s=self.px_per_s, height=self.height,
                            spectrogram=self.spectrogram, context_s=self.context_s).size
        return h // 2, w // 2


# The ablation's rows, in order: each adds one thing to the one before (benchmarks/ablation.py); the context rows
# are alternatives to one another (how far the sequence encoder reads), and the last row adds to the best of them.
PSG = "EEG Fpz-Cz,EOG horizontal,EMG submental"
PANELS = dict(channels=PSG, spectrogram=True)
RECIPES = {
    "waveform": Recipe("single-channel waveform (Fpz-Cz)"),
    "spectrogram": Recipe("+ time-frequency panel", spectrogram=True),
    "eog-emg": Recipe("+ EOG and EMG panels", **PANELS),
    "context-images": Recipe("+ neighbouring epochs drawn (15 s each side)", **PANELS, context_s=15.0),
    "night-norm": Recipe("+ each channel scaled by its own night", **PANELS, night_norm=True),
    "sequence-2": Recipe("+ sequence encoder (GRU) over epochs i-2..i+2", **PANELS, night_norm=True, context=2),
    "sequence-10": Recipe("+ sequence encoder (GRU) over epochs i-10..i+10", **PANELS, night_norm=True, context=10),
    "sequence-night": Recipe("+ sequence encoder (GRU) over the whole night", **PANELS, night_norm=True,
                             context="night"),
    "transformer-10": Recipe("+ sequence encoder (Transformer) over epochs i-10..i+10", **PANELS, night_norm=True,
                             context=10, sequence="transformer"),
    "class-balance": Recipe("+ class-balanced VLM fine-tuning", **PANELS, night_norm=True, context=10,
                            class_balance=1.0),
}
DEFAULT_RECIPE = "sequence-10"  # the best of the ablation that fits the demo's time (docs/benchmarks.md)


@dataclass(frozen=True)
class DemoOptions:
    """``eeg-vlm demo``'s options, one field per flag; :func:`pipeline` reads those that decide the steps (``quick``,
    ``seed``, ``cot``, ``recipe``, ``edf_dir``, the channel names, ``hypnogram_epoch``, ``baselines_from``,
    ``vlm``), :func:`main` the others (where and how the steps run)."""

    workdir: str = option("demo_work", "everything the demo writes goes here")
    quick: bool = option(False, "a toy size (3 short nights, 3 training steps) for CI")
    threads: int = option(2, "CPU threads per step")
    seed: int = option(0)
    cot: str = option("none", "answers: the stage alone (default: the tiny model learns it in time) or a chain of "
                              "thought", choices=("none", "stage", "measured"))
    force: bool = option(False, "rerun every step even when its outputs are current")
    edf_dir: str | Path | None = option(
        None, "run on this folder of Sleep-EDF-style nights (*-PSG.edf + *-Hypnogram.edf), or a pairing CSV "
              "(recording, hypnogram, subject), instead of synthetic ones; at least two subjects (some are held out)")
    eeg_name: str | None = option(None, "with --edf-dir: your EEG channel (e.g. C4-M1)")
    eog_name: str | None = option(None, "with --edf-dir: your EOG channel (e.g. E1-M2)")
    emg_name: str | None = option(None, "with --edf-dir: your EMG channel (e.g. Chin1-Chin2)")
    hypnogram_epoch: float | None = option(None, "with --edf-dir: seconds per line of CSV / TXT hypnograms (default "
                                                 "30)", type=float)
    recipe: str = option(DEFAULT_RECIPE, f"what is drawn and trained (default {DEFAULT_RECIPE}; see "
                                         "docs/benchmarks.md, Ablation)", choices=list(RECIPES))
    baselines_from: str | Path | None = option(None, "reuse the baseline answers of an earlier demo run on the same "
                                                     "nights and seed", metavar="WORKDIR")
    vlm: bool = option(True, "stop after the vision module and the baselines", flag="--no-vlm")

    @property
    def size(self) -> Size:
        return QUICK if self.quick else FULL

    @property
    def roles(self) -> dict[str, str | None]:
        """Your channel for each role (``{"eeg": "C4-M1", ...}``)."""
        return {"eeg": self.eeg_name, "eog": self.eog_name, "emg": self.emg_name}


def pipeline(options: DemoOptions | None = None, **overrides) -> list[Step]:
    """The demo's steps for :class:`DemoOptions` (with ``overrides`` by keyword applied): ``quick`` picks the
    :class:`Size`, ``recipe`` names one of ``RECIPES``. ``edf_dir``: use these nights instead of synthesizing them.
    ``baselines_from``: the workdir of an earlier run on the same nights and seed whose baseline answers to reuse.
    ``vlm=False`` stops after the vision module (its answers are then the ones scored). ``eeg_name``,
    ``eog_name``, ``emg_name``: your channel for each role; ``hypnogram_epoch``: seconds per line of CSV
    hypnograms."""
    opts = replace(options or DemoOptions(), **overrides)
    if opts.recipe not in RECIPES:
        raise FormatError(f"recipe {opts.recipe!r} is not one of {', '.join(RECIPES)}")
    size, seed, cot, recipe, vlm = opts.size, opts.seed, opts.cot, RECIPES[opts.recipe], opts.vlm
    edf_dir = None if opts.edf_dir is None else Path(opts.edf_dir)
    baselines_from = None if opts.baselines_from is None else Path(opts.baselines_from)
    h, w = recipe.image_size()
    edf = str(edf_dir) if edf_dir is not None else EDF
    edf_inputs = sorted(str(p) for p in edf_dir.glob("*.edf")) if edf_dir is not None and edf_dir.is_dir() else []
    if edf_dir is not None and edf_dir.is_file():  # a pairing CSV: it and the files it names
        edf_inputs = [str(edf_dir), *sorted({str(f) for n in find_nights(edf_dir) for f in (n.psg, n.hypnogram)})]
    roles = {k: v for k, v in opts.roles.items() if v}
    own = [arg for role, name in roles.items() for arg in (f"--{role}-name", name)]
    own += ["--hypnogram-epoch", f"{opts.hypnogram_epoch:g}"] if opts.hypnogram_epoch else []
    yasa_roles = [arg for role in ("eeg", "eog") if roles.get(role) for arg in (f"--{role}-name", roles[role])]
    answers_of = (lambda name: str(baselines_from / baseline_answers(name))) if baselines_from else baseline_answers
    compare = [arg for name, (_, _, row) in BASELINES.items() for arg in ("--compare", f"{row}={answers_of(name)}")]
    if vlm:
        compare += ["--compare", f"vision module (resnet18)={VISION_ANSWERS}"]
    steps = [] if edf_dir is not None else [
        Step("synth", ["eeg-vlm", "synth", "--out", EDF, "--nights", str(size.nights), "--hours", str(size.hours),
                       "--seed", str(seed)], outputs=[EDF])]
    upstream = [] if edf_dir is not None else ["synth"]
    steps += [
        Step("prepare", ["eeg-vlm", "prepare", "--edf-dir", edf, "--out", DATA, "--cot", cot,
                         "--eval-fraction", "0.2", "--seed", str(seed), "--workers", "2", *recipe.prepare_args(),
                         *own],
             outputs=[TRAIN_IMAGES, EVAL_IMAGES, TRAIN_RECORDS, EVAL_RECORDS], inputs=edf_inputs, after=upstream),
        Step("vision-train", ["eeg-vlm", "vision", "train", "--arch", "resnet18", "--records", TRAIN_RECORDS,
                              "--image-folder", TRAIN_IMAGES, "--out", VISION, "--epochs", str(size.vision_epochs),
                              "--batch-size", "64", "--lr", "2e-3", "--image-size", str(h), str(w),
                              *recipe.vision_args(size), "--seed", str(seed)],
             outputs=[VISION, f"{VISION}/{layout.VISION_CONFIG}", f"{VISION}/{layout.VISION_WEIGHTS}"],
             inputs=[TRAIN_RECORDS], after=["prepare"]),
        Step("vision-predict", ["eeg-vlm", "vision", "predict", "--checkpoint", VISION, "--question-file",
                                EVAL_RECORDS, "--image-folder", EVAL_IMAGES, "--answers-file", VISION_ANSWERS],
             outputs=[VISION_ANSWERS], inputs=[EVAL_RECORDS], after=["vision-train"]),
    ]
    if baselines_from is None:
        steps += baseline_steps(edf, upstream, roles)
    if vlm:
        steps += vlm_steps(size, seed, cot, recipe)
    scored = ANSWERS if vlm else VISION_ANSWERS
    baseline_inputs = [] if baselines_from else [baseline_answers(name) for name in BASELINES]
    steps.append(Step("score", ["eeg-vlm", "score", "--question-file", EVAL_RECORDS, "--answers-file", scored,
                                "--out", SCORES, "--edf-dir", edf, *yasa_roles, *compare],
                      outputs=[SCORES, f"{SCORES}/metrics.json"],
                      inputs=[EVAL_RECORDS, scored, VISION_ANSWERS, *baseline_inputs],
                      after=["eval" if vlm else "vision-predict", "vision-predict",
                             *([] if baselines_from else [f"baseline-{name}-predict" for name in BASELINES])]))
    return steps


def vlm_steps(size: Size, seed: int, cot: str, recipe: Recipe) -> list[Step]:
    """The VLM's steps: features of the train and eval records, the tiny base, LoRA fine-tuning, the answers."""
    train_mem = str(REPO / "llava" / "train" / "train_mem.py")
    model_vqa = str(REPO / "llava" / "eval" / "model_vqa.py")
    zero3 = str(REPO / "scripts" / "zero3.json")
    # The documented training command with its paths pointed at the tiny base, and the demo's recipe.
    train = ["deepspeed", train_mem, *train_argv(
        model=TINY, data_path=TRAIN_RECORDS, image_folder=TRAIN_IMAGES, output_dir=RUN, deepspeed=zero3,
        mm_projector_lr="1e-3", num_train_epochs=1, max_steps=size.train_steps, learning_rate="5e-4",
        logging_steps=10, report_to="none", seed=seed, hl_fusion="token", hl_projector="separate",
        class_balance=recipe.class_balance or None)]
    return [
        Step("vision-extract-train", ["eeg-vlm", "vision", "extract", "--checkpoint", VISION, "--records",
                                      TRAIN_RECORDS, "--image-folder", TRAIN_IMAGES, "--out", TRAIN_FEATURES,
                                      "--batch-size", "128"],
             outputs=[TRAIN_FEATURES, str(features_sidecar(TRAIN_FEATURES))], inputs=[TRAIN_RECORDS],
             after=["vision-train"]),
        Step("vision-extract-eval", ["eeg-vlm", "vision", "extract", "--checkpoint", VISION, "--records",
                                     EVAL_RECORDS, "--image-folder", EVAL_IMAGES, "--out", EVAL_FEATURES,
                                     "--batch-size", "128"],
             outputs=[EVAL_FEATURES, str(features_sidecar(EVAL_FEATURES))], inputs=[EVAL_RECORDS],
             after=["vision-train"]),
        Step("tiny-llava", ["python", "-m", "eeg_vlm.tiny", "--out", TINY, "--seed", str(seed),
                            "--hidden-size", str(size.tiny_hidden), "--num-layers", str(size.tiny_layers)],
             outputs=[TINY, f"{TINY}/config.json", f"{TINY}/tokenizer.model"]),
        Step("train", train, outputs=[RUN, f"{RUN}/config.json", f"{RUN}/{NON_LORA_TRAINABLES}"],
             inputs=[TRAIN_RECORDS, TRAIN_FEATURES],
             after=["prepare", "vision-extract-train", "tiny-llava"]),
        Step("eval", ["python", model_vqa, "--model-path", RUN, "--model-base", TINY, "--question-file",
                      EVAL_RECORDS, "--image-folder", EVAL_IMAGES, "--answers-file", ANSWERS, "--batch-size", "32",
                      "--max-new-tokens", str(size.max_new_tokens if cot == "none" else size.max_new_tokens_cot)],
             outputs=[ANSWERS], inputs=[EVAL_RECORDS, EVAL_FEATURES], after=["train", "vision-extract-eval"]),
    ]


def baseline_answers(name: str) -> str:
    return f"{DATA}/answers/baseline_{name}_answers.jsonl"


def baseline_channels(channels: str, roles: dict) -> str:
    """A baseline's channels on recordings whose channels are named by role: each role's channel replaced by the
    named one (no role is added), and an EEG channel beyond the named ones left out (the 3-channel baseline: EEG and
    EOG)."""
    from sleep_eeg.recording.channels import channel_role, with_roles

    names = [c for c in channels.split(",")]
    if roles.get("eeg"):
        keep = len(roles["eeg"].split(","))
        eeg = [i for i, c in enumerate(names) if channel_role(c) == "eeg"]
        names = [c for i, c in enumerate(names) if i not in eeg[keep:]]
    return ",".join(with_roles(names, {r: n for r, n in roles.items() if any(channel_role(c) == r for c in names)}))


def baseline_steps(edf: str, upstream: list[str], roles: dict | None = None) -> list[Step]:
    """Train each baseline on the training records' nights, answer the held-out questions."""
    steps = []
    for name, (kind, channels, _) in BASELINES.items():
        channels = baseline_channels(channels, roles) if roles else channels
        model = f"checkpoints/baseline-{name}"
        steps += [
            Step(f"baseline-{name}-train", ["eeg-vlm", "baseline", "train", "--kind", kind, "--channels", channels,
                                            "--records", TRAIN_RECORDS, "--edf-dir", edf, "--out", model],
                 outputs=[model, f"{model}/config.json"], inputs=[TRAIN_RECORDS], after=["prepare", *upstream]),
            Step(f"baseline-{name}-predict", ["eeg-vlm", "baseline", "predict", "--model", model, "--question-file",
                                              EVAL_RECORDS, "--edf-dir", edf, "--answers-file", baseline_answers(name)],
                 outputs=[baseline_answers(name)], inputs=[EVAL_RECORDS], after=[f"baseline-{name}-train"]),
        ]
    return steps


# ---------------------------------------------------------------------------------------------
# Running the steps
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def summary(workdir: Path, timings: dict[str, tuple[float, bool]], recipe: str, vlm_ran: bool = True,
            edf_dir: Path | None = None) -> dict:
    """The comparison table of the score step (same held-out epochs for every row) and the step times."""
    from sleep_eeg.evaluation.metrics import METRIC_COLUMNS, format_comparison, metric_line

    vlm = json.loads((workdir / SCORES / "metrics.json").read_text())
    rows = vlm["comparison"]
    rows[-1]["name"] = "EEG-VLM (tiny LLaVA)" if vlm_ran else "vision module (resnet18)"
    print(f"\n== recipe {recipe!r}: {RECIPES[recipe].about} ==")
    print(f"== held-out subjects ({rows[-1]['n']} epochs): every score beside its baselines ==")
    print(format_comparison(rows))
    f1 = next(c for c in METRIC_COLUMNS if c.key == "macro_f1")
    best = max(rows[1:-1], key=lambda r: r[f1.key])
    if rows[-1][f1.key] < best[f1.key]:
        print(f"note: the {rows[-1]['name']}'s {metric_line(rows[-1], [f1])} is below the {best['name']}'s "
              f"{f1.text(best[f1.key])} on these epochs")
    plots = [str(Path(SCORES) / p) for p in vlm.get("plots", [])]
    print(f"\nscores: {workdir / SCORES / 'metrics.json'}")
    print(f"plots:  {workdir / SCORES}/ ({', '.join(Path(p).name for p in plots[:4])}"
          f"{', ...' if len(plots) > 4 else ''})")
    held_out = sorted({q["psg"] for q in read_records(workdir / EVAL_RECORDS) if "psg" in q})
    if held_out and vlm_ran:
        edf = Path(held_out[0])
        print(f"\nstage a held-out night with these checkpoints (from {workdir}):\n  eeg-vlm stage "
              f"{(edf_dir.parent if edf_dir.is_file() else edf_dir) if edf_dir else EDF}/{edf} --vision {VISION} --vlm {RUN} --model-base {TINY} --out reports/{edf.name.split('-')[0]}")
    print("\n== time per step ==")
    for name, (seconds, ran) in timings.items():
        print(f"{name:<28}{seconds:>8.1f} s{'' if ran else '  (skipped; its last run)'}")
    total = sum(s for s, ran in timings.values() if ran)
    print(f"{'this run':<28}{total:>8.1f} s")
    result = {"recipe": recipe, "table": rows,
              "scored": {k: vlm[k] for k in ("n", "accuracy", "macro_f1", "kappa", "unparseable")},
              "seconds": {k: v[0] for k, v in timings.items()}, "ran": [k for k, v in timings.items() if v[1]]}
    write_json(workdir / "results" / "demo_summary.json", result)
    return result


def build_parser() -> argparse.ArgumentParser:
    """``eeg-vlm demo``'s command line: :class:`DemoOptions`."""
    p = argparse.ArgumentParser(prog="eeg-vlm demo", description=__doc__.split("\n\n")[0])
    add_options(p, DemoOptions)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    opts = options_from_args(DemoOptions, build_parser().parse_args(argv))
    workdir = check_out_folder(Path(opts.workdir).resolve(), "--workdir")
    edf_dir = Path(opts.edf_dir).resolve() if opts.edf_dir else None
    if edf_dir is not None:
        subjects = {n.subject for n in find_nights(edf_dir, opts.hypnogram_epoch or 30.0)}
        if len(subjects) < 2:
            raise FormatError(f"{edf_dir}: nights of {len(subjects)} subject(s) ({', '.join(sorted(subjects))}); "
                              "the demo holds subjects out for evaluation and needs at least two")
    baselines_from = Path(opts.baselines_from).resolve() if opts.baselines_from else None
    if baselines_from is not None:
        missing = [baseline_answers(n) for n in BASELINES if not (baselines_from / baseline_answers(n)).is_file()]
        if missing:
            raise FormatError(f"{baselines_from}: no {missing[0]} (run the demo there with its baselines first)")
    workdir.mkdir(parents=True, exist_ok=True)
    if edf_dir is None and (any(opts.roles.values()) or opts.hypnogram_epoch):
        raise FormatError("--eeg-name, --eog-name, --emg-name and --hypnogram-epoch go with --edf-dir (your nights)")
    steps = pipeline(opts, edf_dir=edf_dir, baselines_from=baselines_from)
    env = subprocess_env(opts.threads)
    print(f"EEG-VLM demo in {workdir} ({'quick' if opts.quick else 'full'} size, {opts.threads} threads)")
    timings = run_steps(steps, workdir, env, force=opts.force)
    summary(workdir, timings, opts.recipe, opts.vlm, edf_dir)
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
