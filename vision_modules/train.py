"""Train a specialized vision module on EEG epoch images to predict the sleep stage.

Labels come from the records' ``label`` (W N1 N2 N3 REM). The loss is weighted by inverse class
frequency (N1 is rare in real nights). Validation holds out whole subjects when every record carries
``subject`` (and there are at least two), otherwise a stratified random part of the records. The
checkpoint with the best validation macro-F1 is kept (``model.safetensors`` + ``config.json``);
``resume.pt`` holds the last epoch's full state for ``--resume``. The records' render settings go into the
checkpoint, so extraction refuses images drawn another way.
``--context K`` (or ``night``) trains a sequence encoder end to end with the image model, on runs of consecutive
epochs of the training nights (``vision_modules.sequence``). Each image is decoded, checked and resized once, up
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
from eeg_core.formats import FEATURE_DIM, read_records, records_render
from eeg_core.layout import VISION_CONFIG, VISION_WEIGHTS
from eeg_core.options import add_options, option, options_from_args
from eeg_core.stages import STAGES
from vision_modules.checkpoint import read_config, save_checkpoint
from vision_modules.data import (
    CachedImageDataset,
    decode_record_images,
    normalize_images,
    record_image_paths,
    record_labels,
)
from vision_modules.modules import TimmVisionModule, memory_format
from vision_modules.registry import (
    builder_import_path,
    create_vision_module,
    import_user_modules,
    list_vision_modules,
)
from vision_modules.sequence import (
    DEFAULT_SEQUENCE,
    create_sequence_encoder,
    describe,
    encode,
    list_sequence_encoders,
    night_keys,
    night_rows,
    parse_context,
    run_length,
    sequence_import_path,
    training_runs,
)

RESUME_NAME = "resume.pt"
SEQUENCE_IMAGE_LR = 0.1  # the sequence phase trains the image model at this share of the learning rate


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
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, encoder: nn.Module | None = None,
             keys: Sequence[tuple[str, int]] | None = None, context: int | str = 0) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in labels or predictions) of the module's logits; with an
    ``encoder``, of its logits over the ``keys``' nights (the loader's records, in order)."""
    model.eval()
    y_true, y_pred, feats = [], [], []
    for images, labels in loader:
        out = model(images.to(device, memory_format=memory_format(model)))
        y_pred.append(out.logits.argmax(1).cpu())
        feats.append(out.features.flatten(1).float())
        y_true.append(labels)
    y_true, y_pred = torch.cat(y_true).numpy(), torch.cat(y_pred).numpy()
    if encoder is not None:
        y_pred = encode(encoder, torch.cat(feats), keys, context)[1].argmax(1).cpu().numpy()
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "n": int(len(y_true)),
    }


@dataclass(frozen=True)
class VisionTrainConfig:
    """The training options (``eeg-vlm vision train``'s flags besides the data and the output folder)."""

    epochs: int = option(5, "epochs of the image model")
    batch_size: int = option(32, "images per step")
    lr: float = option(1e-3, "AdamW learning rate (warm-up, then cosine)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    image_size: Sequence[int] | int | None = option(None, "H W (or one N for N x N); default: the module's (64 192)",
                                                    type=int, nargs="+", metavar="N")
    val_fraction: float = option(0.1, "held-out part (whole subjects when records carry 'subject')")
    seed: int = option(0, "seed of the initialisation, the split and the order")
    device: str = option("cpu", "torch device")
    workers: int = option(0, "DataLoader worker processes")
    resume: bool = option(False, "continue from OUT/resume.pt")
    pretrained: str | os.PathLike | bool | None = option(
        None, "local backbone weights (file or model folder), or 'hub' for timm's hub weights; default random init",
        metavar="PATH")
    feature_dim: int = option(FEATURE_DIM, "size of the high-level feature (the projector's mm_hidden_size)")
    tap: int | None = option(None, "backbone feature stage to tap (timm feature_info index; default -2)", type=int)
    context: int | str = option(0, "a sequence encoder trained with the image model: each epoch's feature reads "
                                   "epochs i-K..i+K of its night, or the whole night with 'night' (default 0: none)",
                                type=parse_context, metavar="K|night")
    sequence: str = option(DEFAULT_SEQUENCE, "the registered sequence encoder for --context (built in: "
                                             f"{', '.join(list_sequence_encoders())}; or your own)")
    sequence_epochs: int = option(3, "with --context: epochs of the image model and the encoder together, after "
                                     "--epochs")
    progress: bool = option(True, "no progress bars", flag="--no-progress")

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
    keys: list | None  # night keys (only with a sequence encoder)
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
    keys = night_keys(recs, str(records_path)) if opts.context else None
    paths = record_image_paths(recs, image_folder, str(records_path), check=False)
    train_idx, val_idx, split = split_train_val(recs, labels, opts.val_fraction, opts.seed)
    return TrainingData(recs, labels, render, keys, paths, train_idx, val_idx, split)


def load_resume_state(out: Path, arch: str, opts: VisionTrainConfig, module_kwargs: dict[str, Any]) -> dict:
    """``out/resume.pt``, refused unless it is a plain tensor file of the same module (arch, feature, kwargs) and
    sequence encoder (name, context) as the run asked for."""
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
    saved = state.get("config") or read_config(out)  # the run's config (resume.pt holds it from the first epoch)
    sequence = saved.get("sequence") or {}
    saved = {**saved, **saved.get("module_kwargs", {}), "context": sequence.get("context", 0),
             "sequence": sequence.get("name", opts.sequence)}
    asked = {"arch": arch, "feature_dim": opts.feature_dim, **module_kwargs, "context": opts.context,
             "sequence": opts.sequence}
    for key, value in asked.items():
        if saved.get(key) != value:
            raise FormatError(f"{resume_path}: --resume with {key}={value!r} but the run had {saved.get(key)!r}")
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
    """AdamW and its schedule: a linear warm-up (a twentieth of the steps, at most one epoch), then cosine.
    ``model``: a module, or parameter groups (each with its own ``lr``)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    total_steps = max(1, opts.epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, max(1, total_steps // 20))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    return optimizer, scheduler


def fit_steps(batches, step_loss, optimizer, scheduler, desc: str = "", progress: bool = False) -> float:
    """One optimiser step per batch on ``step_loss(batch) -> (loss, records)``; returns the mean loss per record."""
    loss_sum, seen = 0.0, 0
    bar = tqdm(batches, desc=desc, disable=not progress, leave=False)
    for batch in bar:
        loss, n = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * n
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
    return loss_sum / max(seen, 1)


def train_one_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module, optimizer, scheduler,
                    device: torch.device, desc: str = "", progress: bool = False) -> float:
    """One pass over ``loader``; returns the mean training loss per record."""
    model.train()

    def step_loss(batch):
        images, targets = batch
        images = images.to(device, memory_format=memory_format(model))
        return criterion(model(images).logits, targets.to(device)), len(targets)

    return fit_steps(loader, step_loss, optimizer, scheduler, desc, progress)


def train_one_epoch_runs(t: "Training", runs: np.ndarray, optimizer, scheduler, desc: str = "") -> float:
    """One end-to-end pass over ``runs`` (:func:`~vision_modules.sequence.training_runs`), ``t.runs_per_step`` runs a
    step: the image model on every present epoch of a step's runs, the encoder over the runs; the loss is the
    encoder's stage loss plus the image model's own (so its logits stay a stage of their own). Returns the mean
    loss per record."""
    model, encoder, images, device, criterion = t.model, t.encoder, t.dataset, t.device, t.criterion
    runs_per_step = t.runs_per_step
    model.train()
    for m in model.modules():  # a step holds a few nights: their statistics would replace the whole set's
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    encoder.train()
    labels = torch.as_tensor(images.labels, dtype=torch.long)

    def step_loss(s):
        index = runs[s : s + runs_per_step]
        rows = torch.from_numpy(index[index >= 0])
        out = model(normalize_images(images.images[rows], images.mean, images.std).to(
            device, memory_format=memory_format(model)))
        per_epoch = out.features.flatten(1)
        present = torch.from_numpy(index >= 0).to(device)
        sequence = per_epoch.new_zeros(*index.shape, per_epoch.shape[1])
        sequence[present] = per_epoch  # row-major, as rows = index[index >= 0]
        targets = labels[rows].to(device)
        logits = encoder(sequence, present).logits[present]
        return criterion(logits, targets) + criterion(out.logits, targets), len(targets)

    return fit_steps(range(0, len(runs), runs_per_step), step_loss, optimizer, scheduler, desc, t.opts.progress)


def is_better(metrics: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Best so far by validation macro-F1, then accuracy (ties go to the later epoch; no split: every epoch)."""
    return best is None or (metrics["macro_f1"] or 0.0, metrics["accuracy"] or 0.0) >= (
        best["macro_f1"] or 0.0, best["accuracy"] or 0.0)


def save_resume(path: Path, t: "Training", optimizer, scheduler, progress: dict[str, Any]) -> None:
    """The last epoch's full state (atomically), what ``--resume`` continues from: the weights, the optimizer's,
    scheduler's and generator's states, and ``progress`` (``epoch``, ``phase``, the run's ``config``, ``best``,
    ``history``) as is."""
    state = {"model": t.model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "generator": t.generator.get_state(), **progress}
    if t.encoder is not None:
        state["encoder"] = t.encoder.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def recorded_args(arch: str, records, image_folder, out, opts: VisionTrainConfig) -> dict[str, Any]:
    """The call as recorded in config.json (``args``): paths as strings."""
    args = {"arch": arch, "records": records, "image_folder": image_folder, "out": out,
            **{f.name: getattr(opts, f.name) for f in fields(opts)}}
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in args.items()}


def checkpoint_config(arch: str, opts: VisionTrainConfig, model: nn.Module, module_kwargs: dict[str, Any],
                      data: TrainingData, args: dict[str, Any]) -> dict[str, Any]:
    """config.json beside the weights (the metrics and history are added at each save)."""
    config = {
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
    if opts.context:
        config["sequence"] = {"name": opts.sequence, "import_path": sequence_import_path(opts.sequence),
                              "context": opts.context}
    return config


def build_encoder(opts: VisionTrainConfig, device: torch.device) -> nn.Module | None:
    """The seeded sequence encoder (``opts.context``), or None."""
    if not opts.context:
        return None
    torch.manual_seed(opts.seed + 1)
    return create_sequence_encoder(opts.sequence, feature_dim=opts.feature_dim, num_classes=len(STAGES)).to(device)


@dataclass
class Training:
    """What every epoch of one training run reads."""

    opts: VisionTrainConfig
    data: TrainingData
    model: nn.Module
    encoder: nn.Module | None
    dataset: CachedImageDataset
    train_loader: DataLoader
    val_loader: DataLoader | None
    generator: torch.Generator
    criterion: nn.Module
    device: torch.device

    def phase(self, epoch: int) -> str:
        """``image`` for the first ``opts.epochs`` epochs, then ``sequence`` (with an encoder)."""
        return "image" if epoch < self.opts.epochs else "sequence"

    @property
    def total_epochs(self) -> int:
        return self.opts.epochs + (self.opts.sequence_epochs if self.encoder is not None else 0)

    def runs(self, generator: torch.Generator) -> np.ndarray:
        return training_runs(night_rows(self.data.keys, self.data.train_idx),
                             run_length(self.opts.context, self.opts.batch_size), generator)

    @property
    def runs_per_step(self) -> int:
        return max(1, self.opts.batch_size // run_length(self.opts.context, self.opts.batch_size))


def phase_optimizer(t: Training, phase: str):
    """The image phase: AdamW on the image model over ``opts.epochs``. The sequence phase: the image model at
    :data:`SEQUENCE_IMAGE_LR` of the learning rate and the encoder at the full rate, over ``sequence_epochs``;
    each with a warm-up then cosine (:func:`make_optimizer`)."""
    if phase == "image":
        return make_optimizer(t.model, t.opts, len(t.train_loader))
    steps = -(-len(t.runs(torch.Generator().manual_seed(t.opts.seed))) // t.runs_per_step)
    groups = [{"params": t.model.parameters(), "lr": t.opts.lr * SEQUENCE_IMAGE_LR},
              {"params": t.encoder.parameters(), "lr": t.opts.lr}]
    return make_optimizer(groups, replace(t.opts, epochs=t.opts.sequence_epochs), steps)


def run_epoch(t: Training, phase: str, optimizer, scheduler, desc: str) -> tuple[float, dict[str, Any]]:
    """One epoch of ``phase``; returns its training loss and validation metrics (the encoder's in the sequence
    phase, the image model's before)."""
    if phase == "image":
        loss = train_one_epoch(t.model, t.train_loader, t.criterion, optimizer, scheduler, t.device, desc,
                               t.opts.progress)
        encoder = None
    else:
        loss = train_one_epoch_runs(t, t.runs(t.generator), optimizer, scheduler, desc)
        encoder = t.encoder
    if t.val_loader is None:
        return loss, {"accuracy": None, "macro_f1": None, "n": 0}
    val_keys = [t.data.keys[i] for i in t.data.val_idx] if encoder is not None else None
    return loss, evaluate(t.model, t.val_loader, t.device, encoder, val_keys, t.opts.context)


def start_training(arch: str, records_path: Path, image_folder, out: Path, opts: VisionTrainConfig
                   ) -> tuple[Training, dict | None, dict[str, Any]]:
    """Read the records, build the model (and encoder), decode the images; the resume state when asked."""
    module_kwargs = opts.module_kwargs()
    device = torch.device(opts.device)
    data = load_training_data(records_path, image_folder, opts)
    state = load_resume_state(out, arch, opts, module_kwargs) if opts.resume else None
    model, module_kwargs = build_model(arch, opts, module_kwargs, pretrained=state is None, device=device)
    encoder = build_encoder(opts, device)
    dataset = image_dataset(data, str(records_path), model, opts.progress)
    train_loader, val_loader, generator = make_loaders(dataset, data, opts)
    criterion = class_weighted_loss(np.asarray(data.labels)[data.train_idx], device)
    t = Training(opts, data, model, encoder, dataset, train_loader, val_loader, generator, criterion, device)
    if state is not None:
        model.load_state_dict(state["model"])
        if (encoder is None) != ("encoder" not in state):
            raise FormatError(f"{out / RESUME_NAME}: --resume with --context {opts.context} but the run was "
                              f"{'without' if encoder is not None else 'with'} a sequence encoder")
        if encoder is not None:
            encoder.load_state_dict(state["encoder"])
        generator.set_state(state["generator"])
    return t, state, module_kwargs


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
    e.g. ``epochs=3``) applied. With ``context`` the image model's ``epochs`` are followed by
    ``sequence_epochs`` in which it trains together with its sequence encoder (batch norm statistics frozen),
    and the checkpoint is the best of those by the encoder's validation macro-F1."""
    opts = replace(options or VisionTrainConfig(), **overrides)
    opts = replace(opts, context=parse_context(opts.context))
    if opts.context and opts.sequence_epochs < 1:
        raise FormatError(f"--context {opts.context} trains a sequence encoder: --sequence-epochs must be 1 or more")
    args = recorded_args(arch, records, image_folder, out, opts)
    records_path, out = Path(records), Path(out)
    t, state, module_kwargs = start_training(arch, records_path, image_folder, out, opts)
    config = checkpoint_config(arch, opts, t.model, module_kwargs, t.data, args)
    start_epoch, best, history = (state["epoch"] + 1, state["best"], state["history"]) if state else (0, None, [])
    total = t.total_epochs
    print(f"vision train: {arch}, {len(t.data.train_idx)} train / {len(t.data.val_idx)} val records (split by "
          f"{t.data.split}), input {tuple(t.model.input_size)}, feature {opts.feature_dim}, {opts.epochs} epochs"
          + (f", then {opts.sequence_epochs} with sequence encoder {opts.sequence!r} over {describe(opts.context)}"
             if t.encoder is not None else ""))
    phase = None
    for epoch in range(start_epoch, total):
        t0 = time.perf_counter()
        if t.phase(epoch) != phase:
            phase = t.phase(epoch)
            optimizer, scheduler = phase_optimizer(t, phase)
            if state is not None and state.get("phase", "image") == phase:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
        train_loss, metrics = run_epoch(t, phase, optimizer, scheduler, f"epoch {epoch + 1}/{total}")
        metrics.update(epoch=epoch + 1, train_loss=train_loss, seconds=round(time.perf_counter() - t0, 1), phase=phase)
        history.append(metrics)
        better = (t.encoder is None or phase == "sequence") and is_better(metrics, best)
        if better:
            best = metrics
            save_checkpoint(out, t.model, {**config, "val_metrics": best, "history": history},
                            sequence_encoder=t.encoder)
        save_resume(out / RESUME_NAME, t, optimizer, scheduler,
                    {"epoch": epoch, "phase": phase, "config": config, "best": best, "history": history})
        val = "" if metrics["accuracy"] is None else f", val acc {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        tqdm.write(f"epoch {epoch + 1}/{total}{' (sequence)' if phase == 'sequence' else ''}: train loss "
                   f"{metrics['train_loss']:.4f}{val} ({metrics['seconds']:.0f}s){' *best*' if better else ''}")
    if best is None:
        raise FormatError(f"{out}: nothing trained (epochs={total}, already done {start_epoch})")
    print(f"best checkpoint: {out} (epoch {best['epoch']})")
    return best


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="resnet18", help=f"registered name (built in: {', '.join(list_vision_modules())}; "
                   "or your own) or timm:<timm model name>")
    p.add_argument("--records", required=True, help="train records (JSON array) or questions (JSONL) with a 'label'")
    p.add_argument("--image-folder", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--out", required=True, help=f"checkpoint folder ({VISION_WEIGHTS} + {VISION_CONFIG})")
    add_options(p, VisionTrainConfig)
    p.add_argument("--import-module", action="append", default=[], metavar="MODULE",
                   help="a Python module to import first: it registers your own vision module (repeatable)")


def main_from_args(a: argparse.Namespace) -> int:
    import_user_modules(a.import_module)
    if a.image_size is not None and len(a.image_size) not in (1, 2):
        raise FormatError("--image-size takes H W or a single N")
    options = options_from_args(VisionTrainConfig, a, image_size=(a.image_size * 2)[:2] if a.image_size else None,
                                pretrained=True if a.pretrained == "hub" else a.pretrained)
    train_vision_module(a.arch, a.records, a.image_folder, a.out, options)
    return 0
