"""``eeg-vlm prepare``: EDF nights -> epoch images, LLaVA train records and eval questions.

    <out>/eeg_images_ft/<night>_<epoch>.png     <out>/eeg_ft.json      (train records, JSON array)
    <out>/eeg_images_eval/<night>_<epoch>.png   <out>/eeg_eval.jsonl   (eval questions with labels)
    <out>/render.json                           (how the images were drawn; every record names its id)

With several ``--channels`` each image stacks one panel per channel (see ``sleep_eeg.images.render``); the first
channel decides the epochs and the ``measured`` chain of thought.

Every night is read and checked before anything is written: an unknown stage text or overlapping,
contradicting annotations are errors; a flat-line channel or a hypnogram that ends well before its
recording is a warning with counts (``stages.night_warnings``). The images are drawn into temporary folders
that then replace the two image folders whole (no image of an earlier run is left behind), and the
records files are written atomically. An image folder that holds anything prepare did not draw there is
refused before any work (each folder's hidden ``.eeg-vlm-prepare.json`` lists the images drawn into it). The split is by subject: no subject has epochs on both sides.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from eeg_core.atomic import staging_folder, swap_folder, write_json, write_jsonl
from eeg_core.errors import FormatError
from eeg_core.formats import make_question, make_train_record, read_records, record_images
from eeg_core.options import add_options, option, options_from_args
from eeg_core.layout import (
    EVAL_IMAGES,
    EVAL_RECORDS,
    RENDER_FILE,
    TRAIN_IMAGES,
    TRAIN_RECORDS,
)
from eeg_core.outputs import check_out_folder
from eeg_core.stages import STAGES
from sleep_eeg.images import cot
from sleep_eeg.images.measures import epoch_measures
from sleep_eeg.images.render import RenderConfig, check_rates, prepare_night, render_epochs
from sleep_eeg.recording.channels import DEFAULT_CHANNEL, channel_role, with_roles
from sleep_eeg.recording.nights import Night, find_nights, read_channels
from sleep_eeg.recording.stages import (
    check_annotations,
    night_warnings,
    scorable_epochs,
)
from sleep_eeg.signal.epochs import epoch_array


def split_subjects(
    subjects: Sequence[str], eval_fraction: float, eval_subjects: Sequence[str] | None, seed: int
) -> set[str]:
    """The eval subjects: those named, else a seeded ``eval_fraction`` of them (at least one when the
    fraction is positive and there are two subjects or more)."""
    subjects = sorted(set(subjects))
    if eval_subjects:
        unknown = sorted(set(eval_subjects) - set(subjects))
        if unknown:
            raise FormatError(f"--eval-subjects: unknown subject(s) {', '.join(unknown)}; present: {', '.join(subjects)}")
        return set(eval_subjects)
    if eval_fraction <= 0 or len(subjects) < 2:
        return set()
    k = min(len(subjects) - 1, max(1, round(eval_fraction * len(subjects))))
    return set(random.Random(seed).sample(subjects, k))


def count_table(rows: dict[str, Counter]) -> str:
    """Per-stage counts, one line per split."""
    head = f"{'split':<6}" + "".join(f"{s:>7}" for s in STAGES) + f"{'total':>8}"
    lines = [head]
    for name, c in rows.items():
        lines.append(f"{name:<6}" + "".join(f"{c.get(s, 0):>7}" for s in STAGES) + f"{sum(c.values()):>8}")
    return "\n".join(lines)


@dataclass
class LoadedNight:
    """A night read and checked: its channels, its scorable epochs and their stages."""

    night: Night
    signals: dict  # channel -> (signal, rate)
    epochs: list[int]
    labels: list[str]


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote: per-stage counts of each split, and the held-out subjects."""

    counts: dict[str, Counter]  # "train" | "eval" -> stage -> epochs
    eval_subjects: list[str]
    train_records: int
    eval_questions: int


def load_night(night: Night, render: RenderConfig, trim_minutes: float | None) -> LoadedNight:
    """Read the night's channels (at their own rates; drawing resamples them to ``render.fs``), check their rates
    and its annotations, pick its scorable epochs (first channel) and print its warnings (flat lines, a short or
    long hypnogram) once each."""
    signals, annotations = read_channels(night, render.channels)
    check_rates(signals, render, night.psg)
    check_annotations(annotations, night.hypnogram)
    signal, rate = signals[render.channels[0]]
    epochs, labels = scorable_epochs(annotations, len(signal), rate, trim_minutes)
    if len(epochs) == 0:
        raise FormatError(f"{night.psg}: no scorable 30-s epoch (only '?' / movement, or none inside the signal)")
    warnings = [w for c in render.channels if channel_role(c) != "emg"
                for w in night_warnings(*signals[c], annotations, epochs, night.psg, night.hypnogram, c)]
    for warning in dict.fromkeys(warnings):
        print(f"warning: {warning}", file=sys.stderr)
    return LoadedNight(night, signals, epochs.tolist(), labels)


def write_night_records(loaded: LoadedNight, folder: Path, is_eval: bool, cot_mode: str, render: RenderConfig,
                        rng: random.Random, pool=None) -> list[dict]:
    """Draw the night's epoch images into ``folder`` and return its records: eval questions when
    ``is_eval``, else train records with their answers (one question text drawn from ``rng`` per epoch)."""
    night, epochs = loaded.night, loaded.epochs
    drawn_night = prepare_night(loaded.signals, render)
    names = [f"{night.name}_{e:04d}.png" for e in epochs]
    render_epochs(drawn_night, epochs, [folder / n for n in names], render, pool, desc=night.name)
    filtered, rate = drawn_night[0]
    measures = (
        [epoch_measures(x, rate) for x in epoch_array(filtered, rate, epochs)]
        if cot_mode == "measured" and not is_eval
        else [None] * len(epochs)
    )
    records = []
    for e, label, name, m in zip(epochs, loaded.labels, names, measures):
        rid = f"{night.name}_{e:04d}"
        meta = {"label": label, "subject": night.subject, "night": night.night, "epoch": e, "psg": night.psg.name,
                "render": render.render_id}
        q = cot.question(rng)
        if is_eval:
            records.append(make_question(rid, [name, name], q, **meta))
        else:
            records.append(make_train_record(rid, [name, name], q, cot.build_answer(label, cot_mode, m), **meta))
    return records


IMAGES_MANIFEST = ".eeg-vlm-prepare.json"  # in each image folder: the images prepare drew into it


def _drawn_images(out: Path, folder: Path) -> set[str]:
    """The images prepare drew into ``folder``: its manifest, or for a folder of an older version without one, the
    images the records files beside it name (empty when they cannot be read)."""
    try:
        return set(json.loads((folder / IMAGES_MANIFEST).read_text(encoding="utf-8"))["images"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    names: set[str] = set()
    for records in (TRAIN_RECORDS, EVAL_RECORDS):
        try:
            names.update(name for rec in read_records(out / records) for name in record_images(rec))
        except (OSError, FormatError):
            pass
    return names


def check_image_folders(out: Path) -> None:
    """Prepare replaces its two image folders whole: one that holds anything prepare did not draw there (a file of
    the user's) is refused in one line before any work, and nothing is deleted."""
    for name in (TRAIN_IMAGES, EVAL_IMAGES):
        folder = out / name
        if not folder.exists() and not folder.is_symlink():
            continue
        if folder.is_symlink() or not folder.is_dir():
            raise FormatError(f"{folder}: not an image folder that eeg-vlm prepare wrote (prepare replaces it whole): "
                              "move it, or choose another --out")
        drawn = _drawn_images(out, folder)
        for entry in sorted(folder.iterdir()):
            if entry.name == IMAGES_MANIFEST:
                continue
            if entry.name not in drawn or entry.is_symlink() or not entry.is_file():
                raise FormatError(f"{entry}: eeg-vlm prepare did not draw it, and it replaces {folder} whole: move it, "
                                  "or choose another --out")


def replace_folders(out: Path, staging: dict[str, Path]) -> None:
    """Each staged folder replaces ``out/<name>`` whole (no file of an earlier run is left behind)."""
    for name, folder in staging.items():
        swap_folder(folder, out / name)


def write_records(out: Path, render: RenderConfig, train: list[dict], questions: list[dict]) -> None:
    """render.json, the train records (JSON array) and the eval questions (JSONL), each atomically."""
    write_json(out / RENDER_FILE, render.to_dict())
    write_json(out / TRAIN_RECORDS, train)
    write_jsonl(out / EVAL_RECORDS, questions)


def comma_list(text: str) -> list[str] | None:
    """``"SC400,SC401"`` -> ``["SC400", "SC401"]``; an empty text -> None."""
    return [x.strip() for x in text.split(",") if x.strip()] or None


def trim(minutes: str) -> float | None:
    """``--trim-minutes``: a negative value keeps all the wake (None)."""
    value = float(minutes)
    return None if value < 0 else value


@dataclass(frozen=True)
class PrepareOptions:
    """``eeg-vlm prepare``'s options besides the nights, the output folder and how the images are drawn."""

    cot_mode: str = option("stage", "chain of thought in the answers", flag="--cot", choices=cot.COT_MODES)
    eval_fraction: float = option(0.2, "share of subjects held out for eval")
    eval_subjects: Sequence[str] | None = option(None, "comma-separated subjects for eval (overrides the fraction)",
                                                 type=comma_list)
    seed: int = option(0, "seed of the split and of the question texts")
    workers: int = option(os.cpu_count() or 1, "processes drawing the images")
    trim_minutes: float | None = option(30.0, "wake kept around sleep; negative keeps all", type=trim)
    hypnogram_epoch: float = option(30.0, "seconds per line of CSV / TXT hypnograms (5 or 20: mapped onto 30-s "
                                          "epochs by majority)")


def prepare(edf_dir: str | Path, out: str | Path, options: PrepareOptions | None = None,
            render: RenderConfig = RenderConfig(), **overrides) -> PrepareResult:
    """Run the whole conversion: list and check the nights (:func:`load_night`), split the subjects
    (:func:`split_subjects`), draw each night (:func:`write_night_records`) into temporary folders that then
    replace the image folders (:func:`replace_folders`), write the records (:func:`write_records`). ``edf_dir``: a
    folder, or a pairing CSV (``sleep_eeg.recording.nights.read_pairs``); ``options``: :class:`PrepareOptions` with
    ``overrides`` by keyword applied; ``render``: how the images are drawn."""
    opts = replace(options or PrepareOptions(), **overrides)
    cot_mode, eval_fraction, seed = opts.cot_mode, opts.eval_fraction, opts.seed
    if cot_mode not in cot.COT_MODES:
        raise FormatError(f"--cot must be one of {'|'.join(cot.COT_MODES)}, got {cot_mode!r}")
    if not 0.0 <= eval_fraction <= 1.0:
        raise FormatError(f"--eval-fraction must be between 0 and 1, got {eval_fraction:g}")
    out = Path(out)
    check_out_folder(out)
    check_image_folders(out)
    # Read and check every night before writing anything.
    loaded = [load_night(night, render, opts.trim_minutes) for night in find_nights(edf_dir, opts.hypnogram_epoch)]
    eval_set = split_subjects([n.night.subject for n in loaded], eval_fraction, opts.eval_subjects, seed)

    # Draw into fresh temporary folders beside the final ones; they replace them once everything is drawn.
    staging = {name: staging_folder(out / name, unique=False) for name in (TRAIN_IMAGES, EVAL_IMAGES)}
    rng = random.Random(seed)
    train, questions = [], []
    counts = {"train": Counter(), "eval": Counter()}
    pool = mp.Pool(opts.workers) if opts.workers > 1 else None
    drawn = False
    try:
        for night in loaded:
            is_eval = night.night.subject in eval_set
            records = write_night_records(night, staging[EVAL_IMAGES if is_eval else TRAIN_IMAGES], is_eval,
                                          cot_mode, render, rng, pool)
            (questions if is_eval else train).extend(records)
            counts["eval" if is_eval else "train"].update(night.labels)
        drawn = True
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if not drawn:
            for folder in staging.values():
                shutil.rmtree(folder, ignore_errors=True)
    for name, records in ((TRAIN_IMAGES, train), (EVAL_IMAGES, questions)):
        write_json(staging[name] / IMAGES_MANIFEST, {"images": sorted({n for r in records for n in record_images(r)})})
    replace_folders(out, staging)
    write_records(out, render, train, questions)
    return PrepareResult(counts, sorted(eval_set), len(train), len(questions))


def add_role_arguments(p: argparse.ArgumentParser) -> None:
    """``--eeg-name``, ``--eog-name``, ``--emg-name``: the recording's channel for each role."""
    for role, example in (("eeg", "C4-M1"), ("eog", "E1-M2"), ("emg", "Chin1-Chin2")):
        p.add_argument(f"--{role}-name", default=None,
                       help=f"the recordings' {role.upper()} channel (e.g. {example}); replaces the {role.upper()} "
                            "channel of --channels (comma-separated for several)")


def role_names(args: argparse.Namespace) -> dict[str, str | None]:
    return {"eeg": args.eeg_name, "eog": args.eog_name, "emg": args.emg_name}


def build_parser() -> argparse.ArgumentParser:
    """``eeg-vlm prepare``: the nights, the output folder, the channels, and the flags of :class:`PrepareOptions`
    and of :class:`RenderConfig`."""
    p = argparse.ArgumentParser(prog="eeg-vlm prepare", description=__doc__.splitlines()[0])
    p.add_argument("--edf-dir", required=True,
                   help="folder of *-PSG.edf + *-Hypnogram.edf (or EDF+ with stages), or a pairing CSV (columns "
                        "recording, hypnogram, subject)")
    p.add_argument("--out", default="sleep_data")
    p.add_argument("--channels", "--channel", default=DEFAULT_CHANNEL,
                   help="comma-separated channels, one image panel each (e.g. 'EEG Fpz-Cz,EOG horizontal,EMG submental')")
    add_role_arguments(p)
    add_options(p, PrepareOptions)
    add_options(p, RenderConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    channels = with_roles(tuple(c.strip() for c in args.channels.split(",") if c.strip()), role_names(args))
    cfg = options_from_args(RenderConfig, args, channels=channels)
    opts = options_from_args(PrepareOptions, args)
    result = prepare(args.edf_dir, args.out, replace(opts, workers=max(1, opts.workers)), render=cfg)
    print(count_table(result.counts))
    print(f"images {cfg.size[0]}x{cfg.size[1]} px ({', '.join(channels)}) -> {Path(args.out) / TRAIN_IMAGES}, "
          f"{Path(args.out) / EVAL_IMAGES}; settings {cfg.render_id} in {Path(args.out) / RENDER_FILE}")
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
