"""Extract a trained vision module's high-level features: one ``[1, D]`` row per record, in file order.

Writes float32 ``[N, 1, D]`` with ``formats.save_features`` (atomic) and the sidecar ``<out>.json``
(checkpoint and records hashes, N, D). Same inputs (and batch size), same bytes: eval mode, fixed
order, deterministic torch algorithms. Nothing is written when any input is bad: records drawn with other
render settings than the module was trained on are refused. A module with a sequence encoder
(``vision_modules.sequence``) gives each record the feature that reads its night's neighbours.
:func:`night_features` does the same for one night's images in memory (``eeg-vlm stage``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from eeg_core.atomic import file_sha256
from eeg_core.errors import FormatError
from eeg_core.formats import FEATURE_DIM, check_render, features_sidecar, read_records, records_render, save_features
from eeg_core.layout import VISION_WEIGHTS
from eeg_core.options import add_options, option, options_from_args
from vision_modules.checkpoint import load_vision_module
from vision_modules.data import CachedImageDataset, decode_record_images, image_tensor, record_image_paths
from vision_modules.modules import memory_format
from vision_modules.registry import import_user_modules
from vision_modules.sequence import SEQUENCE_WEIGHTS, encode, night_keys


@torch.no_grad()
def image_outputs(model: torch.nn.Module, batches, device: str, progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-epoch features [N, D] and logits [N, C] of the image model, batch by batch (no context)."""
    feats, logits = [], []
    for images in tqdm(batches, desc=desc, disable=not progress):
        out = model(images.to(device, memory_format=memory_format(model)))
        feats.append(out.features.float().flatten(1).cpu())
        logits.append(out.logits.float().cpu())
    return torch.cat(feats), torch.cat(logits)


def _with_context(model: torch.nn.Module, feats: torch.Tensor, logits: torch.Tensor,
                  keys: Sequence[tuple[str, int]] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, 1, D], probabilities [N, C])``: through the sequence encoder when the module has one."""
    encoder = getattr(model, "sequence_encoder", None)
    if encoder is not None:
        feats, logits = encode(encoder.cpu(), feats, keys, model.context)
    return feats[:, None, :].numpy(), torch.softmax(logits, dim=1).numpy()


@torch.no_grad()
def record_outputs(
    model: torch.nn.Module, recs: Sequence[dict], paths: Sequence[Path], where: str, batch_size: int = 32,
    device: str = "cpu", workers: int = 0, progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, 1, D], probabilities [N, C])`` of the records' first images, in file order. Each image
    is decoded, checked and resized once, up front (``vision_modules.data.decode_record_images``)."""
    keys = night_keys(recs, where) if getattr(model, "sequence_encoder", None) is not None else None
    images = decode_record_images(paths, recs, where, model.input_size, progress=progress)
    dataset = CachedImageDataset(images, None, model.mean, model.std)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        feats, logits = image_outputs(model, (x for x, _ in loader), device, progress, "extract")
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return _with_context(model, feats, logits, keys)


@torch.no_grad()
def night_features(
    model: torch.nn.Module, images: Sequence[Image.Image], epochs: Sequence[int] | None = None,
    batch_size: int = 64, device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """One night's epoch images (in memory, drawn with the checkpoint's ``config["render"]``) ->
    ``(features float32 [N, 1, D], probabilities [N, C])``. ``epochs``: the images' epoch numbers (default
    0..N-1); a sequence encoder treats missing numbers as absent neighbours."""
    epochs = list(range(len(images))) if epochs is None else list(epochs)
    if len(epochs) != len(images):
        raise ValueError(f"{len(images)} images but {len(epochs)} epoch numbers")
    batches = (torch.stack([image_tensor(im, model.input_size, model.mean, model.std)
                            for im in images[s : s + batch_size]]) for s in range(0, len(images), batch_size))
    feats, logits = image_outputs(model, batches, device, False, "night")
    return _with_context(model, feats, logits, [("night", int(e)) for e in epochs])


def checkpoint_sha256(checkpoint: Path) -> str:
    """The module's content fingerprint: its weights, and its sequence encoder's when it has one."""
    parts = [file_sha256(checkpoint / VISION_WEIGHTS)]
    if (checkpoint / SEQUENCE_WEIGHTS).is_file():
        parts.append(file_sha256(checkpoint / SEQUENCE_WEIGHTS))
    return parts[0] if len(parts) == 1 else hashlib.sha256("".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class ExtractOptions:
    """``eeg-vlm vision extract``'s options besides the checkpoint, the records, the images and the output."""

    batch_size: int = option(32, "images per forward pass")
    device: str = option("cpu", "torch device")
    workers: int = option(0, "DataLoader worker processes")
    feature_dim: int | None = option(FEATURE_DIM, "feature size the projector expects (mm_hidden_size)",
                                     type=int)
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    import_modules: Sequence[str] = option((), "a Python module to import first: it registers your own vision module "
                                               "(repeatable)", flag="--import-module", action="append",
                                           metavar="MODULE")


def extract_features(
    checkpoint: str | os.PathLike,
    records: str | os.PathLike,
    image_folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    options: ExtractOptions | None = None,
    **overrides,
) -> np.ndarray:
    """Features ``[N, 1, D]`` (float32) of the records' first images; saved to ``out`` when given.
    ``options`` (:class:`ExtractOptions`, with ``overrides`` by keyword applied): ``feature_dim`` is the size the
    consumer expects (the projector's ``mm_hidden_size``; ``None`` skips the check); ``import_modules`` are
    imported first (they register a user's vision module; a checkpoint alone never makes an arbitrary module
    import)."""
    opts = replace(options or ExtractOptions(), **overrides)
    batch_size, device, workers, feature_dim, progress = (opts.batch_size, opts.device, opts.workers,
                                                          opts.feature_dim, opts.progress)
    import_user_modules(opts.import_modules)
    checkpoint, records = Path(checkpoint), Path(records)
    recs = read_records(records)
    paths = record_image_paths(recs, image_folder, str(records), check=False)  # decoded in record_outputs
    model, config = load_vision_module(checkpoint, device)
    if feature_dim is not None and int(config["feature_dim"]) != int(feature_dim):
        raise FormatError(
            f"{checkpoint}: the checkpoint gives {config['feature_dim']}-d features but {feature_dim} were asked"
        )
    check_render(config.get("render"), records_render(recs, records), str(checkpoint), str(records))
    features, _ = record_outputs(model, recs, paths, str(records), batch_size, device, workers, progress)
    if features.shape != (len(recs), 1, int(config["feature_dim"])):
        raise FormatError(f"{checkpoint}: arch {config['arch']!r} returned features {list(features.shape)}, expected [N, 1, D]")
    if not np.isfinite(features).all():
        raise FormatError(f"{checkpoint}: features hold NaN or inf (record #{int(np.flatnonzero(~np.isfinite(features).all(axis=(1, 2)))[0])})")
    if out is not None:
        save_features(
            out,
            features,
            sidecar={
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": checkpoint_sha256(checkpoint),
                "arch": config["arch"],
                "records": str(records),
                "records_sha256": file_sha256(records),
            },
        )
    return features


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="folder written by `eeg-vlm vision train`")
    p.add_argument("--records", required=True, help="train records (JSON array) or questions (JSONL)")
    p.add_argument("--image-folder", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="features file, e.g. sleep_data/train_high_level_features.npy")
    add_options(p, ExtractOptions)


def main_from_args(a: argparse.Namespace) -> int:
    features = extract_features(a.checkpoint, a.records, a.image_folder, a.out,
                                options_from_args(ExtractOptions, a))
    print(f"wrote {a.out}: {list(features.shape)} float32 (+ {features_sidecar(a.out)})")
    return 0
