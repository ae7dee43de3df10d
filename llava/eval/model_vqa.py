"""Answer eval questions with a LLaVA checkpoint: LLaVA-1.5's ``model_vqa.py``, batched and resumable.

    python llava/eval/model_vqa.py --model-path checkpoints/<run>/ --model-base <LLaVA-v1.5-13b>/ \
        --question-file sleep_data/eeg_eval.jsonl --image-folder sleep_data/eeg_images_eval \
        --answers-file sleep_data/answers/eeg_answers.jsonl

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
from PIL import Image
from tqdm.auto import tqdm

from eeg_core.answer import ANSWER_STAGE_PREFIX, stage_line, user_prompt
from eeg_core.atomic import append_jsonl, write_jsonl
from eeg_core.errors import FormatError
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
from eeg_core.stages import STAGES
from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
)
from llava.eval import choices

ANSWER_MODES = ("generate", "choices")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Answer eval questions with a LLaVA checkpoint (batched, resumable).")
    p.add_argument("--model-path", required=True, help="checkpoint folder (full, LoRA or projector-only)")
    p.add_argument("--model-base", default=None, help="base model folder for LoRA / projector-only checkpoints")
    p.add_argument("--question-file", required=True, help="questions, JSONL")
    p.add_argument("--image-folder", default="", help="folder the questions' image paths are relative to")
    p.add_argument("--answers-file", required=True, help="answers, JSONL (appended to: reruns resume)")
    p.add_argument("--high-level-features", default=None,
                   help="features .npy [N,1,D] for the placeholder images "
                        "(default: eval_high_level_features.npy beside the question file)")
    p.add_argument("--conv-mode", default=None,
                   help="conversation template (default: the checkpoint's conv_version, else llava_v1)")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-idx", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--answer-mode", choices=ANSWER_MODES, default="generate",
                   help="generate: decode the answer (LLaVA's way); choices: score the five stage answers by "
                        "their likelihood, write the most likely one and the five probabilities (in metadata)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    p.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    # 256, not LLaVA's 128: the longest chain-of-thought answers (REM, ~450 characters) exceed 128 Llama tokens.
    p.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed for sampling (--temperature > 0)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
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
# Model and prompts
# ---------------------------------------------------------------------------------------------
def load_model(model_path: str, model_base: str | None, device: str):
    """``(tokenizer, model, image_processor)`` through LLaVA's loader; float16 on a GPU, float32 on the CPU."""
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base, get_model_name_from_path(model_path), device_map=None, device=device,
        torch_dtype=dtype,
    )  # device_map None: the whole model on --device (one GPU), never spread by accelerate
    return tokenizer, model, image_processor


def user_text(question: dict, use_im_start_end: bool) -> str:
    """The user turn: one ``<image>`` line per listed image, then the text."""
    image_token = DEFAULT_IMAGE_TOKEN
    if use_im_start_end:
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    text = question["text"]
    if DEFAULT_IMAGE_TOKEN in text:  # the question placed its own image tokens
        return text.replace(DEFAULT_IMAGE_TOKEN, image_token)
    return user_prompt(text, len(record_images(question)), image_token)


def build_prompt(question: dict, conv_template, use_im_start_end: bool) -> str:
    """The user turn (``user_text``) in the conversation template; the assistant turn left open."""
    return choices.render_reply(conv_template, user_text(question, use_im_start_end), None)[0]


def stop_string(conv_template) -> str:
    from llava.conversation import SeparatorStyle

    return conv_template.sep2 if conv_template.sep_style == SeparatorStyle.TWO else conv_template.sep


def pixels(model, image_processor, image_paths: Sequence[Sequence[Path | Image.Image]]):
    """The batch's real images (paths or PIL images, in question order) as one tensor, and their sizes."""
    from llava.mm_utils import load_image, process_images

    pil_images = [x if isinstance(x, Image.Image) else load_image(str(x)) for paths in image_paths for x in paths]
    if not pil_images:
        return None, None
    images = process_images([img.convert("RGB") for img in pil_images], image_processor, model.config)
    return images.to(device=model.device, dtype=model.dtype), [img.size for img in pil_images]


def feature_tensors(model, features: Sequence[np.ndarray | None]) -> list[torch.Tensor | None]:
    return [None if f is None else torch.from_numpy(np.array(f, dtype=np.float32)).to(model.device, model.dtype)
            for f in features]


@torch.inference_mode()
def answer_batch(
    model,
    tokenizer,
    image_processor,
    prompts: list[str],
    image_paths: list[list[Path]],
    features: list[np.ndarray | None],
    stop_str: str | None,
    generate_kwargs: dict,
) -> list[str]:
    """Greedy (or sampled) answers for one batch: left-padded prompts, images and features spliced by the model."""
    from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token

    device = model.device
    ids = [tokenizer_image_token(p, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt") for p in prompts]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, x in enumerate(ids):
        input_ids[b, width - len(x):] = x
        attention_mask[b, width - len(x):] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)

    images, image_sizes = pixels(model, image_processor, image_paths)
    hl = feature_tensors(model, features)

    eos = tokenizer.eos_token_id
    stopping = None
    if stop_str and stop_str != tokenizer.eos_token:
        stopping = [KeywordsStoppingCriteria([stop_str], tokenizer, input_ids)]
    output_ids = model.generate(
        input_ids,
        attention_mask=attention_mask,
        images=images,
        image_sizes=image_sizes,
        high_level_features=hl if any(f is not None for f in hl) else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        stopping_criteria=stopping,
        use_cache=True,
        **generate_kwargs,
    )
    answers = []
    for row in output_ids.tolist():
        if eos in row:  # finished rows are padded after their EOS
            row = row[: row.index(eos)]
        text = tokenizer.decode(row, skip_special_tokens=True).strip()
        if stop_str and stop_str in text:
            text = text[: text.index(stop_str)].strip()
        answers.append(text)
    return answers


def choose_batch(
    model,
    tokenizer,
    image_processor,
    user_texts: list[str],
    image_paths: list[list[Path | Image.Image]],
    features: list[np.ndarray | None],
    conv_template,
    max_new_tokens: int = 256,
) -> list[tuple[str, dict[str, float]]]:
    """``choices`` answers for one batch (see ``llava.eval.choices``): for each question the answer text (any
    generated reasoning, then ``Sleep stage: X`` with X the most likely stage) and the five probabilities."""
    images, _ = pixels(model, image_processor, image_paths)
    hl = feature_tensors(model, features)
    hl = hl if any(f is not None for f in hl) else None
    tokenized: dict[str, choices.Candidates] = {}  # questions of one template share their candidates
    for text in user_texts:
        if text not in tokenized:
            tokenized[text] = choices.candidates(conv_template, text, tokenizer)
    cands = [tokenized[text] for text in user_texts]
    scores, greedy = choices.score_candidates(model, tokenizer, cands, images, hl, check_greedy=True)
    reasoning = [""] * len(user_texts)
    reasons = [b for b in range(len(user_texts)) if not greedy[b]]  # greedy decoding would reason first
    if reasons:
        generated = answer_batch(
            model, tokenizer, image_processor,
            prompts=[choices.render_reply(conv_template, user_texts[b], None)[0] for b in reasons],
            image_paths=[image_paths[b] for b in reasons], features=[features[b] for b in reasons],
            stop_str=ANSWER_STAGE_PREFIX,
            generate_kwargs={"max_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False},
        )
        for b, text in zip(reasons, generated):
            reasoning[b] = choices.reasoning_of(text)
        rescore = [b for b in reasons if reasoning[b]]
        if rescore:
            images, _ = pixels(model, image_processor, [image_paths[b] for b in rescore])
            hl = feature_tensors(model, [features[b] for b in rescore])
            hl = hl if any(f is not None for f in hl) else None
            cands = [choices.candidates(conv_template, user_texts[b], tokenizer, reasoning[b]) for b in rescore]
            scores[rescore] = choices.score_candidates(model, tokenizer, cands, images, hl, check_greedy=False)[0]
    probs = choices.probabilities(scores)
    return [(reasoning[b] + stage_line(STAGES[int(row.argmax())]),
             {s: round(float(v), 6) for s, v in zip(STAGES, row)}) for b, row in enumerate(probs)]


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class VqaOptions:
    """``run``'s options: the command-line flags (same names and defaults)."""

    model_path: str
    question_file: str
    answers_file: str
    image_folder: str = ""
    model_base: str | None = None
    high_level_features: str | None = None
    conv_mode: str | None = None
    num_chunks: int = 1
    chunk_idx: int = 0
    batch_size: int = 8
    temperature: float = 0.0
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 256
    seed: int = 0
    device: str | None = None
    answer_mode: str = "generate"

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
    config = model.config
    from llava.conversation import checkpoint_conv_template

    conv_template = checkpoint_conv_template(config, opts.conv_mode)
    stop_str = stop_string(conv_template)
    use_im_start_end = bool(getattr(config, "mm_use_im_start_end", False))
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
                prompts=[build_prompt(q, conv_template, use_im_start_end) for _, q in batch],
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
