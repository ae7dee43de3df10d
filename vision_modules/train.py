"""Train a specialized vision module on EEG epoch images to predict the sleep stage.

Labels come from the records' ``label`` (W N1 N2 N3 REM). The loss is weighted by inverse class
frequency (N1 is rare in real nights). Validation holds out whole subjects when every record carries
``subject`` (and there are at least two), otherwise a stratified random part of the records. The
checkpoint with the best validation macro-F1 is kept (``model.safetensors`` + ``config.json``);
``resume.pt`` holds the last epoch's full state for ``--resume``. The records' render settings go into the
checkpoint, so extraction refuses images drawn another way. ``--context K`` then trains a temporal head on
the best module's features (``vision_modules.context``).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from eeg_core.atomic import atomic_path
from eeg_core.errors import FormatError
from eeg_core.formats import read_records, records_render
from eeg_core.stages import STAGES
from vision_modules.checkpoint import CONFIG_NAME, load_vision_module, read_config, save_checkpoint
from vision_modules.context import neighbour_index, night_keys, train_head
from vision_modules.data import EEGImageDataset, record_image_paths, record_labels
from vision_modules.modules import TimmVisionModule, memory_format
from vision_modules.registry import builder_import_path, create_vision_module, import_user_modules

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


def train_vision_module(
    arch: str,
    records: str | os.PathLike,
    image_folder: str | os.PathLike,
    out: str | os.PathLike,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    image_size: Sequence[int] | int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 0,
    resume: bool = False,
    pretrained: str | bool | None = None,
    feature_dim: int = 1024,
    tap: int | None = None,
    context: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``arch`` and save the best checkpoint in ``out``; returns its validation metrics
    (``accuracy``, ``macro_f1``, ``n``, ``epoch``; accuracy is None without a validation split)."""
    args = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in locals().items()}  # recorded in config.json
    records_path, out = Path(records), Path(out)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    module_kwargs: dict[str, Any] = {}
    if image_size is not None:
        module_kwargs["image_size"] = [int(x) for x in image_size]
    if tap is not None:
        module_kwargs["tap"] = int(tap)
    device_ = torch.device(device)

    recs = read_records(records_path)
    labels = record_labels(recs, str(records_path))
    render = records_render(recs, records_path)
    keys = night_keys(recs, str(records_path)) if context > 0 else None
    paths = record_image_paths(recs, image_folder, str(records_path), progress=progress)
    train_idx, val_idx, split = split_train_val(recs, labels, val_fraction, seed)

    resume_path = out / RESUME_NAME
    state = None
    if resume:
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

    torch.manual_seed(seed)
    model = create_vision_module(
        arch, feature_dim=feature_dim, num_classes=len(STAGES), pretrained=(pretrained or False) if state is None else False, **module_kwargs
    )
    model.to(device_, memory_format=memory_format(model))
    if isinstance(model, TimmVisionModule):  # pin the defaults in the checkpoint: later defaults may change
        module_kwargs = {"image_size": list(model.input_size[1:]), "tap": model.tap}

    dataset = EEGImageDataset(paths, labels, model.input_size, model.mean, model.std)
    train_labels = np.asarray(labels)[train_idx]
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        Subset(dataset, train_idx), batch_size=batch_size, shuffle=True, generator=generator,
        num_workers=workers, drop_last=len(train_idx) > batch_size, persistent_workers=workers > 0,
    )
    val_loader = DataLoader(Subset(dataset, val_idx), batch_size=batch_size, num_workers=workers) if val_idx else None

    present = np.unique(train_labels)
    weights = np.zeros(len(STAGES), dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=train_labels)
    criterion = nn.CrossEntropyLoss(weight=torch.from_numpy(weights).to(device_))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = max(1, epochs * len(train_loader))
    warmup = min(len(train_loader), max(1, total_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )

    start_epoch, best, history = 0, None, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]

    config = {
        "arch": arch,
        "import_path": builder_import_path(arch),
        "feature_dim": int(feature_dim),
        "num_classes": len(STAGES),
        "classes": list(STAGES),
        "module_kwargs": module_kwargs,
        "input_size": list(model.input_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "args": args,
        "split": {"by": split, "n_train": len(train_idx), "n_val": len(val_idx)},
        "render": render,
    }
    print(f"vision train: {arch}, {len(train_idx)} train / {len(val_idx)} val records (split by {split}), "
          f"input {tuple(model.input_size)}, feature {feature_dim}, {epochs} epochs")
    for epoch in range(start_epoch, epochs):
        model.train()
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for images, targets in bar:
            images = images.to(device_, memory_format=memory_format(model))
            targets = targets.to(device_)
            loss = criterion(model(images).logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(targets)
            seen += len(targets)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        metrics = evaluate(model, val_loader, device_) if val_loader is not None else {"accuracy": None, "macro_f1": None, "n": 0}
        metrics.update(epoch=epoch + 1, train_loss=loss_sum / max(seen, 1), seconds=round(time.perf_counter() - t0, 1))
        history.append(metrics)
        is_best = best is None or (metrics["macro_f1"] or 0.0, metrics["accuracy"] or 0.0) >= (best["macro_f1"] or 0.0, best["accuracy"] or 0.0)
        if is_best:
            best = metrics
            save_checkpoint(out, model, {**config, "val_metrics": best, "history": history})
        with atomic_path(resume_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(), "epoch": epoch, "best": best, "history": history}, tmp)
        val = "" if metrics["accuracy"] is None else f", val acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        tqdm.write(f"epoch {epoch + 1}/{epochs}: train loss {metrics['train_loss']:.4f}{val} "
                   f"({metrics['seconds']:.0f}s){' *best*' if is_best else ''}")
    if best is None:
        raise FormatError(f"{out}: nothing trained (epochs={epochs}, already done {start_epoch})")
    if context > 0:
        best = {**best, "context": add_context_head(out, dataset, np.asarray(labels), keys, train_idx, val_idx,
                                                    context, batch_size, device, seed, progress)}
    print(f"best checkpoint: {out} (epoch {best['epoch']})")
    return best


def add_context_head(out: Path, dataset: EEGImageDataset, labels: np.ndarray, keys, train_idx, val_idx, k: int,
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
    train_vision_module(
        a.arch, a.records, a.image_folder, a.out, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
        weight_decay=a.weight_decay, image_size=(a.image_size * 2)[:2] if a.image_size else None,
        val_fraction=a.val_fraction, seed=a.seed, device=a.device, workers=a.workers, resume=a.resume,
        pretrained=True if a.pretrained == "hub" else a.pretrained, feature_dim=a.feature_dim, tap=a.tap, context=a.context, progress=not a.no_progress,
    )
    return 0
