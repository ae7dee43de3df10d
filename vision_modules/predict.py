"""``eeg-vlm vision predict``: the vision module's own stage for each question, as answers.

The module's class head (trained beside its features) gives five probabilities per epoch; the answer
is the most probable stage, written in the answers format (``Sleep stage: X``, with the probabilities
in ``metadata["probabilities"]``), so ``eeg-vlm score`` scores the vision module exactly as it scores
EEG-VLM and the baselines. With a sequence encoder, its logits give the stage. Written atomically; nothing is
written when any input is bad (records drawn with other render settings than the module's are refused).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from eeg_core.answer import stage_line
from eeg_core.atomic import write_jsonl
from eeg_core.formats import (
    check_render,
    question_answer,
    question_keys,
    read_records,
    record_id,
    records_render,
)
from eeg_core.options import add_options, option, options_from_args
from eeg_core.stages import STAGES
from vision_modules.checkpoint import load_vision_module
from vision_modules.data import record_image_paths
from vision_modules.extract import checkpoint_sha256, record_outputs
from vision_modules.registry import import_user_modules


@dataclass(frozen=True)
class PredictOptions:
    """``eeg-vlm vision predict``'s options besides the checkpoint, the questions, the images and the answers."""

    batch_size: int = option(64, "images per forward pass")
    device: str = option("cpu", "torch device")
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    import_modules: Sequence[str] = option((), "a Python module to import first (it registers a vision module of "
                                               "your own); repeatable", flag="--import-module", action="append",
                                           metavar="MODULE")


def predict_stages(
    checkpoint: str | os.PathLike,
    questions: str | os.PathLike,
    image_folder: str | os.PathLike,
    answers_file: str | os.PathLike,
    options: PredictOptions | None = None,
    **overrides,
) -> list[dict]:
    """Write one answer per question (file order) and return them. ``options``: :class:`PredictOptions`, with
    ``overrides`` by keyword applied."""
    opts = replace(options or PredictOptions(), **overrides)
    import_user_modules(opts.import_modules)
    batch_size, device, progress = opts.batch_size, opts.device, opts.progress
    checkpoint, questions = Path(checkpoint), Path(questions)
    recs = read_records(questions)
    question_keys([{"question_id": record_id(r)} if isinstance(r, dict) else r for r in recs], questions, "question")
    paths = record_image_paths(recs, image_folder, str(questions), check=False)  # decoded in record_outputs
    model, config = load_vision_module(checkpoint, device)
    check_render(config.get("render"), records_render(recs, questions), str(checkpoint), str(questions))
    classes = list(config.get("classes", STAGES))
    _, p = record_outputs(model, recs, paths, str(questions), batch_size, device, progress=progress)
    model_id = f"vision-{config['arch']}-{checkpoint_sha256(checkpoint)[:12]}"
    answers = []
    for rec, row in zip(recs, p):
        stage = classes[int(row.argmax())]
        probs = {c: round(float(v), 6) for c, v in zip(classes, row)}
        answers.append(question_answer(rec, stage_line(stage), model_id, {"probabilities": probs}))
    write_jsonl(answers_file, answers)
    return answers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="folder written by `eeg-vlm vision train`")
    p.add_argument("--question-file", required=True, help="eval questions (JSONL) with their images")
    p.add_argument("--image-folder", required=True, help="folder the questions' image paths are relative to")
    p.add_argument("--answers-file", required=True, help="answers JSONL to write (scored by `eeg-vlm score`)")
    add_options(p, PredictOptions)


def main_from_args(a: argparse.Namespace) -> int:
    answers = predict_stages(a.checkpoint, a.question_file, a.image_folder, a.answers_file,
                             options_from_args(PredictOptions, a))
    print(f"wrote {a.answers_file}: {len(answers)} answers")
    return 0
