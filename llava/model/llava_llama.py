"""LlavaLlamaModel / LlavaLlamaForCausalLM: transformers' Llama plus a CLIP tower, the projector(s) and the splice."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from eeg_core.errors import FormatError
from llava.model.config import (
    FEATURE_PROJECTORS,
    FUSION_MODES,
    LlavaConfig,
    load_config,
)
from llava.model.multimodal import LlavaMetaForCausalLM
from llava.model.projector import build_vision_projector
from llava.model.vision_tower import CLIPVisionTower, build_vision_tower


class LlavaLlamaModel(LlamaModel):
    """LlamaModel with ``vision_tower`` (never part of the weights file), ``mm_projector`` and, for
    ``mm_hl_projector == "separate"``, ``mm_hl_projector``."""

    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config: LlavaConfig):
        super().__init__(config)
        self.vision_tower: CLIPVisionTower | None = None
        self.mm_projector: nn.Module | None = None
        self.mm_hl_projector: nn.Module | None = None
        if getattr(config, "mm_vision_tower", None):
            self.vision_tower = build_vision_tower(config, base_dirs=_checkpoint_dirs(config))
        if getattr(config, "mm_hidden_size", None):
            self.mm_projector = build_vision_projector(config)
            if config.mm_hl_projector == "separate":
                self.mm_hl_projector = build_vision_projector(config)

    def get_vision_tower(self) -> CLIPVisionTower | None:
        return self.vision_tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Training's entry (as LLaVA): load the tower named by ``model_args.vision_tower``, record the mm_* keys
        in the config and build the projector(s) unless they exist already (their weights are kept)."""
        config = self.config
        config.mm_vision_tower = str(model_args.vision_tower)
        config.mm_vision_select_layer = getattr(model_args, "mm_vision_select_layer", -2)
        config.mm_vision_select_feature = getattr(model_args, "mm_vision_select_feature", "patch")
        config.mm_patch_merge_type = getattr(model_args, "mm_patch_merge_type", "flat")
        for arg, key, choices in (("hl_fusion", "mm_hl_fusion", FUSION_MODES),
                                  ("hl_projector", "mm_hl_projector", FEATURE_PROJECTORS)):
            value = getattr(model_args, arg, None)
            if value is not None:
                if value not in choices:
                    raise FormatError(f"--{arg} {value!r} is not one of {' '.join(choices)}")
                setattr(config, key, value)

        tower = self.vision_tower
        if tower is None or tower.vision_tower_name != config.mm_vision_tower:
            tower = build_vision_tower(config, base_dirs=_checkpoint_dirs(config))
        tower.select_layer = config.mm_vision_select_layer
        tower.select_feature = config.mm_vision_select_feature
        tower.load_model()
        self.vision_tower = tower

        config.use_mm_proj = True
        config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")
        config.mm_hidden_size = tower.hidden_size
        if self.mm_projector is None:
            self.mm_projector = build_vision_projector(config).to(device=self.embed_tokens.weight.device)
        self.mm_projector.requires_grad_(True)
        if config.mm_hl_projector == "separate":
            if self.mm_hl_projector is None:
                self.mm_hl_projector = build_vision_projector(config).to(device=self.embed_tokens.weight.device)
            self.mm_hl_projector.requires_grad_(True)

        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            load_projector_weights(self.mm_projector, adapter)


def load_projector_weights(projector: nn.Module, path) -> None:
    """LLaVA's pretrained projector (``mm_projector.bin``, keys ``model.mm_projector.*``) into ``projector``.
    Under ZeRO-3 the projector's weights are partitioned (each rank holds a shard, the parameters themselves are
    empty): they are gathered, loaded on rank 0 and partitioned again."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    params = list(projector.parameters())
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                projector.load_state_dict(state)
    else:
        projector.load_state_dict(state)


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaConfig
    config: LlavaConfig

    def __init__(self, config: LlavaConfig):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """As transformers', but a local folder's config.json is read by ``load_config`` (so model_type ``llava``,
        the released LLaVA-1.5 checkpoints, loads through our LlavaConfig without AutoConfig)."""
        if config is None and (Path(pretrained_model_name_or_path) / "config.json").is_file():
            config = load_config(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, images=None, image_sizes=None,
                high_level_features=None, return_dict=None, cache=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, cache, inputs_embeds, labels = \
                self.prepare_inputs_labels_for_multimodal(input_ids, position_ids, attention_mask, cache, labels,
                                                          images, image_sizes, high_level_features)
        if return_dict is not None:
            kwargs["return_dict"] = return_dict
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               **kwargs)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, images=None, image_sizes=None,
                 high_level_features=None, **kwargs):
        """Splice (always padding LEFT), then transformers' generate on the embeddings: returns only new tokens."""
        if "inputs_embeds" in kwargs:
            raise ValueError("pass input_ids (with -200 for <image>), not inputs_embeds")
        inputs = inputs if inputs is not None else kwargs.pop("input_ids")
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)  # recomputed from the left-padded attention mask
        spliced = self.splice(inputs, attention_mask, None, images, high_level_features, padding_side="left")
        return super().generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, **kwargs)


def _checkpoint_dirs(config) -> tuple[str, ...]:
    """Folders a relative mm_vision_tower is resolved against: the checkpoint the config came from."""
    name = getattr(config, "_name_or_path", None)
    return (name,) if name and Path(name).is_dir() else ()


AutoConfig.register("llava_llama", LlavaConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM, exist_ok=True)
