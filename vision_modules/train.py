"""Train a specialized vision module on EEG epoch images to predict the sleep stage.

Labels come from the records' ``label`` (W N1 N2 N3 REM). The loss is weighted by inverse class
frequency (N1 is rare in real nights). Validation holds out whole subjects when every record carries
``subject`` (and there are at least two), otherwise a stratified random part of the records. The
checkpoint with the best validation macro-F1 is kept (``model.safetensors`` + ``config.json``);
``resume.pt`` holds the last epoch's full state for ``--resume``. The records' render settings go into the
checkpoint, so extraction refuses images drawn another way. ``--context K`` then trains a temporal head on
the best module's features (``vision_modules.context``). Each image is decoded, checked and resized once, up
front, into a uint8 tensor (``vision_modules.data.decode_record_images``); the epochs only normalise its rows.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from eeg_core.atomic import atomic_path
from eeg_core.errors import FormatError
from eeg_core.formats import read_records, records_render
from eeg_core.stages import STAGES
from vision_modules.checkpoint import (
    CONFIG_NAME,
    load_vision_module,
    read_config,
    save_checkpoint,
)
from vision_modules.context import neighbour_index, night_keys, train_head
from vision_modules.data import CachedImageDataset, decode_record_images, record_image_paths, record_labels
from vision_modules.modules import TimmVisionModule, memory_format
from vision_modules.registry import (
    builder_import_path,
    create_vision_module,
    import_user_modules,
)

RESUME_NAME = "resume.pt"


def split_train_val(records: Sequence[dict], labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Indices of the train and validation records, and how they were split."""
    idx = np.arange(len(records))
    if val_fraction <= 0:
        return idx.tolist(), [], "none"
    subjects = [rec.get("subject") for rec in records]
    if all(s is not None for s in subjects) and len(set(map(str, subjects))) >= 2:
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train, val = next(splitter.split(idx, groups=[str(s) for s in subjects]))
        return sorted(train.tolist()), sorted(val.tolist()), "subject"
    counts = np.bincount(labels, minlength=len(STAGES))
    stratify = labels if counts[counts > 0].min() >= 2 else None
    n_val = max(1, round(val_fraction * len(records)))
    if n_val >= len(records):
        raise FormatError(f"--val-fraction {val_fraction} leaves no training records out of {len(records)}")
    if stratify is not None and n_val < int((counts > 0).sum()):
        stratify = None  # too few validation records to hold one of each class
    train, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return sorted(train.tolist()), sorted(val.tolist()), "records"


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in labels or predictions) of the module's logits."""
    model.eval()
    y_true, y_pred = [], []
    for images, labels in loader:
        logits = model(images.to(device, memory_format=memory_format(model))).logits
        y_pred.append(logits.argmax(1).cpu())
        y_true.append(labels)
    y_true, y_pred = torch.cat(y_true).numpy(), torch.cat(y_pred).numpy()
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "n": int(len(y_true)),
    }


@dataclass(frozen=True)
class VisionTrainConfig:
    """The training options (``eeg-vlm vision train``'s flags besides the data and the output folder)."""

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: Sequence[int] | int | None = None  # (H, W) or N for N x N; None: the module's default
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    resume: bool = False
    pretrained: str | os.PathLike | bool | None = None
    feature_dim: int = 1024
    tap: int | None = None
    context: int = 0
    progress: bool = True

    def module_kwargs(self) -> dict[str, Any]:
        """The builder's keyword arguments the user set (``image_size`` as [H, W], ``tap``)."""
        kwargs: dict[str, Any] = {}
        if self.image_size is not None:
            size = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
            kwargs["image_size"] = [int(x) for x in size]
        if self.tap is not None:
            kwargs["tap"] = int(self.tap)
        return kwargs


@dataclass
class TrainingData:
    """The checked training records, their image paths (not yet decoded) and the train / validation split."""

    records: list[dict]
    labels: list[int]
    render: dict | None
    keys: list | None  # night keys (only with a context head)
    paths: list
    train_idx: list[int]
    val_idx: list[int]
    split: str  # "subject" | "records" | "none"


def load_training_data(records_path: Path, image_folder: str | os.PathLike, opts: VisionTrainConfig) -> TrainingData:
    """Read and check the records (labels, render settings, nights for ``context``, image paths) and split them;
    the images are decoded and checked once the module's input size is known (:func:`image_dataset`)."""
    recs = read_records(records_path)
    labels = record_labels(recs, str(records_path))
    render = records_render(recs, records_path)
    keys = night_keys(recs, str(records_path)) if opts.context > 0 else None
    paths = record_image_paths(recs, image_folder, str(records_path), check=False)
    train_idx, val_idx, split = split_train_val(recs, labels, opts.val_fraction, opts.seed)
    return TrainingData(recs, labels, render, keys, paths, train_idx, val_idx, split)


def load_resume_state(out: Path, arch: str, feature_dim: int, module_kwargs: dict[str, Any]) -> dict:
    """``out/resume.pt``, refused unless it is a plain tensor file of the same module (arch, feature, kwargs)."""
    resume_path = out / RESUME_NAME
    if not resume_path.is_file():
        raise FormatError(f"{resume_path}: nothing to resume from")
    try:
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a hostile or foreign pickle, a truncated file
        detail = next((line.strip() for line in reversed(str(e).splitlines()) if "GLOBAL" in line or
                       "Unsupported" in line), str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise FormatError(f"{resume_path}: refused: not a plain tensor file that loads without running code "
                          f"({detail[:160]})") from None
    saved = read_config(out)
    saved = {**saved, **saved.get("module_kwargs", {})}
    for key, value in {"arch": arch, "feature_dim": feature_dim, **module_kwargs}.items():
        if saved.get(key) != value:
            raise FormatError(f"{out / CONFIG_NAME}: --resume with {key}={value!r} but the checkpoint has {saved.get(key)!r}")
    return state


def build_model(arch: str, opts: VisionTrainConfig, module_kwargs: dict[str, Any], pretrained: bool,
                device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The seeded module on ``device`` (backbone weights only when ``pretrained``: not on resume), and the
    builder kwargs to record (a timm module's defaults pinned: later defaults may change)."""
    torch.manual_seed(opts.seed)
    model = create_vision_module(
        arch, feature_dim=opts.feature_dim, num_classes=len(STAGES),
        pretrained=(opts.pretrained or False) if pretrained else False, **module_kwargs
    )
    model.to(device, memory_format=memory_format(model))
    if isinstance(model, TimmVisionModule):
        module_kwargs = {"image_size": list(model.input_size[1:]), "tap": model.tap}
    return model, module_kwargs


def image_dataset(data: TrainingData, where: str, model: nn.Module, progress: bool) -> Dataset:
    """The records' images at the module's input size, each decoded and checked once (before any training),
    and their labels."""
    images = decode_record_images(data.paths, data.records, where, model.input_size, progress=progress)
    return CachedImageDataset(images, data.labels, model.mean, model.std)


def make_loaders(dataset: Dataset, data: TrainingData, opts: VisionTrainConfig
                 ) -> tuple[DataLoader, DataLoader | None, torch.Generator]:
    """The shuffled (seeded) train loader, the validation loader (None without a split) and the generator."""
    generator = torch.Generator().manual_seed(opts.seed)
    train_loader = DataLoader(
        Subset(dataset, data.train_idx), batch_size=opts.batch_size, shuffle=True, generator=generator,
        num_workers=opts.workers, drop_last=len(data.train_idx) > opts.batch_size, persistent_workers=opts.workers > 0,
    )
    val_loader = (DataLoader(Subset(dataset, data.val_idx), batch_size=opts.batch_size, num_workers=opts.workers)
                  if data.val_idx else None)
    return train_loader, val_loader, generator


def class_weights(train_labels: np.ndarray, n_classes: int = len(STAGES)) -> np.ndarray:
    """Inverse class frequency ("balanced") of the classes present; 0 for the absent ones."""
    present = np.unique(train_labels)
    weights = np.zeros(n_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=train_labels)
    return weights


def class_weighted_loss(train_labels: np.ndarray, device: torch.device) -> nn.CrossEntropyLoss:
    return nn.CrossEntropyLoss(weight=torch.from_numpy(class_weights(train_labels)).to(device))


def make_optimizer(model: nn.Module, opts: VisionTrainConfig, steps_per_epoch: int):
    """AdamW and its schedule: a linear warm-up (a twentieth of the steps, at most one epoch), then cosine."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    total_steps = max(1, opts.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, max(1, total_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    return optimizer, scheduler


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer, scheduler,
                    device: torch.device, desc: str = "", progress: bool = False) -> float:
    """One pass over ``loader``; returns the mean training loss per record."""
    model.train()
    loss_sum, seen = 0.0, 0
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for images, targets in bar:
        images = images.to(device, memory_format=memory_format(model))
        targets = targets.to(device)
        loss = criterion(model(images).logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(targets)
        seen += len(targets)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
    return loss_sum / max(seen, 1)


def is_better(metrics: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Best so far by validation macro-F1, then accuracy (ties go to the later epoch; no split: every epoch)."""
    return best is None or (metrics["macro_f1"] or 0.0, metrics["accuracy"] or 0.0) >= (
        best["macro_f1"] or 0.0, best["accuracy"] or 0.0)


def save_resume(path: Path, model: nn.Module, optimizer, scheduler, generator: torch.Generator, epoch: int,
                best: dict | None, history: list[dict]) -> None:
    """The last epoch's full state (atomically), what ``--resume`` continues from."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(), "epoch": epoch, "best": best, "history": history}, tmp)


def recorded_args(arch: str, records, image_folder, out, opts: VisionTrainConfig) -> dict[str, Any]:
    """The call as recorded in config.json (``args``): paths as strings."""
    args = {"arch": arch, "records": records, "image_folder": image_folder, "out": out,
            **{f.name: getattr(opts, f.name) for f in fields(opts)}}
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in args.items()}


def checkpoint_config(arch: str, opts: VisionTrainConfig, model: nn.Module, module_kwargs: dict[str, Any],
                      data: TrainingData, args: dict[str, Any]) -> dict[str, Any]:
    """config.json beside the weights (the metrics and history are added at each save)."""
    return {
        "arch": arch,
        "import_path": builder_import_path(arch),
        "feature_dim": int(opts.feature_dim),
        "num_classes": len(STAGES),
        "classes": list(STAGES),
        "module_kwargs": module_kwargs,
        "input_size": list(model.input_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "args": args,
        "split": {"by": data.split, "n_train": len(data.train_idx), "n_val": len(data.val_idx)},
        "render": data.render,
    }


def train_vision_module(
    arch: str,
    records: str | os.PathLike,
    image_folder: str | os.PathLike,
    out: str | os.PathLike,
    options: VisionTrainConfig | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train ``arch`` and save the best checkpoint in ``out``; returns its validation metrics
    (``accuracy``, ``macro_f1``, ``n``, ``epoch``; accuracy is None without a validation split).

    The options are ``options`` (a :class:`VisionTrainConfig`) with ``overrides`` (its fields by keyword,
    e.g. ``epochs=3``) applied."""
    opts = replace(options or VisionTrainConfig(), **overrides)
    args = recorded_args(arch, records, image_folder, out, opts)
    records_path, out = Path(records), Path(out)
    module_kwargs = opts.module_kwargs()
    device = torch.device(opts.device)

    data = load_training_data(records_path, image_folder, opts)
    state = load_resume_state(out, arch, opts.feature_dim, module_kwargs) if opts.resume else None
    model, module_kwargs = build_model(arch, opts, module_kwargs, pretrained=state is None, device=device)
    dataset = image_dataset(data, str(records_path), model, opts.progress)
    train_loader, val_loader, generator = make_loaders(dataset, data, opts)
    criterion = class_weighted_loss(np.asarray(data.labels)[data.train_idx], device)
    optimizer, scheduler = make_optimizer(model, opts, len(train_loader))

    start_epoch, best, history = 0, None, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]

    config = checkpoint_config(arch, opts, model, module_kwargs, data, args)
    epochs = opts.epochs
    print(f"vision train: {arch}, {len(data.train_idx)} train / {len(data.val_idx)} val records (split by {data.split}), "
          f"input {tuple(model.input_size)}, feature {opts.feature_dim}, {epochs} epochs")
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        train_loss = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, device,
                                     f"epoch {epoch + 1}/{epochs}", opts.progress)
        metrics = evaluate(model, val_loader, device) if val_loader is not None else {"accuracy": None, "macro_f1": None, "n": 0}
        metrics.update(epoch=epoch + 1, train_loss=train_loss, seconds=round(time.perf_counter() - t0, 1))
        history.append(metrics)
        better = is_better(metrics, best)
        if better:
            best = metrics
            save_checkpoint(out, model, {**config, "val_metrics": best, "history": history})
        save_resume(out / RESUME_NAME, model, optimizer, scheduler, generator, epoch, best, history)
        val = "" if metrics["accuracy"] is None else f", val acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        tqdm.write(f"epoch {epoch + 1}/{epochs}: train loss {metrics['train_loss']:.4f}{val} "
                   f"({metrics['seconds']:.0f}s){' *best*' if better else ''}")
    if best is None:
        raise FormatError(f"{out}: nothing trained (epochs={epochs}, already done {start_epoch})")
    if opts.context > 0:
        best = {**best, "context": add_context_head(out, dataset, np.asarray(data.labels), data.keys, data.train_idx,
                                                    data.val_idx, opts.context, opts.batch_size, opts.device,
                                                    opts.seed, opts.progress)}
    print(f"best checkpoint: {out} (epoch {best['epoch']})")
    return best


def add_context_head(out: Path, dataset: Dataset, labels: np.ndarray, keys, train_idx, val_idx, k: int,
                     batch_size: int, device: str, seed: int, progress: bool) -> dict[str, Any]:
    """Train the temporal head on the best module's features of every record and save it beside the module."""
    from vision_modules.extract import image_outputs

    model, config = load_vision_module(out, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    features, _ = image_outputs(model, (x for x, _ in loader), device, progress, "context features")
    head, metrics = train_head(features, labels, neighbour_index(keys, k), train_idx, val_idx, k, len(STAGES), seed=seed)
    save_checkpoint(out, model, {**config, "context": {"k": k, "hidden": head.hidden,
                                                        "val_metrics": metrics}}, context_head=head)
    val = "" if metrics["accuracy"] is None else f": val acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
    print(f"context head (k={k}, epochs i-{k}..i+{k}){val}")
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet18", help="registered name (resnet18, convnext_base, ...) or timm:<timm model name>")
    p.add_argument("--records", required=True, help="train records (JSON array) or questions (JSONL) with a 'label'")
    p.add_argument("--image-folder", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--image-size", type=int, nargs="+", metavar="N", help="H W (or one N for N x N); default 64 192")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out part (whole subjects when records carry 'subject')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    p.add_argument("--pretrained", metavar="PATH", help="local backbone weights (file or model folder), or 'hub' for timm's hub weights; default random init")
    p.add_argument("--feature-dim", type=int, default=1024, help="size of the high-level feature (the projector's mm_hidden_size)")
    p.add_argument("--tap", type=int, help="backbone feature stage to tap (timm feature_info index; default -2)")
    p.add_argument("--context", type=int, default=0, metavar="K",
                   help="then train a temporal head: each epoch's feature sees epochs i-K..i+K of its night (default 0: none)")
    p.add_argument("--import-module", action="append", default=[], metavar="MODULE",
                   help="a Python module to import first: it registers your own vision module (repeatable)")
    p.add_argument("--no-progress", action="store_true")


def main_from_args(a: argparse.Namespace) -> int:
    import_user_modules(a.import_module)
    if a.image_size is not None and len(a.image_size) not in (1, 2):
        raise FormatError("--image-size takes H W or a single N")
    options = VisionTrainConfig(
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
        image_size=(a.image_size * 2)[:2] if a.image_size else None, val_fraction=a.val_fraction, seed=a.seed,
        device=a.device, workers=a.workers, resume=a.resume, pretrained=True if a.pretrained == "hub" else a.pretrained,
        feature_dim=a.feature_dim, tap=a.tap, context=a.context, progress=not a.no_progress,
    )
    train_vision_module(a.arch, a.records, a.image_folder, a.out, options)
    return 0
