"""Built-in vision modules on timm backbones: ``resnet18``, ``convnext_base`` and ``timm:<name>``.

Each is a timm backbone cut at one stage (timm's feature API, ``features_only=True``), then a
*1024-d intermediate head*: a 1x1 convolution that expands the stage's channels to ``feature_dim``,
batch norm and ReLU, then global average pooling. The pooled vector is the high-level feature
(``[B, 1, feature_dim]``); a linear classifier on it gives the stage logits used to train the module.

Which stage is tapped is ``tap``, an index into the backbone's feature stages as timm lists them
(``feature_info``; negative counts from the end). Default ``-2``, the second-to-last stage
(ResNet-18 ``layer3``, 256 ch, stride 16; ConvNeXt-Base stage 2, 512 ch, stride 16; block 10 of 12 for
a ViT-S). Why: the paper draws its feature from an *intermediate* layer, and on these small, wide EEG
images a stride-16 map still resolves local waveform events (spindles, K-complexes) in time, while the
last stage would be 1-2 pixels high; timm also drops the stages after the tap, so it is cheaper.

Default input ``image_size=(64, 192)`` (H, W): epoch images are wide waveform plots (~3:1), so the
aspect is kept and the size is small enough to train on a CPU. Normalisation is the backbone's own
(ImageNet mean/std for most timm models), so local pretrained weights see what they expect.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from eeg_core.errors import FormatError
from eeg_core.formats import FEATURE_DIM
from eeg_core.stages import STAGES
from vision_modules.registry import (
    TIMM_PREFIX,
    VisionOutput,
    register_vision_family,
    register_vision_module,
)

DEFAULT_IMAGE_SIZE: tuple[int, int] = (64, 192)
DEFAULT_TAP = -2
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _parse_image_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = (int(x) for x in image_size)
    return (h, w)


def _local_weights(path: str | os.PathLike) -> str:
    """A weights file, or the weights file inside a downloaded model folder."""
    path = Path(path)
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return str(path / name)
        raise FormatError(f"{path}: no weights file ({', '.join(_WEIGHT_FILES)}) in this folder")
    if not path.is_file():
        raise FormatError(f"{path}: pretrained weights file not found")
    return str(path)


def _hub_reachable(timeout: float = 1.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_hub_weights(model_name: str) -> str | None:
    """The hub weights of a timm model if they are already in the local cache; otherwise a one-line error
    when the hub is unreachable (checked in about a second, no retries); ``None`` means "download"."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        for filename in ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else _WEIGHT_FILES):
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return cached
    if not _hub_reachable():
        raise FormatError(
            f"hub weights for {model_name!r} ({hub_id or 'no hub id'}) are not cached and the hub is offline; "
            "download them elsewhere and pass --pretrained PATH (a weights file or model folder)"
        )
    return None


class TimmVisionModule(nn.Module):
    """A timm backbone tapped at one stage + the 1024-d intermediate head + a stage classifier."""

    def __init__(
        self,
        model_name: str,
        feature_dim: int = FEATURE_DIM,
        num_classes: int = len(STAGES),
        pretrained: bool | str | os.PathLike = False,
        image_size: Any = DEFAULT_IMAGE_SIZE,
        tap: int = DEFAULT_TAP,
        **timm_kwargs: Any,
    ):
        super().__init__()
        image_size = _parse_image_size(image_size)
        kwargs: dict[str, Any] = dict(features_only=True, out_indices=(int(tap),), **timm_kwargs)
        if pretrained is True:
            cached = _cached_hub_weights(model_name)
            if cached is not None:
                kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=cached, source=None))
            else:
                kwargs.update(pretrained=True)
        elif pretrained:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=_local_weights(pretrained), source=None))
        self.backbone = self._create_backbone(model_name, image_size, kwargs)

        self.model_name = model_name
        self.tap = int(tap)
        self.feature_dim = int(feature_dim)
        self.input_size = (3, *image_size)
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        self.mean = tuple(float(x) for x in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(x) for x in cfg.get("std", (0.229, 0.224, 0.225)))
        # Some backbones (MambaOut, Swin) give channels-last maps [B, H, W, C]; timm says so in output_fmt.
        self.channels_last_maps = str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC")

        in_channels = self.backbone.feature_info.channels()[-1]
        self.expand = nn.Sequential(
            nn.Conv2d(in_channels, feature_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(feature_dim),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _create_backbone(model_name: str, image_size: tuple[int, int], kwargs: dict) -> nn.Module:
        try:
            try:  # transformers need their input size at construction; CNNs do not take it
                return timm.create_model(model_name, img_size=image_size, **kwargs)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
                return timm.create_model(model_name, **kwargs)
        except FormatError:
            raise
        except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FormatError(f"timm model {model_name!r} with {kwargs.get('out_indices')}: {msg}") from None

    def forward(self, images: torch.Tensor) -> VisionOutput:
        fmap = self.backbone(images)[-1]
        if self.channels_last_maps:
            fmap = fmap.permute(0, 3, 1, 2)
        h = self.pool(self.expand(fmap)).flatten(1)  # [B, feature_dim]
        return VisionOutput(features=h[:, None, :], logits=self.classifier(h))


register_vision_family(TIMM_PREFIX, TimmVisionModule)


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last for timm CNN backbones (faster convolutions on CPU); user modules get plain layout."""
    return torch.channels_last if isinstance(model, TimmVisionModule) else torch.contiguous_format


@register_vision_module("resnet18")
def resnet18(feature_dim: int = FEATURE_DIM, num_classes: int = len(STAGES), pretrained: Any = False,
             **kw: Any) -> TimmVisionModule:
    """ResNet-18 tapped after ``layer3`` (256 ch) by default, expanded to ``feature_dim``."""
    return TimmVisionModule("resnet18", feature_dim, num_classes, pretrained, **kw)


@register_vision_module("convnext_base")
def convnext_base(
    feature_dim: int = FEATURE_DIM, num_classes: int = len(STAGES), pretrained: Any = False, **kw: Any
) -> TimmVisionModule:
    """ConvNeXt-Base tapped after stage 2 (512 ch) by default, expanded to ``feature_dim``."""
    return TimmVisionModule("convnext_base", feature_dim, num_classes, pretrained, **kw)
