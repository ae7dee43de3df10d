"""Specialized vision modules: a registry of image models that turn an EEG epoch image into one
high-level feature ``[1, feature_dim]`` (1024 = CLIP-L's width, what the LLaVA projector takes),
their training on the sleep stage, and feature extraction for the VLM."""
from vision_modules import modules as _builtins  # noqa: F401  (registers resnet18, convnext_base)
from vision_modules import sequence as _sequences  # noqa: F401  (registers the gru and transformer encoders)
from vision_modules.registry import (
    VisionOutput,
    create_vision_module,
    list_vision_modules,
    register_vision_module,
)

__all__ = ["VisionOutput", "create_vision_module", "list_vision_modules", "register_vision_module",
           "train_vision_module", "extract_features", "load_vision_module"]


def __getattr__(name):  # the training / extraction entry points, imported when first used
    if name == "train_vision_module":
        from vision_modules.train import train_vision_module
        return train_vision_module
    if name == "extract_features":
        from vision_modules.extract import extract_features
        return extract_features
    if name == "load_vision_module":
        from vision_modules.checkpoint import load_vision_module
        return load_vision_module
    raise AttributeError(name)
