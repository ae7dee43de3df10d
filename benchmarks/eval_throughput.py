"""Questions per second of ``llava/eval/model_vqa.py`` at batch 1 (LLaVA's one-at-a-time loop), 8 and 32.

    .venv/bin/python benchmarks/eval_throughput.py [--questions 64] [--max-new-tokens 32] [--batch-sizes 1 8 32]

Same tiny random LLaVA (``llava.model.tiny``), same two-image questions with features, same greedy
settings for every batch size; the answers of each batch size are checked identical to batch 1's.
Timed: ``model_vqa.run`` end to end (questions, features, images, generation, answers file), the model
loaded once beforehand and warmed up on a few questions.
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

from eeg_vlm.formats import STAGES, make_question, read_jsonl, save_features, write_jsonl
from llava.eval import model_vqa
from llava.model.tiny import build_tiny_llava
from sleep_eeg.cot import QUESTIONS


def make_questions(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` [img, img] questions over 8 random PNGs, features beside the question file."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    names = []
    for k in range(8):
        names.append(f"epoch_{k}.png")
        Image.fromarray(rng.integers(0, 256, (64, 192, 3), dtype=np.uint8)).save(root / "images" / names[-1])
    questions = [
        make_question(f"q{i}", [names[i % 8]] * 2, QUESTIONS[i % len(QUESTIONS)], STAGES[i % 5], epoch=i)
        for i in range(n)
    ]
    write_jsonl(root / "eeg_eval.jsonl", questions)
    save_features(root / "eval_high_level_features.npy", rng.normal(size=(n, 1, 1024)).astype(np.float32))
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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_llava(tmp / "tiny", seed=0)
        qfile = make_questions(tmp / "data", args.questions)
        loaded = model_vqa.load_model(str(tmp / "tiny"), None, args.device)
        common = dict(model_path=str(tmp / "tiny"), question_file=str(qfile), image_folder=str(tmp / "data" / "images"),
                      max_new_tokens=args.max_new_tokens, device=args.device, loaded=loaded)
        warm = tmp / "warm.jsonl"  # warm-up on the first few questions (the first chunk of many)
        model_vqa.run(answers_file=str(warm), batch_size=max(args.batch_sizes), num_chunks=max(1, args.questions // 4), **common)

        print(f"machine: {cpu_name()}, torch threads {torch.get_num_threads()}, device {args.device}; "
              f"{args.questions} questions, {args.max_new_tokens} new tokens max, greedy, best of {args.repeats}")
        seconds = {bs: float("inf") for bs in args.batch_sizes}
        answers = {}
        for rep in range(args.repeats):
            for bs in args.batch_sizes:
                out = tmp / f"answers_bs{bs}_{rep}.jsonl"
                seconds[bs] = min(seconds[bs], model_vqa.run(answers_file=str(out), batch_size=bs, **common)["seconds"])
                answers[bs, rep] = [(r["question_id"], r["text"]) for r in read_jsonl(out)]
        reference = answers[args.batch_sizes[0], 0]
        results = {}
        for bs in args.batch_sizes:
            same = all(answers[bs, rep] == reference for rep in range(args.repeats))
            results[bs] = args.questions / seconds[bs]
            print(f"batch {bs:>3}: {seconds[bs]:7.2f} s  {results[bs]:7.2f} questions/s  "
                  f"answers identical to batch {args.batch_sizes[0]}: {same}")
            if not same:
                raise SystemExit(f"batch {bs} changed the answers")
        base = results[args.batch_sizes[0]]
        print("ratios vs batch", args.batch_sizes[0], ":", ", ".join(f"batch {bs} x{q / base:.2f}" for bs, q in results.items()))


if __name__ == "__main__":
    main()
