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
from torch.utils.data import Dataset

from eeg_core import formats
from eeg_core.errors import FormatError
from eeg_core.stages import check_stage
from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.padding import pad_sequences

logger = logging.getLogger("llava.train")


def check_records(records: Sequence[dict], data_path: str | os.PathLike, image_folder: str | None,
                  progress: bool = True) -> None:
    """Every record checked before the first step: its turns (alternating human / gpt, at least one gpt reply),
    its ``<image>`` count against its images, its image paths (inside ``image_folder``), and every real image
    decoded in full (with a progress bar), so a corrupt file stops the run here, not at its batch."""
    from llava.train.preprocess import check_turns

    where = str(data_path)
    needed: dict[Path, str] = {}
    for i, rec in enumerate(records):
        rid = formats.record_id(rec)
        here = f"{where}: record {rid!r} (#{i})"
        conv = rec.get("conversations")
        if not isinstance(conv, list) or not conv or not all(
            isinstance(t, dict) and isinstance(t.get("value"), str) and t.get("from") in ("human", "gpt") for t in conv
        ):
            raise FormatError(f"{here}: 'conversations' must be a non-empty list of "
                              "{'from': 'human'|'gpt', 'value': str}")
        check_turns(conv, here)
        try:
            images = formats.record_images(rec)
        except FormatError as e:
            raise FormatError(f"{where}: {e} (#{i})") from None
        n_tokens = sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in conv)
        if n_tokens != len(images):
            raise FormatError(f"{here} has {n_tokens} {DEFAULT_IMAGE_TOKEN} tokens but {len(images)} images")
        if images and image_folder is None:
            raise FormatError(f"{here} names images but --image_folder is not given")
        for name in images:  # the placeholder too: its path must not leave the folder either
            path = formats.image_path(image_folder, name, here)
            if name in formats.real_images(rec):
                needed.setdefault(path, here)
    formats.decode_images([(path, here) for path, here in needed.items()], desc="checking images", progress=progress)


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
    def stage_labels(self) -> list[str]:
        """Every record's ``label`` (for ``--class_balance``); a record without a stage label is refused."""
        return [check_stage(rec.get("label"), f"{self.data_path}: record {formats.record_id(rec)!r} (#{i}) "
                                    "(--class_balance needs a 'label')") for i, rec in enumerate(self.records)]

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
            item["image"] = process_images(pil, self.image_processor, self)  # reads self.image_aspect_ratio
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
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, attention_mask = pad_sequences([it["input_ids"] for it in items], pad_id, "right")
        labels, _ = pad_sequences([it["labels"] for it in items], IGNORE_INDEX, "right")
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        images = [it["image"] for it in items if "image" in it]
        if images:
            batch["images"] = torch.cat(images, dim=0)
        feats = [it.get("high_level_feature") for it in items]
        if any(f is not None for f in feats):
            batch["high_level_features"] = feats
        return batch


def load_train_features(data_args, records: list[dict], mm_hidden_size: int | None = None) -> np.ndarray | None:
    """The features of records with a placeholder image, checked against the records (row per record, no extra
    rows unless named by ``feature_index``, the sidecar's records hash); None when no record has a placeholder."""
    if not any(formats.has_placeholder(r) for r in records):
        return None
    path = data_args.high_level_features or formats.default_features_path(data_args.data_path, train=True)
    features = formats.load_features(path, records, dim=mm_hidden_size, records_path=data_args.data_path)
    logger.info("high-level features %s: %s rows of %s for %d records", path, features.shape[0],
                list(features.shape[1:]), len(records))
    return features


def make_supervised_data_module(tokenizer, data_args, model_args, training_args, mm_hidden_size: int | None,
                                records: list[dict] | None = None, features: np.ndarray | None = None) -> dict:
    """Read and check the records (unless given, already checked) and the features (unless given, already
    checked), build dataset + collator."""
    if records is None:
        records = formats.read_records(data_args.data_path)
        check_records(records, data_args.data_path, data_args.image_folder)
    if features is None:
        features = load_train_features(data_args, records, mm_hidden_size)
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
