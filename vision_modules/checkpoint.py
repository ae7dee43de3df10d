"""A vision-module checkpoint folder: ``model.safetensors`` (weights) + ``config.json`` (how to rebuild it; the
names are ``eeg_core.layout.VISION_WEIGHTS`` and ``VISION_CONFIG``).

``config.json`` holds ``arch``, ``import_path`` (the Python module that registered a user arch),
``feature_dim``, ``num_classes``, ``classes`` (index -> stage), ``module_kwargs`` (e.g. ``image_size``,
``tap``), ``input_size``, ``mean``, ``std``, the training ``args``, the best ``val_metrics``, ``render`` (how
the training images were drawn, ``sleep_eeg.images.render``) and, with a sequence encoder, ``sequence`` (its ``name``,
``import_path`` and ``context``: epochs either side or ``"night"``; weights in ``sequence.safetensors``, see
``vision_modules.sequence``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eeg_core.atomic import atomic_path, write_json
from eeg_core.errors import FormatError
from eeg_core.formats import FEATURE_DIM
from eeg_core.layout import VISION_CONFIG, VISION_WEIGHTS
from eeg_core.stages import STAGES
from vision_modules.sequence import SEQUENCE_WEIGHTS, create_sequence_encoder, parse_context, sequence_import_path
from vision_modules.registry import create_vision_module


def _save_weights(path: Path, module: nn.Module) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def save_checkpoint(out: str | os.PathLike, model: nn.Module, config: dict[str, Any],
                    sequence_encoder: nn.Module | None = None) -> None:
    """Write weights (and the sequence encoder's) then config, each atomically (the config last, so a folder
    with one is complete)."""
    out = Path(out)
    _save_weights(out / VISION_WEIGHTS, model)
    if sequence_encoder is not None:
        _save_weights(out / SEQUENCE_WEIGHTS, sequence_encoder)
    write_json(out / VISION_CONFIG, config)


def _load_weights(path: Path, module: nn.Module, what: str) -> None:
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise FormatError(f"{path}: cannot read safetensors weights ({e})") from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(
            f"{path}: weights do not fit {what} "
            f"({len(missing)} missing e.g. {missing[:1]}, {len(unexpected)} unexpected e.g. {unexpected[:1]})"
        )


def read_config(checkpoint: str | os.PathLike) -> dict[str, Any]:
    checkpoint = Path(checkpoint)
    path = checkpoint / VISION_CONFIG
    if not path.is_file() or not (checkpoint / VISION_WEIGHTS).is_file():
        raise FormatError(f"{checkpoint}: not a vision-module checkpoint (needs {VISION_CONFIG} and {VISION_WEIGHTS})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: not a vision-module config (a JSON object)")
    for key in ("arch", "feature_dim", "num_classes"):
        if key not in config:
            raise FormatError(f"{path}: missing {key!r}")
    if not isinstance(config["arch"], str):
        raise FormatError(f"{path}: 'arch' {config['arch']!r} is not a name")
    for key in ("feature_dim", "num_classes"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise FormatError(f"{path}: {key!r} {config[key]!r} is not a positive integer")
    return config


def check_preprocessing(model: nn.Module, config: dict[str, Any], where: Path) -> None:
    """The input size, mean and std the checkpoint was trained with (saved in its config) must be the module's
    now: a module whose code changed since would see its images resized or normalised otherwise, in silence."""
    for key in ("input_size", "mean", "std"):
        if key not in config:
            continue
        saved, now = config[key], getattr(model, key)
        try:
            same = len(saved) == len(now) and all(abs(float(a) - float(b)) <= 1e-6 for a, b in zip(saved, now))
        except (TypeError, ValueError):
            same = False
        if not same:
            raise FormatError(f"{where}: {key} {list(saved) if isinstance(saved, (list, tuple)) else saved!r} was "
                              f"saved with the checkpoint, but vision module {config['arch']!r} now has "
                              f"{[float(x) if key != 'input_size' else int(x) for x in now]}; its code changed since "
                              "training (retrain it, or restore the module)")


def load_vision_module(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the module from ``config.json`` and load its weights (strictly); returns (module in eval mode, config).
    The module's ``sequence_encoder`` is its sequence encoder (or None) and ``context`` what it reads."""
    config = read_config(checkpoint)
    model = create_vision_module(
        config["arch"],
        feature_dim=int(config["feature_dim"]),
        num_classes=int(config["num_classes"]),
        pretrained=False,
        import_path=config.get("import_path"),
        where=str(Path(checkpoint) / VISION_CONFIG),
        **config.get("module_kwargs", {}),
    )
    check_preprocessing(model, config, Path(checkpoint) / VISION_CONFIG)
    _load_weights(Path(checkpoint) / VISION_WEIGHTS, model, f"arch {config['arch']!r}")
    model.sequence_encoder, model.context = load_sequence_encoder(Path(checkpoint), config)
    return model.to(device).eval(), config


def load_sequence_encoder(checkpoint: Path, config: dict[str, Any]) -> tuple[nn.Module | None, int | str]:
    """The checkpoint's sequence encoder (eval mode, on the CPU) and its context, or ``(None, 0)``."""
    where = checkpoint / VISION_CONFIG
    if "context" in config:
        raise FormatError(f"{where}: a context head of an earlier version (trained on frozen features); train the "
                          "module again with --context K, which now trains a sequence encoder end to end")
    seq = config.get("sequence")
    if not seq:
        return None, 0
    if not isinstance(seq, dict) or not isinstance(seq.get("name"), str) or "context" not in seq:
        raise FormatError(f"{where}: 'sequence' {seq!r} is not a sequence encoder's record (name, context)")
    context = parse_context(seq["context"])
    encoder = create_sequence_encoder(seq["name"], int(config["feature_dim"]), int(config["num_classes"]),
                                      import_path=seq.get("import_path"), where=str(where))
    _load_weights(checkpoint / SEQUENCE_WEIGHTS, encoder, f"sequence encoder {seq['name']!r}")
    return encoder.eval(), context


def random_checkpoint(out: str | os.PathLike, render: dict[str, Any], arch: str = "resnet18",
                      image_size: tuple[int, int] = (64, 192), context: int | str = 0, sequence: str = "gru",
                      seed: int = 0) -> Path:
    """A checkpoint folder of ``arch`` with random (seeded) weights that records ``render``
    (``RenderConfig.to_dict()``, the settings its images are drawn with); with ``context``, a random ``sequence``
    encoder over it. It loads and stages like a trained one, so the pipeline runs (and is timed) without
    training: the tests and ``benchmarks/stage_night.py`` build theirs here. The caller's torch RNG is left as
    it was. Returns ``out``."""
    out = Path(out)
    kwargs = {"image_size": list(image_size)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_vision_module(arch, feature_dim=FEATURE_DIM, num_classes=len(STAGES), **kwargs)
        encoder = create_sequence_encoder(sequence, FEATURE_DIM, len(STAGES)) if context else None
    config = {"arch": arch, "feature_dim": FEATURE_DIM, "num_classes": len(STAGES), "classes": list(STAGES),
              "module_kwargs": kwargs, "input_size": list(model.input_size), "mean": list(model.mean),
              "std": list(model.std), "render": render}
    if encoder is not None:
        config["sequence"] = {"name": sequence, "import_path": sequence_import_path(sequence), "context": context}
    save_checkpoint(out, model, config, sequence_encoder=encoder)
    return out
