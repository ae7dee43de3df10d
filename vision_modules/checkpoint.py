"""A vision-module checkpoint folder: ``model.safetensors`` (weights) + ``config.json`` (how to rebuild it).

``config.json`` holds ``arch``, ``import_path`` (the Python module that registered a user arch),
``feature_dim``, ``num_classes``, ``classes`` (index -> stage), ``module_kwargs`` (e.g. ``image_size``,
``tap``), ``input_size``, ``mean``, ``std``, the training ``args`` and the best ``val_metrics``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from eeg_vlm.formats import FormatError, atomic_path, write_json
from vision_modules.registry import create_vision_module

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_checkpoint(out: str | os.PathLike, model: nn.Module, config: dict[str, Any]) -> None:
    """Write weights then config, each atomically (the config last, so a folder with one is complete)."""
    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(out / CONFIG_NAME, config)


def read_config(checkpoint: str | os.PathLike) -> dict[str, Any]:
    checkpoint = Path(checkpoint)
    path = checkpoint / CONFIG_NAME
    if not path.is_file() or not (checkpoint / WEIGHTS_NAME).is_file():
        raise FormatError(f"{checkpoint}: not a vision-module checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("arch", "feature_dim", "num_classes"):
        if key not in config:
            raise FormatError(f"{path}: missing {key!r}")
    return config


def load_vision_module(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the module from ``config.json`` and load its weights (strictly); returns (module in eval mode, config)."""
    config = read_config(checkpoint)
    model = create_vision_module(
        config["arch"],
        feature_dim=int(config["feature_dim"]),
        num_classes=int(config["num_classes"]),
        pretrained=False,
        import_path=config.get("import_path"),
        where=str(Path(checkpoint) / CONFIG_NAME),
        **config.get("module_kwargs", {}),
    )
    weights = Path(checkpoint) / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise FormatError(f"{weights}: cannot read safetensors weights ({e})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(
            f"{weights}: weights do not fit arch {config['arch']!r} "
            f"({len(missing)} missing e.g. {missing[:1]}, {len(unexpected)} unexpected e.g. {unexpected[:1]})"
        )
    return model.to(device).eval(), config
