"""Registry of specialized vision modules: a name -> a function that builds the module.

A vision module is an ``nn.Module`` whose ``forward(images)`` takes a normalised image batch
``[B, 3, H, W]`` and returns :class:`VisionOutput` ``(features [B, 1, feature_dim], logits [B, num_classes])``.
It declares ``feature_dim``, ``input_size`` ``(3, H, W)`` and the normalisation ``mean`` / ``std``
(one value per channel) that its images get.

Built-ins (see ``modules.py``): ``resnet18``, ``convnext_base`` and ``timm:<any timm model name>``.

Register your own module in a few lines; training, extraction and the CLI then take it by name::

    import torch
    from torch import nn
    from vision_modules import VisionOutput, register_vision_module

    @register_vision_module("tiny_cnn")
    class TinyCNN(nn.Module):
        def __init__(self, feature_dim=1024, num_classes=5, pretrained=False, image_size=(64, 192)):
            super().__init__()
            self.feature_dim, self.input_size = feature_dim, (3, *image_size)
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            self.body = nn.Sequential(nn.Conv2d(3, feature_dim, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(feature_dim, num_classes)

        def forward(self, images):
            h = self.body(images).flatten(1)               # [B, feature_dim]
            return VisionOutput(h[:, None, :], self.head(h))

    # eeg-vlm vision train --arch tiny_cnn --import-module my_modules ...   (the checkpoint records the module;
    # extraction imports it again only when named: eeg-vlm vision extract --import-module my_modules ...)

The builder is called as ``builder(feature_dim=..., num_classes=..., pretrained=..., **kw)`` where
``kw`` may hold ``image_size`` (H, W; a list when read back from a checkpoint) and ``tap`` when the user passes
them: accept those your module uses; one it does not take is refused in one line.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from eeg_core.errors import FormatError
from eeg_core.formats import FEATURE_DIM
from eeg_core.stages import STAGES

TIMM_PREFIX = "timm:"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Builders of whole model families named by a prefix: "timm:" -> any timm backbone (set by vision_modules.modules).
_FAMILIES: dict[str, Callable[..., nn.Module]] = {}


class VisionOutput(NamedTuple):
    """What a vision module's forward returns."""

    features: torch.Tensor  # [B, 1, feature_dim]: the high-level token handed to the VLM
    logits: torch.Tensor  # [B, num_classes]: the module's own sleep-stage prediction (for its training)


def register_vision_module(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a class or factory under ``name`` (must not start with ``timm:``)."""
    if name.startswith(TIMM_PREFIX):
        raise ValueError(f"vision module names starting with {TIMM_PREFIX!r} are reserved for timm backbones")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"vision module {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def register_vision_family(prefix: str, builder: Callable[..., nn.Module]) -> None:
    """``create_vision_module(prefix + model_name, ...)`` calls ``builder(model_name, ...)`` (``timm:<name>``)."""
    _FAMILIES[prefix] = builder


def unregister_vision_module(name: str) -> None:
    """Remove ``name`` from the registry (nothing happens when it is not registered)."""
    _REGISTRY.pop(name, None)


@contextmanager
def temporary_vision_modules() -> Iterator[None]:
    """Registrations (and removals) made inside the block are undone when it ends: the registry is left as
    it was. For tests, or a notebook trying out a module::

        with temporary_vision_modules():
            register_vision_module("tiny_cnn")(TinyCNN)
            ...
    """
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


def list_vision_modules() -> list[str]:
    """Registered names (``timm:<name>`` takes any timm model besides these)."""
    return sorted(_REGISTRY)


def builder_import_path(name: str) -> str | None:
    """The Python module that registered ``name`` (stored in checkpoints so extraction can import it again)."""
    builder = _REGISTRY.get(name)
    return getattr(builder, "__module__", None) if builder is not None else None


def is_known_module(module: str) -> bool:
    """Modules a checkpoint may ask to import: this package's own, and those already imported (by the user)."""
    return module == "vision_modules" or module.startswith("vision_modules.") or module in sys.modules


def import_known_module(import_path: str, what: str, where: str = "") -> None:
    """Import ``import_path``, the Python module that registers ``what`` (named by a checkpoint), but only when it
    is one of this package's own modules or already imported: a checkpoint never makes an arbitrary module run."""
    prefix = f"{where}: " if where else ""
    if not is_known_module(import_path):
        raise FormatError(
            f"{prefix}{what} is registered by the Python module {import_path!r}, which is not imported unless you "
            f"name it: pass --import-module {import_path} (or import it yourself) if you trust it"
        )
    try:
        importlib.import_module(import_path)
    except ImportError as e:
        raise FormatError(f"{prefix}{what}: cannot import {import_path!r} that registers it ({e})") from None


def import_user_modules(modules: Sequence[str]) -> None:
    """Import the modules the user names (``--import-module``): they register their vision modules. The
    working directory is searched too (the ``eeg-vlm`` script does not put it on ``sys.path``)."""
    import os

    for module in modules:
        added = os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise FormatError(f"--import-module {module}: cannot import it ({e})") from None
        finally:
            if added:
                sys.path.remove(os.getcwd())


def create_vision_module(
    name: str,
    feature_dim: int = FEATURE_DIM,
    num_classes: int = len(STAGES),
    pretrained: bool | str = False,
    import_path: str | None = None,
    where: str = "",
    **kw: Any,
) -> nn.Module:
    """Build a registered module, or ``timm:<name>`` for any timm backbone.

    ``pretrained``: ``False`` (random init, the default: no hub), a local weights file or folder, or
    ``True`` for hub weights (a one-line error when they are not cached and the hub is unreachable).
    ``import_path``: the Python module that registers ``name`` (from a checkpoint's config), imported when
    ``name`` is not registered yet, but only when it is one of this package's own modules or already imported:
    a checkpoint never makes an arbitrary module run. Any other module must be named by the user
    (``--import-module``, ``import_user_modules``). ``where`` (the checkpoint's config) prefixes errors.
    """
    for prefix, family in _FAMILIES.items():
        if name.startswith(prefix):
            return family(name[len(prefix):], feature_dim=feature_dim, num_classes=num_classes, pretrained=pretrained,
                          **kw)
    if name not in _REGISTRY and import_path and import_path != "__main__":
        import_known_module(import_path, f"vision module {name!r}", where)
    if name not in _REGISTRY:
        raise FormatError(
            f"unknown vision module {name!r}; registered: {', '.join(list_vision_modules())}, or timm:<timm model name>"
        )
    builder = _REGISTRY[name]
    try:  # a setting the builder does not take (--tap for a module without taps) is the user's, in one line
        inspect.signature(builder).bind(feature_dim=feature_dim, num_classes=num_classes, pretrained=pretrained, **kw)
    except TypeError as e:
        raise FormatError(f"{where + ': ' if where else ''}vision module {name!r} does not take these settings "
                          f"({e})") from None
    module = builder(feature_dim=feature_dim, num_classes=num_classes, pretrained=pretrained, **kw)
    for attr in ("feature_dim", "input_size", "mean", "std"):
        if not hasattr(module, attr):
            raise FormatError(f"vision module {name!r} does not declare {attr!r}")
    return module
