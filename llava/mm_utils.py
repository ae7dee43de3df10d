"""Helpers between raw inputs and the model: images to tensors, prompts with <image> to ids, stopping on keywords."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from eeg_core.errors import FormatError
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB; FormatError naming the path when it is missing or not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: image not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise FormatError(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad the shorter side so the image becomes square, content centred, padding in ``background_color``."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


ASPECT_RATIOS = ("pad", "square")


def image_aspect_ratio_of(model_cfg) -> str | None:
    """The ``image_aspect_ratio`` of a model config (None when it has none: LLaVA's default processing). A string
    (the value itself, this function's old third argument) is refused: read as a config it would silently lose
    ``pad``."""
    if isinstance(model_cfg, str):
        raise FormatError(f"process_images(images, image_processor, model_cfg) takes the model's config (LLaVA's "
                          f"signature), not the string {model_cfg!r}: pass model.config")
    return getattr(model_cfg, "image_aspect_ratio", None)


def process_images(images, image_processor, model_cfg) -> torch.Tensor:
    """PIL images -> FloatTensor [N, 3, H, W] as LLaVA-1.5 fed CLIP (LLaVA's signature: ``model_cfg`` is the
    model's config, or anything with an ``image_aspect_ratio`` attribute).

    ``pad``: pad to square with the processor's mean colour (as 0-255 ints) first, so nothing is cropped;
    ``square`` or no ``image_aspect_ratio`` attribute: the processor's own resize and centre crop. Any other value
    is a FormatError (LLaVA would fall back to the processor's default without a word).
    """
    image_aspect_ratio = image_aspect_ratio_of(model_cfg)
    if image_aspect_ratio == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        images = [expand2square(image, background) for image in images]
    elif image_aspect_ratio not in (None, "square"):
        raise FormatError(f"unknown image_aspect_ratio {image_aspect_ratio!r} (known: {', '.join(ASPECT_RATIOS)})")
    pixel_values = image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    return torch.as_tensor(pixel_values)


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Token ids of ``prompt`` with ``image_token_index`` where each ``<image>`` stood and one BOS at the start.

    Each text chunk between ``<image>`` markers is tokenized on its own (as LLaVA-1.5 did), so a chunk starts with
    the tokenizer's dummy-prefix space.
    """
    ids: list[int] = []
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", True):
        ids.append(tokenizer.bos_token_id)
    for i, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if i > 0:
            ids.append(image_token_index)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors {return_tensors!r} (use None or 'pt')")


def get_model_name_from_path(model_path: str) -> str:
    """The folder name; ``<run>_checkpoint-N`` for a ``checkpoint-N`` folder (as LLaVA named them)."""
    parts = str(model_path).rstrip("/\\").replace("\\", "/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Marks a sequence finished once its generated text contains one of ``keywords``.

    Batched: returns one flag per sequence, and a finished sequence stays finished, so ``generate`` stops when
    every sequence has produced a keyword. Only generated tokens are searched, whether ``generate`` hands over the
    prompt ids too (``input_ids`` path) or only the new tokens (``inputs_embeds`` path).
    """

    def __init__(self, keywords: list[str], tokenizer, input_ids: torch.Tensor | None = None):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword, add_special_tokens=False).input_ids
            if len(ids) > 1 and tokenizer.convert_ids_to_tokens(ids[0]) == "\u2581":  # a lone dummy-prefix space
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.max_keyword_len = max((len(ids) for ids in self.keyword_ids), default=1)
        self.start = None
        self.done = None

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.start is None:  # the first call sees exactly one new token
            self.start = input_ids.shape[1] - 1
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        generated = input_ids[:, self.start :].cpu()
        for b in range(generated.shape[0]):
            if not self.done[b]:
                self.done[b] = self._has_keyword(generated[b])
        return self.done.clone().to(input_ids.device)

    def _has_keyword(self, generated: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            n = len(ids)
            if 0 < n <= len(generated) and torch.equal(generated[-n:], ids):
                return True
        tail = generated[-(self.max_keyword_len + 3) :]
        text = self.tokenizer.decode(tail, skip_special_tokens=False)
        return any(keyword in text for keyword in self.keywords)
