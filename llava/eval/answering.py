"""Answering with a LLaVA checkpoint, as a library: load it, build its prompts, answer a batch.

``llava/eval/model_vqa.py`` (the command: question files, answers files, resuming) and ``eeg-vlm stage`` (whole
nights in memory) both answer through this module.

- ``load_model``: ``(tokenizer, model, image_processor)`` on one device, float16 on a GPU and float32 on the CPU.
- Prompts (the template: ``llava.conversation.checkpoint_conv_template``): ``user_turn``
  (one ``<image>`` line per image, then the text), ``open_prompt`` (the user turn in the template, the assistant
  turn left open) and ``stop_string``.
- ``answer_batch``: generated answers (greedy or sampled), the prompts left-padded (``llava.padding``).
- ``choose_batch``: the ``choices`` answers, the five stages scored by their likelihood (``llava.eval.choices``).

A batch's images are paths or PIL images (the real ones only, in question order); a question's high-level
feature (``[1, D]``, or None) fills its placeholder ``<image>`` slot, the checkpoint's config says how.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from eeg_core.answer import ANSWER_STAGE_PREFIX, stage_line, user_prompt
from eeg_core.stages import STAGES
from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_TOKEN_INDEX,
)
from llava.eval import choices
from llava.padding import pad_sequences



# ---------------------------------------------------------------------------------------------
# The model
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


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------
def uses_im_start_end(config) -> bool:
    """Whether the checkpoint wraps each ``<image>`` in its start and end tokens (``mm_use_im_start_end``)."""
    return bool(getattr(config, "mm_use_im_start_end", False))


def user_turn(text: str, n_images: int, use_im_start_end: bool) -> str:
    """The user turn: one ``<image>`` line per image, then the text (a text that places its own ``<image>``
    tokens keeps them where they are)."""
    image_token = DEFAULT_IMAGE_TOKEN
    if use_im_start_end:
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    if DEFAULT_IMAGE_TOKEN in text:  # the question placed its own image tokens
        return text.replace(DEFAULT_IMAGE_TOKEN, image_token)
    return user_prompt(text, n_images, image_token)


def open_prompt(conv_template, user_text: str) -> str:
    """The user turn in the conversation template; the assistant turn left open."""
    return choices.render_reply(conv_template, user_text, None)[0]


def stop_string(conv_template) -> str:
    """Where the template ends an assistant turn."""
    from llava.conversation import SeparatorStyle

    return conv_template.sep2 if conv_template.sep_style == SeparatorStyle.TWO else conv_template.sep


# ---------------------------------------------------------------------------------------------
# Images and features
# ---------------------------------------------------------------------------------------------
def pixels(model, image_processor, image_paths: Sequence[Sequence[Path | Image.Image]]):
    """The batch's real images (paths or PIL images, in question order) as one tensor, and their sizes."""
    from llava.mm_utils import load_image, process_images

    pil_images = [x if isinstance(x, Image.Image) else load_image(str(x)) for paths in image_paths for x in paths]
    if not pil_images:
        return None, None
    images = process_images([img.convert("RGB") for img in pil_images], image_processor, model.config)
    return images.to(device=model.device, dtype=model.dtype), [img.size for img in pil_images]


def feature_tensors(model, features: Sequence[np.ndarray | None]) -> list[torch.Tensor | None]:
    """Each question's high-level feature (or None) as a tensor on the model's device, in its dtype."""
    return [None if f is None else torch.from_numpy(np.array(f, dtype=np.float32)).to(model.device, model.dtype)
            for f in features]


# ---------------------------------------------------------------------------------------------
# Answering a batch
# ---------------------------------------------------------------------------------------------
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
    input_ids, attention_mask = pad_sequences(ids, tokenizer.pad_token_id, "left")
    input_ids, attention_mask = input_ids.to(device), attention_mask.long().to(device)

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
            prompts=[open_prompt(conv_template, user_texts[b]) for b in reasons],
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
