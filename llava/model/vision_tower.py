"""The CLIP vision tower (frozen) and the one place where a vision tower name becomes a folder."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from eeg_core.errors import FormatError

logger = logging.getLogger(__name__)


def resolve_model_dir(name: str | os.PathLike, base_dirs=(), what: str = "vision tower",
                      hint: str = "mm_vision_tower / --vision_tower") -> Path:
    """A local folder for ``name``. A relative name is looked up in ``base_dirs`` (the checkpoint folders it
    came with) first, so a checkpoint finds its own tower from any working directory, then in the working
    directory; an absolute name is taken as it is. A relative name recorded from another working directory
    (``checkpoints/tiny-llava/clip``) is also found by its tail inside a checkpoint folder (``clip``), so a
    checkpoint keeps working when moved. Else a hub id already in the local Hugging Face cache. Anything
    else is a one-line FormatError, at once."""
    path = Path(name).expanduser()
    bases = [Path(b) for b in base_dirs if b is not None]
    if not path.is_absolute():
        for base in bases:
            if (base / path).is_dir():
                return base / path
    if path.is_absolute() or path.exists():
        if path.is_dir():
            return path
        raise FormatError(f"{what} '{name}' is not a folder")
    for k in range(1, len(path.parts)):  # the longest tail first
        for base in bases:
            if (base / Path(*path.parts[k:])).is_dir():
                logger.info("%s '%s' not found from %s: using %s", what, name, os.getcwd(),
                            base / Path(*path.parts[k:]))
                return base / Path(*path.parts[k:])
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), local_files_only=True))
    except Exception:  # not a repo id, or not cached: never try the network
        raise FormatError(
            f"{what} '{name}' is not a local folder and not in the Hugging Face cache (offline): "
            f"download it once and point {hint} at the local copy"
        ) from None


def portable_name(name: str | os.PathLike, base: str | os.PathLike | None) -> str:
    """How a run records its tower (``mm_vision_tower``) so that it loads from any working directory. ``base``:
    the base model a run is loaded with (a LoRA run's; None for a full checkpoint, which loads alone). A tower
    inside the base is recorded relative to it, so base, tower and runs move together; another local folder
    by its absolute path; a hub id as it is."""
    path = Path(name).expanduser()
    local = Path(base) / path if base is not None and not path.is_absolute() and (Path(base) / path).is_dir() \
        else path
    if not local.is_dir():
        return str(name)
    local = local.resolve()
    root = Path(base).resolve() if base is not None else None
    return str(local.relative_to(root)) if root is not None and local.is_relative_to(root) and local != root \
        else str(local)


class CLIPVisionTower(nn.Module):
    """CLIP image encoder returning the patch features of ``select_layer`` ([N, P, hidden_size]).

    Built unloaded (no parameters) so that it never takes part in the language model's from_pretrained;
    ``load_model`` reads the CLIP folder afterwards.
    """

    def __init__(self, vision_tower: str, select_layer: int = -2, select_feature: str = "patch",
                 base_dirs=(), delay_load: bool = True):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise FormatError(f"mm_vision_select_feature {select_feature!r} is not one of patch cls_patch")
        self.vision_tower_name = str(vision_tower)
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.base_dirs = tuple(base_dirs)
        self.is_loaded = False
        self.vision_tower: CLIPVisionModel | None = None
        self.image_processor: CLIPImageProcessor | None = None
        self.cfg_only: CLIPVisionConfig | None = None
        if not delay_load:
            self.load_model()

    def load_model(self, base_dirs=(), device_map=None) -> None:
        if self.is_loaded:
            return
        folder = resolve_model_dir(self.vision_tower_name, tuple(base_dirs) + self.base_dirs)
        self.image_processor = CLIPImageProcessor.from_pretrained(folder)
        self.vision_tower = CLIPVisionModel.from_pretrained(folder, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        features = hidden_states[self.select_layer]
        return features[:, 1:] if self.select_feature == "patch" else features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(out.hidden_states).to(images.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2 + (1 if self.select_feature == "cls_patch" else 0)


def build_vision_tower(config, base_dirs=(), delay_load: bool = True) -> CLIPVisionTower:
    name = getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None)
    if name is None:
        raise FormatError("no vision tower configured (mm_vision_tower)")
    return CLIPVisionTower(name, getattr(config, "mm_vision_select_layer", -2),
                           getattr(config, "mm_vision_select_feature", "patch"), base_dirs, delay_load)
