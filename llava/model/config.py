"""LlavaConfig: a flat LlamaConfig plus LLaVA-1.5's ``mm_*`` keys and ours (the high-level feature fusion)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import LlamaConfig

from eeg_core.errors import FormatError
from llava.model.fusion import FUSIONS

# Every multimodal key with its default. Names as in LLaVA-1.5's config.json, plus ours at the end.
MM_DEFAULTS: dict = {
    "mm_vision_tower": None,  # folder (absolute, or relative to the CWD or the checkpoint) or a cached hub id
    "mm_hidden_size": None,  # the projector's input size (1024 for CLIP ViT-L/14)
    "mm_projector_type": "linear",  # linear | mlp{N}x_gelu | identity
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",  # patch drops CLS, cls_patch keeps it
    "mm_patch_merge_type": "flat",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "image_aspect_ratio": "square",
    "tokenizer_model_max_length": None,
    "tokenizer_padding_side": "right",
    # Ours.
    "mm_hl_fusion": next(iter(FUSIONS)),  # the first mode of llava/model/fusion.py: add (the paper's)
    "mm_hl_projector": "shared",  # shared: P_hl is mm_projector (the paper); separate: model.mm_hl_projector
    "conv_version": None,  # the conversation template the model was trained with
}
# The one home of the feature-fusion choices (training flags --hl_fusion / --hl_projector read them from here).
# How a high-level feature fills its placeholder slot (config mm_hl_fusion): the modes of llava/model/fusion.py.
FUSION_MODES = tuple(FUSIONS)
# Which projector maps the features (config mm_hl_projector; not mm_projector_type, the projector's shape):
FEATURE_PROJECTORS = ("shared", "separate")
# model_type values of checkpoints that load through our classes (llava: the released liuhaotian/llava-v1.5-*).
LLAVA_MODEL_TYPES = ("llava_llama", "llava")


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"

    def __post_init__(self, **kwargs):
        for key, value in MM_DEFAULTS.items():
            kwargs.setdefault(key, value)
        super().__post_init__(**kwargs)
        for key in _CHOICES:
            self.__setattr__(key, getattr(self, key))

    def __setattr__(self, key, value):
        """The fusion choices are checked whenever they are set (a config built, read, or changed in code):
        a name outside ``FUSION_MODES`` / ``FEATURE_PROJECTORS`` would otherwise fall through to another mode."""
        if key in _CHOICES and (not isinstance(value, str) or value not in _CHOICES[key]):
            raise FormatError(f"{key} {value!r} is not one of {' '.join(_CHOICES[key])}")
        super().__setattr__(key, value)


_CHOICES = {"mm_hl_fusion": FUSIONS, "mm_hl_projector": FEATURE_PROJECTORS}


def load_config(model_path: str | os.PathLike) -> LlavaConfig:
    """Read ``<model_path>/config.json`` into OUR LlavaConfig, whether its model_type is llava_llama or llava.

    transformers' AutoConfig maps ``llava`` to its own composite Llava classes; the released LLaVA-1.5
    checkpoints are flat Llama configs, so they are read here directly.
    """
    path = Path(model_path) / "config.json"
    try:
        config_dict = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{path}: no config.json (not a model checkpoint folder)") from None
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: unreadable config.json ({err})") from None
    model_type = config_dict.pop("model_type", "llava_llama")
    if model_type not in LLAVA_MODEL_TYPES and model_type != "llama":
        raise FormatError(f"{path}: model_type {model_type!r} is not a LLaVA-Llama checkpoint ({', '.join(LLAVA_MODEL_TYPES)})")
    if "text_config" in config_dict:
        raise FormatError(f"{path}: a composite transformers Llava config (text_config/vision_config); "
                          "expected the flat LLaVA-1.5 layout")
    config = LlavaConfig.from_dict(config_dict)
    config._name_or_path = str(model_path)
    return config
