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

``--cache-memory`` then runs each answer mode once more at the largest batch size, untimed, recording the bytes
held by the KV cache (``CacheMemory``): after the first forward pass (the prompt) and at the peak, so that
``choices`` (the prompt's cache shared by the five candidates, cropped back after each) can be compared with
``generate``; and checks ``choices``' probabilities against whole-sequence scoring (``--check-questions``).

    .venv/bin/python benchmarks/eval_throughput.py --stage-only --answer-modes generate choices --batch-sizes 32 \
        --repeats 1 --cache-memory
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

from eeg_core.answer import parse_stage, stage_line
from eeg_core.atomic import write_jsonl
from eeg_core.formats import (
    FEATURE_DIM,
    feature_row,
    has_placeholder,
    make_question,
    question_key,
    read_jsonl,
    record_id,
    save_features,
)
from eeg_core.stages import STAGES
from eeg_vlm.tiny import build_tiny_llava, train_stage_only
from llava.eval import answering, model_vqa
from sleep_eeg.images.cot import QUESTIONS


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
        make_question(f"q{i}", [names[i % 8]] * 2, QUESTIONS[0 if pairs else i % len(QUESTIONS)], STAGES[i % len(STAGES)],
                      epoch=i)
        for i in range(n)
    ]
    write_jsonl(root / "eeg_eval.jsonl", questions)
    features = rng.normal(size=(n, 1, FEATURE_DIM)).astype(np.float32)
    if pairs:
        features = features[np.arange(n) % 8]
    save_features(root / "eval_high_level_features.npy", features)
    return root / "eeg_eval.jsonl"


class CacheMemory:
    """While active, the bytes that each KV cache (``transformers`` ``Cache``) holds, read after each of its updates.

    Held bytes: the storage behind every layer's keys and values, each storage once (a cropped cache still holds
    the storage it was cropped from until its next update replaces it). Per cache: ``prompt``, held once the
    first forward pass reached the last layer (the prompt, or ``choices``' shared context), ``peak``, the most it
    held at any update, ``rows``, its batch dimension at its widest, and the positions (tokens, padding
    included) it held at those two moments."""

    def __init__(self):
        self.caches: list[dict] = []

    @staticmethod
    def held(cache) -> int:
        storages = {}
        for layer in cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor) and t.numel():
                    storage = t.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def __enter__(self):
        from transformers.cache_utils import Cache

        self.cls, self.original = Cache, Cache.update
        original, caches = self.original, self.caches

        def update(cache, key_states, value_states, layer_idx, *args, **kwargs):
            out = original(cache, key_states, value_states, layer_idx, *args, **kwargs)
            record = cache.__dict__.get("_held_bytes")
            if record is None:
                record = cache.__dict__["_held_bytes"] = {"prompt": None, "peak": 0, "rows": 0,
                                                          "prompt_tokens": 0, "peak_tokens": 0}
                caches.append(record)
            held = self.held(cache)
            positions = cache.layers[layer_idx].keys.shape[-2]
            if held > record["peak"]:
                record["peak"], record["peak_tokens"] = held, positions
            record["rows"] = max(record["rows"], int(key_states.shape[0]))
            if record["prompt"] is None and layer_idx == len(cache.layers) - 1:
                record["prompt"], record["prompt_tokens"] = held, positions
            return out

        Cache.update = update
        return self

    def __exit__(self, *exc):
        self.cls.update = self.original

    def summary(self) -> dict:
        """The largest prompt and peak over the caches (one per batch, or per scoring pass), and their widest rows."""
        if not self.caches:
            raise RuntimeError("no KV cache was updated while recording (nothing answered?)")
        prompt = max(self.caches, key=lambda c: c["prompt"] or 0)
        peak = max(self.caches, key=lambda c: c["peak"])
        return {"caches": len(self.caches), "prompt_bytes": prompt["prompt"] or 0,
                "prompt_tokens": prompt["prompt_tokens"], "peak_bytes": peak["peak"],
                "peak_tokens": peak["peak_tokens"], "rows": max(c["rows"] for c in self.caches)}


def whole_sequence_probabilities(loaded, model_path: str, qfile: Path, image_folder: Path, answers: list[dict],
                                 n: int) -> float:
    """The largest difference between ``choices``' probabilities (``answers``, in question order) and those of
    whole-sequence scoring, over the first ``n`` questions: each candidate reply (the answer's reasoning, if any,
    then ``Sleep stage: X``) appended to the prompt and run through the model in one pass, no cache, batch 1; the
    log-likelihood of its tokens after the candidates' shared context, softmaxed over the five."""
    from llava.conversation import checkpoint_conv_template
    from llava.eval import choices
    from llava.mm_utils import tokenizer_image_token

    tokenizer, model, _ = loaded
    work = model_vqa.plan_work(model_vqa.VqaOptions(model_path=model_path, question_file=str(qfile),
                                                    answers_file=str(qfile.with_suffix(".unused.jsonl")),
                                                    image_folder=str(image_folder)))
    conv = checkpoint_conv_template(model.config)
    use_im_start_end = bool(getattr(model.config, "mm_use_im_start_end", False))
    worst = 0.0
    for (i, q), answer in list(zip(work.todo, answers))[:n]:
        assert answer["question_id"] == q["question_id"]
        key = question_key(record_id(q))
        images, _ = answering.pixels(model, loaded[2], [work.paths[key]])
        feature = work.features[feature_row(q, i)] if has_placeholder(q) else None
        hl = answering.feature_tensors(model, [feature]) if feature is not None else None
        text = model_vqa.user_text(q, use_im_start_end)
        reasoning = choices.reasoning_of(answer["text"])
        suffixes = choices.candidates(conv, text, tokenizer, reasoning).suffixes
        scores = []
        for stage, suffix in zip(STAGES, suffixes):
            prompt, _ = choices.render_reply(conv, text, reasoning + stage_line(stage))
            ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
            assert ids[0, -len(suffix):].tolist() == suffix
            with torch.inference_mode():
                logits = model(input_ids=ids, images=images, high_level_features=hl).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            scores.append(sum(float(logp[-len(suffix) - 1 + t, suffix[t]]) for t in range(len(suffix))))
        expected = choices.probabilities(np.array(scores))
        got = np.array([answer["metadata"]["probabilities"][stage] for stage in STAGES])
        worst = max(worst, float(np.abs(expected - got).max()))
    return worst


def cache_memory(common: dict, tmp: Path, modes: list[str], batch: int, loaded, model_path: str, qfile: Path,
                 check: int) -> None:
    """``--cache-memory``: one untimed run per answer mode at ``batch``, the KV cache's bytes recorded; then
    ``choices``' probabilities against whole-sequence scoring on ``check`` questions."""
    figures = {}
    for mode in modes:
        out = tmp / f"cache_{mode}_bs{batch}.jsonl"
        with CacheMemory() as memory:
            model_vqa.run(answers_file=str(out), batch_size=batch, answer_mode=mode, **common)
        figures[mode] = memory.summary()
        f = figures[mode]
        print(f"KV cache, {mode:<8} batch {batch}: prompt {f['prompt_bytes'] / 2**20:8.2f} MiB "
              f"({f['prompt_tokens']} positions), peak {f['peak_bytes'] / 2**20:8.2f} MiB ({f['peak_tokens']} "
              f"positions), widest cache {f['rows']} rows, {f['caches']} caches")
    if {"generate", "choices"} <= set(modes):
        g, c = figures["generate"], figures["choices"]
        print(f"choices peak / generate prompt cache: x{c['peak_bytes'] / g['prompt_bytes']:.3f}; "
              f"choices peak / generate peak: x{c['peak_bytes'] / g['peak_bytes']:.3f}")
    if "choices" in modes and check:
        answers = read_jsonl(tmp / f"cache_choices_bs{batch}.jsonl")
        worst = whole_sequence_probabilities(loaded, model_path, qfile, qfile.parent / "images", answers, check)
        print(f"choices probabilities vs whole-sequence scoring, first {min(check, len(answers))} questions: "
              f"largest difference {worst:.1e} (answers file rounds to 1e-6)")


def cpu_name() -> str:
    """The CPU model as lscpu names it, and the core count."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.processor()} x{os.cpu_count()} cores"


def parse_args() -> argparse.Namespace:
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
    p.add_argument("--cache-memory", action="store_true",
                   help="also record the KV cache's bytes in each answer mode at the largest batch size (untimed), "
                        "and check choices' probabilities against whole-sequence scoring")
    p.add_argument("--check-questions", type=int, default=8,
                   help="questions whose choices probabilities are checked (--cache-memory)")
    return p.parse_args()


def prepare(tmp: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The tiny checkpoint (fine-tuned stage-only with ``--stage-only``) and the question file, under ``tmp``."""
    model_path = build_tiny_llava(tmp / "tiny", seed=0)
    qfile = make_questions(tmp / "data", args.questions, pairs=args.stage_only)
    if args.stage_only:
        images = [tmp / "data" / "images" / f"epoch_{k}.png" for k in range(8)]
        model_path = train_stage_only(model_path, tmp / "stage_only", images,
                                      np.load(tmp / "data" / "eval_high_level_features.npy")[:8],
                                      [STAGES[k % len(STAGES)] for k in range(8)], steps=60)
    return model_path, qfile


def timed_runs(common: dict, tmp: Path, args: argparse.Namespace, runs: list[tuple[str, int]]
               ) -> tuple[dict, dict]:
    """``--repeats`` rounds over ``runs`` (answer mode, batch size), interleaved: each run's best seconds, and the
    answers of every run and round (``(question_id, text)`` in file order)."""
    seconds = {run: float("inf") for run in runs}
    answers = {}
    for rep in range(args.repeats):
        for mode, bs in runs:
            out = tmp / f"answers_{mode}_bs{bs}_{rep}.jsonl"
            result = model_vqa.run(answers_file=str(out), batch_size=bs, answer_mode=mode, **common)
            seconds[mode, bs] = min(seconds[mode, bs], result["seconds"])
            answers[mode, bs, rep] = [(r["question_id"], r["text"]) for r in read_jsonl(out)]
    return seconds, answers


def print_rates(args: argparse.Namespace, runs: list[tuple[str, int]], seconds: dict, answers: dict) -> dict:
    """One line per run: seconds, questions/s, whether its answers are the first batch size's; stops on a change.
    Returns the questions/s of each run."""
    results = {}
    for mode, bs in runs:
        reference = answers[mode, args.batch_sizes[0], 0]
        same = all(answers[mode, bs, rep] == reference for rep in range(args.repeats))
        results[mode, bs] = args.questions / seconds[mode, bs]
        print(f"{mode:<9} batch {bs:>3}: {seconds[mode, bs]:7.2f} s  {results[mode, bs]:7.2f} questions/s  "
              f"answers identical to batch {args.batch_sizes[0]}: {same}")
        if not same:
            raise SystemExit(f"{mode} at batch {bs} changed the answers")
    return results


def print_ratios(args: argparse.Namespace, results: dict, answers: dict) -> None:
    """Each mode's speed-up over the first batch size; with both modes, how often they agree and their ratio."""
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


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path, qfile = prepare(tmp, args)
        loaded = answering.load_model(str(model_path), None, args.device)
        common = dict(model_path=str(model_path), question_file=str(qfile), image_folder=str(tmp / "data" / "images"),
                      max_new_tokens=args.max_new_tokens, device=args.device, loaded=loaded, progress=False)
        runs = [(mode, bs) for mode in args.answer_modes for bs in args.batch_sizes]
        for mode in args.answer_modes:  # warm-up on the first few questions (the first chunk of many)
            model_vqa.run(answers_file=str(tmp / f"warm_{mode}.jsonl"), batch_size=max(args.batch_sizes),
                          num_chunks=max(1, args.questions // 4), answer_mode=mode, **common)

        print(f"machine: {cpu_name()}, torch threads {torch.get_num_threads()}, device {args.device}; "
              f"{args.questions} questions, {args.max_new_tokens} new tokens max, greedy, best of {args.repeats}; "
              f"{'stage-only checkpoint' if args.stage_only else 'random tiny checkpoint'}")
        seconds, answers = timed_runs(common, tmp, args, runs)
        results = print_rates(args, runs, seconds, answers)
        print_ratios(args, results, answers)
        if args.cache_memory:
            cache_memory(common, tmp, args.answer_modes, max(args.batch_sizes), loaded, str(model_path), qfile,
                         args.check_questions)


if __name__ == "__main__":
    main()
