"""Records -> an image dataset for a vision module (train records or eval questions, in file order).

Each record's *first* image is read (in ``[img, img]`` the second is the feature placeholder), resized
to the module's ``input_size`` and normalised with its mean/std. Every image is checked up front
(inside the image folder, decoded in full) so that bad input fails before any work, with one line naming
file and record.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from eeg_core.errors import FormatError
from eeg_core.formats import decode_images, image_path, record_id, record_images
from eeg_core.stages import STAGE_INDEX, check_stage


def record_image_paths(records: Sequence[dict], image_folder: str | os.PathLike, where: str,
                       progress: bool = True) -> list[Path]:
    """The first image of every record: inside ``image_folder`` (absolute and ``..`` paths are refused), and
    decoded in full up front (with a progress bar), so a corrupt file stops the run before any work."""
    paths: list[Path] = []
    for i, rec in enumerate(records):
        images = record_images(rec)
        here = f"{where}: record {record_id(rec)!r} (#{i})"
        if not images:
            raise FormatError(f"{here} has no image")
        for name in images:
            image_path(image_folder, name, here)
        paths.append(image_path(image_folder, images[0], here))
    decode_images([(path, f"{where}: record {record_id(rec)!r} (#{i})") for i, (path, rec) in
                   enumerate(zip(paths, records))], progress=progress)
    return paths


def record_labels(records: Sequence[dict], where: str) -> list[int]:
    """Stage index (``formats.STAGES`` order) of every record's ``label``."""
    return [STAGE_INDEX[check_stage(rec.get("label"), f"{where}: record {record_id(rec)!r} (#{i})")] for i, rec in enumerate(records)]


def image_tensor(im: Image.Image, size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """An epoch image as the module's input ``[3, H, W]``: RGB, resized (bilinear, antialiased), normalised."""
    x = TF.pil_to_tensor(im.convert("RGB"))
    x = TF.resize(x, [int(size[-2]), int(size[-1])], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.normalize(x.float().div_(255.0), list(mean), list(std))


class EEGImageDataset(Dataset):
    """``(image tensor [3, H, W], label)``; label is -1 when the records carry none (extraction)."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int] | None,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        self.paths = list(paths)
        self.labels = list(labels) if labels is not None else [-1] * len(self.paths)
        self.size = [int(input_size[-2]), int(input_size[-1])]
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                x = image_tensor(im, self.size, self.mean, self.std)
        except (UnidentifiedImageError, OSError) as e:
            raise FormatError(f"{path}: not a readable image ({e})") from None
        return x, self.labels[i]
