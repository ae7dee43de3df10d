"""Answer eval questions with a LLaVA checkpoint: LLaVA-1.5's ``model_vqa.py``, batched and resumable.

    python llava/eval/model_vqa.py --model-path checkpoints/<run>/ --model-base <LLaVA-v1.5-13b>/ \
        --question-file sleep_data/eeg_eval.jsonl --image-folder sleep_data/eeg_images_eval \
        --answers-file sleep_data/answers/eeg_answers.jsonl

The script reads question files and writes answers files; loading the checkpoint, building its prompts and
answering a batch are the library ``llava.eval.answering`` (which ``eeg-vlm stage`` answers through too).

- Questions: JSONL ``{"question_id", "image": img | [img, img], "text", ...}``. The prompt is one ``<image>``
  line per listed image, then the text, in the conversation template (``--conv-mode``, default the
  checkpoint's ``conv_version``, else ``llava_v1``). With ``[Image1, Image2]`` only Image1 is opened; the
  Image2 slot is filled from the high-level features (row = the question's position in the whole question
  file, or its ``feature_index``); the checkpoint's config says how (``mm_hl_fusion``).
- Answers: LLaVA's schema, one line per question, in question order; the question's other fields
  (``label``, ``subject``, ``epoch``, ...) go into ``metadata``.
- Resumable: each batch is appended and fsync'd as it finishes. A rerun with the same ``--answers-file``
  skips the questions already answered and first repairs a torn last line left by a killed run (so a
  kill loses at most the batch in flight). To start over, delete the answers file. Each answer carries
  ``model_sha256``, the checkpoint's content fingerprint (``builder.model_fingerprint``): answers of another
  model, or of a retrained one in the same folder, are refused, never mixed in.
- Question ids are compared as text (``7`` and ``"7"`` are one id; a file holding both is refused).
- Before the model loads: every image path stays inside ``--image-folder`` (absolute and ``..`` paths are
  refused) and every image is decoded in full, so a corrupt file stops the run before any answer is written.
- ``--num-chunks N --chunk-idx K`` answers the K-th of N contiguous slices of the question file (for
  parallel jobs; give each its own ``--answers-file``); ``llava/eval/merge_answers.py`` joins them.
- Greedy by default (``--temperature 0``): batched generation (left padding, KV cache) gives the same
  answers as ``--batch-size 1`` in float32; in float16 on a GPU, padding may change rare near-ties.
- ``--answer-mode choices``: the five answers ``Sleep stage: W`` ... ``Sleep stage: REM`` (in the checkpoint's
  conversation template) are scored by their likelihood given the prompt, which is encoded once and whose KV
  cache the five share (``llava.eval.choices``). ``text`` is the most likely answer and ``metadata`` holds
  ``probabilities`` (the five, summing to 1) and ``answer_mode``. A chain-of-thought checkpoint is not refused:
  its reasoning is generated greedily up to its ``Sleep stage:`` line (as ``generate`` would write it, so
  ``--max-new-tokens`` bounds it) and the five stages are scored after that reasoning, which ``text`` keeps.
  Sampling flags do not apply. Batched and resumable like ``generate``; the two modes never share an answers file.
- A progress bar counts the questions (rate and time left).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from eeg_core.atomic import append_jsonl, write_jsonl
from eeg_core.errors import FormatError
from eeg_core.options import add_options, option
from eeg_core.outputs import check_device, check_output
from eeg_core.formats import (
    answer_keys,
    check_feature_size,
    decode_images,
    default_features_path,
    feature_row,
    has_placeholder,
    image_path,
    load_features,
    question_answer,
    question_key,
    question_keys,
    read_jsonl,
    read_records,
    real_images,
    record_id,
    record_images,
)
from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import checkpoint_conv_template
from llava.eval.answering import (
    answer_batch,
    choose_batch,
    load_model,
    open_prompt,
    stop_string,
    user_turn,
    uses_im_start_end,
)

ANSWER_MODES = ("generate", "choices")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Answer eval questions with a LLaVA checkpoint (batched, resumable).")
    add_options(p, VqaOptions)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(**vars(args))
    print(
        f"{summary['answered']} answered, {summary['skipped']} already in {summary['answers_file']}"
        f" ({summary['seconds']:.1f} s)"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Inputs: questions, chunk, previous answers, images, features
# ---------------------------------------------------------------------------------------------
def read_questions(path: str | Path) -> list[dict]:
    """Questions in file order, each with a ``question_id`` (unique, compared as text: ``7`` and ``"7"`` are the
    same id, so a file holding both is refused) and a ``text``."""
    questions = read_records(path)
    question_keys(questions, path)
    for q in questions:
        qid = q["question_id"]
        if not isinstance(q.get("text"), str):
            raise FormatError(f"{path}: question {qid!r} has no 'text' string")
        n_tokens = q["text"].count(DEFAULT_IMAGE_TOKEN)
        n_images = len(record_images(q))
        if n_tokens and n_tokens != n_images:
            raise FormatError(f"{path}: question {qid!r} has {n_tokens} <image> in its text but {n_images} images")
    return questions


def chunk_positions(n: int, num_chunks: int, chunk_idx: int) -> range:
    """Positions of the ``chunk_idx``-th of ``num_chunks`` contiguous, near-equal slices of ``n`` questions."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise FormatError(f"--chunk-idx {chunk_idx} is not in 0..{num_chunks - 1} (--num-chunks {num_chunks})")
    return range(chunk_idx * n // num_chunks, (chunk_idx + 1) * n // num_chunks)


def previous_answers(path: Path, chunk_keys: set[str], model_id: str, fingerprint: str,
                     answer_mode: str = "generate") -> set[str]:
    """Question keys (``question_key``) already answered in ``path``. A torn last line (a killed run) is dropped
    and the file rewritten atomically without it. Answers for other questions, written by another model
    (another ``model_sha256``: the checkpoint's content, whatever its folder is called), or in the other answer
    mode (``metadata["answer_mode"]``, absent for ``generate``) are an error."""
    if not path.exists():
        return set()
    rows = read_jsonl(path, allow_torn_tail=True)
    keys = answer_keys(rows, path, chunk_keys, "this run's questions (another question file or chunk?)")
    for lineno, row in enumerate(rows, 1):
        theirs = row.get("model_sha256")
        if theirs != fingerprint:
            written_by = (f"model {row.get('model_id')!r} with fingerprint {str(theirs)[:12]}" if theirs
                          else f"model {row.get('model_id')!r} without a fingerprint (an older version)")
            raise FormatError(
                f"{path}: answer #{lineno} was written by {written_by}, this run is {model_id!r} with fingerprint "
                f"{fingerprint[:12]} (another model, or retrained); use another --answers-file or delete this one"
            )
        metadata = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        theirs_mode = metadata.get("answer_mode", "generate")
        if theirs_mode != answer_mode:
            raise FormatError(f"{path}: answer #{lineno} was written with --answer-mode {theirs_mode}, this run is "
                              f"--answer-mode {answer_mode}; use another --answers-file or delete this one")
    raw = path.read_bytes()
    if raw.strip() and not raw.endswith(b"\n"):
        write_jsonl(path, rows)  # repair: keep the complete lines only
    return set(keys)


# ---------------------------------------------------------------------------------------------
# A question's user turn (the model, the templates and the batches: llava.eval.answering)
# ---------------------------------------------------------------------------------------------
def user_text(question: dict, use_im_start_end: bool) -> str:
    """A question's user turn (``answering.user_turn``): one ``<image>`` line per listed image, then its text."""
    return user_turn(question["text"], len(record_images(question)), use_im_start_end)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class VqaOptions:
    """``run``'s options: the command-line flags (same names and defaults)."""

    model_path: str = option(help="checkpoint folder (full, LoRA or projector-only)")
    question_file: str = option(help="questions, JSONL")
    answers_file: str = option(help="answers, JSONL (appended to: reruns resume)")
    image_folder: str = option("", "folder the questions' image paths are relative to")
    model_base: str | None = option(None, "base model folder for LoRA / projector-only checkpoints")
    high_level_features: str | None = option(None, "features .npy [N,1,D] for the placeholder images (default: "
                                                   "eval_high_level_features.npy beside the question file)")
    conv_mode: str | None = option(None, "conversation template (default: the checkpoint's conv_version, else "
                                         "llava_v1)")
    num_chunks: int = option(1, "split the questions into this many chunks (one process each)")
    chunk_idx: int = option(0, "which chunk this process answers")
    batch_size: int = option(8, "questions per batch")
    temperature: float = option(0.0, "0 = greedy (default); > 0 samples")
    top_p: float | None = option(None, "nucleus sampling", flag="--top_p", aliases=("--top-p",), type=float)
    num_beams: int = option(1, "beam search width", flag="--num_beams", aliases=("--num-beams",))
    # 256, not LLaVA's 128: the longest chain-of-thought answers (REM, ~450 characters) exceed 128 Llama tokens.
    max_new_tokens: int = option(256, "most tokens generated per answer", aliases=("--max_new_tokens",))
    seed: int = option(0, "seed for sampling (--temperature > 0)")
    device: str | None = option(None, "default: cuda if available, else cpu")
    answer_mode: str = option("generate", "generate: decode the answer (LLaVA's way); choices: score the five stage "
                                          "answers by their likelihood, write the most likely one and the five "
                                          "probabilities (in metadata)", choices=ANSWER_MODES)

    def check(self) -> None:
        if self.batch_size < 1:
            raise FormatError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.answer_mode not in ANSWER_MODES:
            raise FormatError(f"--answer-mode must be one of {', '.join(ANSWER_MODES)}, got {self.answer_mode!r}")
        check_output(self.answers_file, "--answers-file", folder=False)
        if self.device is not None and not str(self.device).startswith("cuda"):  # cuda falls back to the CPU
            check_device(self.device)
        for flag, value in (("--max-new-tokens", self.max_new_tokens), ("--num-beams", self.num_beams)):
            if value < 1:
                raise FormatError(f"{flag} must be at least 1, got {value}")
        if not self.temperature >= 0:  # NaN included
            raise FormatError(f"--temperature must be 0 (greedy) or more, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise FormatError(f"--top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        """``generate``'s decoding arguments: greedy at temperature 0, else sampling."""
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            kwargs.update(do_sample=False)
        return kwargs


@dataclass
class Work:
    """What a run has left to answer, checked before the model loads."""

    model_id: str
    fingerprint: str
    todo: list[tuple[int, dict]]  # (position in the question file, question), in file order
    skipped: int  # questions of the chunk already in the answers file
    paths: dict[str, list[Path]] = field(default_factory=dict)  # question key -> its real images
    features: np.ndarray | None = None
    features_path: str | Path | None = None


def plan_work(opts: VqaOptions) -> Work:
    """The chunk's questions not yet answered (a torn answers file repaired, another model's answers refused),
    every image path inside ``--image-folder`` and decoded, the features loaded when a question needs them."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import model_fingerprint

    question_file, image_folder = Path(opts.question_file), Path(opts.image_folder)
    model_id = get_model_name_from_path(str(opts.model_path))
    questions = read_questions(question_file)
    fingerprint = model_fingerprint(opts.model_path, opts.model_base)
    chunk = [(i, questions[i]) for i in chunk_positions(len(questions), opts.num_chunks, opts.chunk_idx)]
    done = previous_answers(Path(opts.answers_file), {question_key(record_id(q)) for _, q in chunk}, model_id,
                            fingerprint, opts.answer_mode)
    todo = [(i, q) for i, q in chunk if question_key(record_id(q)) not in done]
    work = Work(model_id, fingerprint, todo, skipped=len(chunk) - len(todo))
    if not todo:
        return work
    # Every image path stays inside --image-folder, and every image is decoded before the first answer.
    to_decode: dict[Path, str] = {}
    for _, q in todo:
        where = f"{question_file}: question {record_id(q)!r}"
        for name in record_images(q):
            image_path(image_folder, name, where)
        work.paths[question_key(record_id(q))] = [image_path(image_folder, name, where) for name in real_images(q)]
        for path in work.paths[question_key(record_id(q))]:
            to_decode.setdefault(path, where)
    decode_images(list(to_decode.items()), desc="checking images")
    if any(has_placeholder(q) for _, q in todo):
        work.features_path = opts.high_level_features or default_features_path(question_file, train=False)
        work.features = load_features(work.features_path, questions, records_path=question_file)
    return work


def answer_rows(batch: list[tuple[int, dict]], texts: list[str], extra: list[dict], work: Work) -> list[dict]:
    """One answer per question in LLaVA's schema; the question's other fields (and ``extra``) in ``metadata``."""
    return [question_answer(q, text, work.model_id, more, work.fingerprint)
            for (_, q), text, more in zip(batch, texts, extra)]


def answer_work(opts: VqaOptions, work: Work, loaded: tuple[Any, Any, Any], progress: bool = True) -> int:
    """The batch loop: answer ``work.todo`` batch by batch, appending (fsync'd) each batch's answers to
    ``--answers-file`` as it finishes. Returns the number answered."""
    tokenizer, model, image_processor = loaded
    conv_template = checkpoint_conv_template(model.config, opts.conv_mode)
    stop_str = stop_string(conv_template)
    use_im_start_end = uses_im_start_end(model.config)
    generate_kwargs = opts.generate_kwargs()
    if opts.temperature > 0:
        torch.manual_seed(opts.seed)

    answered = 0
    bar = tqdm(total=len(work.todo), desc=f"answering ({opts.answer_mode})", unit="question", disable=not progress)
    for start in range(0, len(work.todo), opts.batch_size):
        batch = work.todo[start : start + opts.batch_size]
        batch_paths = [work.paths[question_key(record_id(q))] for _, q in batch]
        batch_features = [work.features[feature_row(q, i)] if has_placeholder(q) else None for i, q in batch]
        if opts.answer_mode == "choices":
            chosen = choose_batch(model, tokenizer, image_processor,
                                  [user_text(q, use_im_start_end) for _, q in batch], batch_paths, batch_features,
                                  conv_template, opts.max_new_tokens)
            texts = [text for text, _ in chosen]
            extra = [{"probabilities": probs, "answer_mode": "choices"} for _, probs in chosen]
        else:
            texts = answer_batch(
                model,
                tokenizer,
                image_processor,
                prompts=[open_prompt(conv_template, user_text(q, use_im_start_end)) for _, q in batch],
                image_paths=batch_paths,
                features=batch_features,
                stop_str=stop_str,
                generate_kwargs=generate_kwargs,
            )
            extra = [{} for _ in batch]
        append_jsonl(Path(opts.answers_file), answer_rows(batch, texts, extra, work))
        answered += len(batch)
        bar.update(len(batch))
    bar.close()
    return answered


def run(
    model_path: str,
    question_file: str,
    answers_file: str,
    *,
    loaded: tuple[Any, Any, Any] | None = None,
    progress: bool = True,
    **options,
) -> dict:
    """Answer the chunk's questions not yet in ``answers_file``; ``options`` are ``VqaOptions``' fields (the
    command-line flags). ``loaded`` = ``(tokenizer, model, image_processor)`` reuses a loaded model
    (``model_path`` then only names it in the answers). ``answer_mode``: ``generate`` (decode) or ``choices`` (the
    five stages scored; see ``llava.eval.choices``). Returns ``{answered, skipped, answers_file, seconds}``."""
    started = time.perf_counter()
    opts = VqaOptions(model_path=model_path, question_file=question_file, answers_file=answers_file, **options)
    opts.check()
    work = plan_work(opts)  # everything that can be checked without the model is checked first
    summary = {"answered": 0, "skipped": work.skipped, "answers_file": str(Path(opts.answers_file))}
    if work.todo:
        device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if loaded is None:
            loaded = load_model(opts.model_path, opts.model_base, device)
        if work.features is not None:
            check_feature_size(work.features_path, work.features, getattr(loaded[1].config, "mm_hidden_size", None))
        summary["answered"] = answer_work(opts, work, loaded, progress)
    return {**summary, "seconds": time.perf_counter() - started}


if __name__ == "__main__":
    from eeg_core.cli import run as run_command

    run_command(main)
