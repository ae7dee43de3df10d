"""Questions per second of ``llava/eval/model_vqa.py`` at batch 1 (LLaVA's one-at-a-time loop), 8 and 32.

    .venv/bin/python benchmarks/eval_throughput.py [--questions 64] [--max-new-tokens 32] [--batch-sizes 1 8 32]
    .venv/bin/python benchmarks/eval_throughput.py --stage-only --answer-modes generate choices --batch-sizes 1 32

Same tiny random LLaVA (``eeg_vlm.tiny``), same two-image questions with features, same greedy
settings for every batch size; the answers of each batch size are checked identical to batch 1's.
Timed: ``model_vqa.run`` end to end (questions, features, images, generation, answers file), the model
loaded once beforehand and warmed up on a few questions.

``--stage-only`` first fine-tunes the tiny model to answer ``Sleep stage: X`` for the questions' eight
(image, feature) pairs (``eeg_vlm.tiny.train_stage_only``), so that ``generate`` stops after the stage as a
trained checkpoint does; ``--answer-modes generate choices`` then times both modes on it and checks that
``choices`` gives the stage of every ``generate`` answer.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eeg_core.answer import parse_stage
from eeg_core.atomic import write_jsonl
from eeg_core.formats import make_question, read_jsonl, save_features
from eeg_core.stages import STAGES
from eeg_vlm.tiny import build_tiny_llava, train_stage_only
from llava.eval import model_vqa
from sleep_eeg.cot import QUESTIONS


def make_questions(root: Path, n: int, seed: int = 0, pairs: bool = False) -> Path:
    """``n`` [img, img] questions over 8 random PNGs, features beside the question file. ``pairs``: question i
    has image i % 8, feature row i % 8 of eight and the first question template (what ``train_stage_only`` teaches)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    names = []
    for k in range(8):
        names.append(f"epoch_{k}.png")
        Image.fromarray(rng.integers(0, 256, (64, 192, 3), dtype=np.uint8)).save(root / "images" / names[-1])
    questions = [
        make_question(f"q{i}", [names[i % 8]] * 2, QUESTIONS[0 if pairs else i % len(QUESTIONS)], STAGES[i % 5],
                      epoch=i)
        for i in range(n)
    ]
    write_jsonl(root / "eeg_eval.jsonl", questions)
    features = rng.normal(size=(n, 1, 1024)).astype(np.float32)
    if pairs:
        features = features[np.arange(n) % 8]
    save_features(root / "eval_high_level_features.npy", features)
    return root / "eeg_eval.jsonl"


def cpu_name() -> str:
    """The CPU model as lscpu names it, and the core count."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.processor()} x{os.cpu_count()} cores"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per batch size, interleaved; the best counts")
    p.add_argument("--answer-modes", nargs="+", default=["generate"], choices=model_vqa.ANSWER_MODES)
    p.add_argument("--stage-only", action="store_true",
                   help="time a stage-only checkpoint (the tiny model fine-tuned to answer 'Sleep stage: X')")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = build_tiny_llava(tmp / "tiny", seed=0)
        qfile = make_questions(tmp / "data", args.questions, pairs=args.stage_only)
        if args.stage_only:
            images = [tmp / "data" / "images" / f"epoch_{k}.png" for k in range(8)]
            model_path = train_stage_only(model_path, tmp / "stage_only", images,
                                          np.load(tmp / "data" / "eval_high_level_features.npy")[:8],
                                          [STAGES[k % 5] for k in range(8)], steps=60)
        loaded = model_vqa.load_model(str(model_path), None, args.device)
        common = dict(model_path=str(model_path), question_file=str(qfile), image_folder=str(tmp / "data" / "images"),
                      max_new_tokens=args.max_new_tokens, device=args.device, loaded=loaded, progress=False)
        runs = [(mode, bs) for mode in args.answer_modes for bs in args.batch_sizes]
        for mode in args.answer_modes:  # warm-up on the first few questions (the first chunk of many)
            model_vqa.run(answers_file=str(tmp / f"warm_{mode}.jsonl"), batch_size=max(args.batch_sizes),
                          num_chunks=max(1, args.questions // 4), answer_mode=mode, **common)

        print(f"machine: {cpu_name()}, torch threads {torch.get_num_threads()}, device {args.device}; "
              f"{args.questions} questions, {args.max_new_tokens} new tokens max, greedy, best of {args.repeats}; "
              f"{'stage-only checkpoint' if args.stage_only else 'random tiny checkpoint'}")
        seconds = {run: float("inf") for run in runs}
        answers = {}
        for rep in range(args.repeats):
            for mode, bs in runs:
                out = tmp / f"answers_{mode}_bs{bs}_{rep}.jsonl"
                result = model_vqa.run(answers_file=str(out), batch_size=bs, answer_mode=mode, **common)
                seconds[mode, bs] = min(seconds[mode, bs], result["seconds"])
                answers[mode, bs, rep] = [(r["question_id"], r["text"]) for r in read_jsonl(out)]
        results = {}
        for mode, bs in runs:
            reference = answers[mode, args.batch_sizes[0], 0]
            same = all(answers[mode, bs, rep] == reference for rep in range(args.repeats))
            results[mode, bs] = args.questions / seconds[mode, bs]
            print(f"{mode:<9} batch {bs:>3}: {seconds[mode, bs]:7.2f} s  {results[mode, bs]:7.2f} questions/s  "
                  f"answers identical to batch {args.batch_sizes[0]}: {same}")
            if not same:
                raise SystemExit(f"{mode} at batch {bs} changed the answers")
        for mode in args.answer_modes:
            base = results[mode, args.batch_sizes[0]]
            print(f"{mode}: ratios vs batch {args.batch_sizes[0]}: "
                  + ", ".join(f"batch {bs} x{results[mode, bs] / base:.2f}" for bs in args.batch_sizes))
        if {"generate", "choices"} <= set(args.answer_modes):
            stages = {mode: [parse_stage(t) for _, t in answers[mode, args.batch_sizes[0], 0]]
                      for mode in ("generate", "choices")}
            agree = np.mean([a == b for a, b in zip(stages["generate"], stages["choices"])])
            print(f"choices gives the stage of generate on {agree:.0%} of the questions; choices / generate: "
                  + ", ".join(f"batch {bs} x{results['choices', bs] / results['generate', bs]:.2f}"
                              for bs in args.batch_sizes))


if __name__ == "__main__":
    main()
