"""Records -> an image dataset for a vision module (train records or eval questions, in file order).

Each record's *first* image is read (in ``[img, img]`` the second is the feature placeholder), resized
to the module's ``input_size`` and normalised with its mean/std. Every image is checked up front
(inside the image folder, decoded in full) so that bad input fails before any work, with one line naming
file and record.

Training and extraction decode each image once: :func:`decode_record_images` checks every image and keeps
it, resized, as one uint8 tensor ``[N, 3, H, W]`` for the run (in memory, or memory-mapped from an unlinked
temporary file above :data:`MEMMAP_BYTES`); :class:`CachedImageDataset` only normalises rows of it, so no
epoch opens a PNG. The cache lives as long as the run and is filled from the files it checks, so it cannot
go stale. :class:`EEGImageDataset` (decode at every access) gives the same tensors bit for bit.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from eeg_core.errors import FormatError
from eeg_core.formats import decode_images, image_path, record_id, record_images
from eeg_core.stages import STAGE_INDEX, check_stage


MEMMAP_BYTES = 1 << 30  # a decoded set larger than 1 GiB is memory-mapped (a temporary file) instead of held in RAM


def record_image_paths(records: Sequence[dict], image_folder: str | os.PathLike, where: str,
                       progress: bool = True, check: bool = True) -> list[Path]:
    """The first image of every record: inside ``image_folder`` (absolute and ``..`` paths are refused), and
    decoded in full up front (with a progress bar), so a corrupt file stops the run before any work.
    ``check=False`` leaves the decoding to :func:`decode_record_images` (which checks the same way)."""
    paths: list[Path] = []
    for i, rec in enumerate(records):
        images = record_images(rec)
        here = f"{where}: record {record_id(rec)!r} (#{i})"
        if not images:
            raise FormatError(f"{here} has no image")
        for name in images:
            image_path(image_folder, name, here)
        paths.append(image_path(image_folder, images[0], here))
    if check:
        decode_images(_named(paths, records, where), progress=progress)
    return paths


def _named(paths: Sequence[Path], records: Sequence[dict] | None, where: str) -> list[tuple[Path, str]]:
    """``(path, "where: record 'id' (#i)")`` pairs, what :func:`decode_images` names a bad image by."""
    if records is None:
        return [(path, f"{where}: image #{i}") for i, path in enumerate(paths)]
    return [(path, f"{where}: record {record_id(rec)!r} (#{i})") for i, (path, rec) in enumerate(zip(paths, records))]


def _empty_images(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor of ``shape``: in memory, or above :data:`MEMMAP_BYTES` backed by a temporary file that is
    unlinked at once (nothing is left on disk, even after a crash; DataLoader workers share the mapping)."""
    if int(np.prod(shape)) <= MEMMAP_BYTES:
        return torch.empty(shape, dtype=torch.uint8)
    with tempfile.TemporaryFile(prefix="eeg-vlm-images-") as f:
        return torch.from_numpy(np.memmap(f, dtype=np.uint8, mode="w+", shape=shape))


def decode_record_images(paths: Sequence[Path], records: Sequence[dict] | None, where: str, input_size: Sequence[int],
                         progress: bool = True) -> torch.Tensor:
    """Every image decoded once, checked as :func:`record_image_paths` checks (one-line FormatError naming the
    file and the record) and resized as :func:`image_uint8` resizes: uint8 ``[N, 3, H, W]``. The resizes run
    on the decoding threads, one torch thread each (the main thread's setting is restored afterwards)."""
    size = [int(input_size[-2]), int(input_size[-1])]
    images = _empty_images((len(paths), 3, *size))

    def keep(i: int, im: Image.Image) -> None:
        images[i] = image_uint8(im, size)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the decoding threads start with one torch thread each: no oversubscribed pool
    try:
        decode_images(_named(paths, records, where), progress=progress, keep=keep)
    finally:
        torch.set_num_threads(threads)
    return images


def record_labels(records: Sequence[dict], where: str) -> list[int]:
    """Stage index (``formats.STAGES`` order) of every record's ``label``."""
    return [STAGE_INDEX[check_stage(rec.get("label"), f"{where}: record {record_id(rec)!r} (#{i})")] for i, rec in enumerate(records)]


def image_uint8(im: Image.Image, size: Sequence[int]) -> torch.Tensor:
    """An epoch image as uint8 ``[3, H, W]``: RGB, resized (bilinear, antialiased)."""
    x = TF.pil_to_tensor(im.convert("RGB"))
    return TF.resize(x, [int(size[-2]), int(size[-1])], interpolation=InterpolationMode.BILINEAR, antialias=True)


def normalize_images(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 in the module's normalisation (element by element: the same bits for
    one image or a batch)."""
    return TF.normalize(x.float().div_(255.0), list(mean), list(std))


def image_tensor(im: Image.Image, size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """An epoch image as the module's input ``[3, H, W]``: RGB, resized (bilinear, antialiased), normalised."""
    return normalize_images(image_uint8(im, size), mean, std)


class EEGImageDataset(Dataset):
    """``(image tensor [3, H, W], label)``, the PNG decoded at every access; label is -1 when the records carry
    none. The reference that :class:`CachedImageDataset` matches bit for bit (and the benchmarks' old path)."""

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


class CachedImageDataset(Dataset):
    """``(image tensor [3, H, W], label)`` from :func:`decode_record_images`'s uint8 tensor: only the
    normalisation runs per access (no file, no decoding, no resize)."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | None, mean: Sequence[float],
                 std: Sequence[float]):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [N, 3, H, W] images, got {images.dtype} {list(images.shape)}")
        self.images = images
        self.labels = list(labels) if labels is not None else [-1] * len(images)
        if len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return normalize_images(self.images[i], self.mean, self.std), self.labels[i]
