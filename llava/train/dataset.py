"""Train records -> model inputs: checked up front, read lazily, batched by the collator.

A record's ``image`` is a string or a list. ``[Image1, Image2]`` marks Image2 as a placeholder: it is never
opened nor run through CLIP; its slot is filled from the features row of that record (``feature_row``: its
position in the records file, or its ``feature_index``), so any batch size, sampler or order gets the right row.

Item: ``dict(input_ids, labels, image=[n_real, 3, H, W] (if any), high_level_feature=[1, D] (if any))``.
Batch: ``input_ids``/``labels``/``attention_mask`` right-padded, ``images`` [N_real, 3, H, W] (the real images of
the batch in order), ``high_level_features`` a list of length B holding [1, D] tensors or None.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from eeg_vlm import formats
from eeg_vlm.formats import FormatError
from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX

logger = logging.getLogger("llava.train")


def check_records(records: Sequence[dict], data_path: str | os.PathLike, image_folder: str | None) -> None:
    """Structure of each record, its ``<image>`` count against its images, and every real image readable.

    Image files are checked by opening their headers (``PIL.Image.verify``), not by decoding them.
    """
    where = str(data_path)
    needed: dict[str, tuple[int, dict]] = {}
    for i, rec in enumerate(records):
        rid = formats.record_id(rec)
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv or not all(
            isinstance(t, dict) and isinstance(t.get("value"), str) and t.get("from") in ("human", "gpt") for t in conv
        ):
            raise FormatError(f"{where}: record {rid!r} (#{i}): 'conversations' must be a non-empty list of "
                              "{'from': 'human'|'gpt', 'value': str}")
        try:
            images = formats.record_images(rec)
        except FormatError as e:
            raise FormatError(f"{where}: {e} (#{i})") from None
        n_tokens = sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in conv)
        if n_tokens != len(images):
            raise FormatError(f"{where}: record {rid!r} (#{i}) has {n_tokens} {DEFAULT_IMAGE_TOKEN} tokens "
                              f"but {len(images)} images")
        if images and image_folder is None:
            raise FormatError(f"{where}: record {rid!r} (#{i}) names images but --image_folder is not given")
        for name in formats.real_images(rec):
            needed.setdefault(name, (i, rec))
    for name, (i, rec) in tqdm(needed.items(), desc="checking images", unit="img", disable=len(needed) < 2000):
        path = Path(image_folder) / name
        try:
            with Image.open(path) as img:
                img.verify()
        except FileNotFoundError:
            raise FormatError(f"{path}: image not found (record {formats.record_id(rec)!r}, #{i} of {where})") from None
        except Exception as e:
            raise FormatError(f"{path}: unreadable image ({type(e).__name__}: {e}) "
                              f"(record {formats.record_id(rec)!r}, #{i} of {where})") from None


def _word_count(record: dict) -> int:
    return sum(len(turn["value"].split()) for turn in record["conversations"])


class SupervisedDataset(Dataset):
    """LLaVA train records (lazy: text tokenised and images read per item)."""

    def __init__(
        self,
        records: list[dict],
        tokenizer,
        version: str,
        image_folder: str | None,
        image_processor=None,
        image_aspect_ratio: str = "square",
        features: np.ndarray | None = None,
        data_path: str | os.PathLike = "",
    ):
        self.records = records
        self.tokenizer = tokenizer
        self.version = version
        self.image_folder = image_folder
        self.image_processor = image_processor
        self.image_aspect_ratio = image_aspect_ratio
        self.features = features
        self.data_path = str(data_path)
        self.rows = [
            formats.feature_row(rec, i, str(data_path)) if formats.has_placeholder(rec) else None
            for i, rec in enumerate(records)
        ]
        if features is None and any(r is not None for r in self.rows):
            raise FormatError(f"{data_path}: records have a placeholder image but no features were given")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> list[int]:
        """Rough length of each record (words + 128 per image), as LLaVA's length grouping uses."""
        return [_word_count(rec) + 128 * len(formats.record_images(rec)) for rec in self.records]

    @property
    def modality_lengths(self) -> list[int]:
        """Word counts, positive for records with images and negative for text-only ones."""
        return [_word_count(rec) if formats.record_images(rec) else -_word_count(rec) for rec in self.records]

    def __getitem__(self, i: int) -> dict:
        from llava.mm_utils import load_image, process_images
        from llava.train.preprocess import preprocess

        rec = self.records[i]
        names = formats.real_images(rec)
        text = preprocess([rec["conversations"]], self.tokenizer, has_image=bool(formats.record_images(rec)),
                          version=self.version, where=f"{self.data_path}: record {formats.record_id(rec)!r}")
        item = dict(input_ids=text["input_ids"][0], labels=text["labels"][0])
        if names:
            pil = [load_image(os.path.join(self.image_folder, n)) for n in names]
            item["image"] = process_images(pil, self.image_processor, self.image_aspect_ratio)
        if self.rows[i] is not None:
            item["high_level_feature"] = torch.from_numpy(np.array(self.features[self.rows[i]], dtype=np.float32))
        return item


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads text, concatenates the real images, lists the features per sample.

    No truncation here: cutting text could drop an ``<image>`` token and shift every image after it; the model
    truncates after the splice, to ``tokenizer_model_max_length``.
    """

    tokenizer: object

    def __call__(self, items: Sequence[dict]) -> dict:
        ids = [it["input_ids"] for it in items]
        labels = [it["labels"] for it in items]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
        labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
        attention_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for b, x in enumerate(ids):
            attention_mask[b, : len(x)] = True
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        images = [it["image"] for it in items if "image" in it]
        if images:
            batch["images"] = torch.cat(images, dim=0)
        feats = [it.get("high_level_feature") for it in items]
        if any(f is not None for f in feats):
            batch["high_level_features"] = feats
        return batch


def make_supervised_data_module(tokenizer, data_args, model_args, training_args, mm_hidden_size: int | None,
                                records: list[dict] | None = None) -> dict:
    """Read and check the records (unless given, already checked) and the features, build dataset + collator."""
    if records is None:
        records = formats.read_records(data_args.data_path)
        check_records(records, data_args.data_path, data_args.image_folder)
    features = None
    if any(formats.has_placeholder(r) for r in records):
        path = data_args.high_level_features or formats.default_features_path(data_args.data_path, train=True)
        features = formats.load_features(path, records, dim=mm_hidden_size, records_path=data_args.data_path)
        logger.info("high-level features %s: %s rows of %s for %d records", path, features.shape[0],
                    list(features.shape[1:]), len(records))
    dataset = SupervisedDataset(
        records,
        tokenizer,
        version=model_args.version,
        image_folder=data_args.image_folder,
        image_processor=getattr(data_args, "image_processor", None),
        image_aspect_ratio=data_args.image_aspect_ratio,
        features=features,
        data_path=data_args.data_path,
    )
    collator = DataCollatorForSupervisedDataset(tokenizer)
    return dict(train_dataset=dataset, eval_dataset=None, data_collator=collator)
