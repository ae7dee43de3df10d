"""The multimodal splice: image tokens (-200) in ``input_ids`` become projected CLIP patch features, and a
sample's placeholder image slot takes its high-level feature (``FUSIONS`` of ``llava/model/fusion.py``).

Per sample, in order: drop its padding, embed its text, replace each ``<image>`` by its features, mark those
positions IGNORE_INDEX in the labels, truncate to ``tokenizer_model_max_length``; then pad the batch (right for
training, left for generation) with an attention mask and position ids counted over the real tokens only.

A sample that carries a feature: its LAST ``<image>`` is the placeholder; it consumes no real image, and the fusion
mode fills its slot from the projected feature P_hl(h) and, for ``add``, the sample's first real image. CLIP runs
once per forward, on the real images only.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from eeg_core.errors import FormatError
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.fusion import FUSIONS
from llava.padding import pad_sequences


class Spliced(NamedTuple):
    """What ``splice`` gives the language model: the batch padded (left or right) to one length ``L``."""

    inputs_embeds: torch.Tensor  # [B, L, hidden]: text embeddings with the image and feature slots spliced in
    position_ids: torch.Tensor  # [B, L]: 0..L_i-1 over each sample's real tokens, 0 in the padding
    attention_mask: torch.Tensor  # [B, L]: 1 at real tokens (the input mask's dtype)
    labels: torch.Tensor | None  # [B, L]: IGNORE_INDEX at image slots and padding; None without labels


def normalise_features(high_level_features, batch_size: int, feature_size: int) -> list[torch.Tensor | None]:
    """None | Tensor [B,1,D] (or [B,D]) | list of B (Tensor [1,D] | [1,1,D] | [D] | None) -> list of [1,D] or None."""
    if high_level_features is None:
        return [None] * batch_size
    if isinstance(high_level_features, torch.Tensor):
        high_level_features = list(high_level_features)
    if len(high_level_features) != batch_size:
        raise FormatError(f"{len(high_level_features)} high-level features for a batch of {batch_size} samples")
    features = []
    for feature in high_level_features:
        if feature is not None:
            feature = torch.as_tensor(feature).reshape(1, -1)
            if feature.shape[-1] != feature_size:
                raise FormatError(f"high-level feature size {feature.shape[-1]} does not match the projector's "
                                  f"input size mm_hidden_size={feature_size}")
        features.append(feature)
    return features


def concat_images(images) -> torch.Tensor | None:
    """The real images as one Tensor [N,3,H,W] (from a Tensor, or a list of [n_i,3,H,W] / [3,H,W] tensors)."""
    if images is None:
        return None
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images.reshape(-1, *images.shape[-3:])
    images = [image if image.ndim == 4 else image.unsqueeze(0) for image in images if image is not None]
    return torch.cat(images) if images else None


class LlavaMetaForCausalLM:
    """Mixed into LlavaLlamaForCausalLM; needs ``get_model()`` (with vision tower and projectors) and ``config``."""

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] -> projected patch features [N,P,hidden]."""
        projector = self.get_model().mm_projector
        return projector(self.get_vision_tower()(images).to(_param_dtype(projector, images.dtype)))

    def project_high_level(self, features: torch.Tensor) -> torch.Tensor:
        """[K,D] high-level features -> [K,hidden] through P_hl (the shared mm_projector unless ``separate``)."""
        model = self.get_model()
        projector = model.mm_hl_projector if self.config.mm_hl_projector == "separate" else model.mm_projector
        weight = next(projector.parameters(), None)
        return projector(features.to(device=features.device if weight is None else weight.device,
                                     dtype=_param_dtype(projector, features.dtype)))

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, image_sizes=None, high_level_features=None):
        """LLaVA's signature (with the high-level features) and return value: (None, position_ids, attention_mask,
        past_key_values, inputs_embeds, labels), padded on the config's ``tokenizer_padding_side`` (``generate``
        splices left itself). Batches without any ``<image>`` (and decoding steps) pass through unchanged."""
        has_features = high_level_features is not None and any(f is not None for f in high_level_features)
        if input_ids is None or (not has_features and not (input_ids == IMAGE_TOKEN_INDEX).any()):
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        spliced = self.splice(input_ids, attention_mask, labels, images, high_level_features)
        return (None, spliced.position_ids, spliced.attention_mask, past_key_values, spliced.inputs_embeds,
                spliced.labels)

    def splice(self, input_ids, attention_mask, labels, images, high_level_features=None,
               padding_side=None) -> Spliced:
        """The batch as the language model reads it (``Spliced``: embeddings, positions, mask, labels or None)."""
        config = self.config
        batch_size = input_ids.shape[0]
        mask_dtype = attention_mask.dtype if attention_mask is not None else torch.long
        attention_mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                          else attention_mask.bool())
        label_rows = labels if labels is not None else torch.full_like(input_ids, IGNORE_INDEX)
        features = normalise_features(high_level_features, batch_size, config.mm_hidden_size)

        # Which <image> tokens take a real image: all but a feature-carrying sample's last one.
        image_counts = ((input_ids == IMAGE_TOKEN_INDEX) & attention_mask).sum(dim=1).tolist()
        real_counts = []
        for i, (count, feature) in enumerate(zip(image_counts, features)):
            if feature is not None and count == 0:
                raise FormatError(f"sample {i} carries a high-level feature but has no <image> token for it")
            if feature is not None and count == 1 and FUSIONS[config.mm_hl_fusion].reads_image1:
                raise FormatError(f"sample {i}: fusion {config.mm_hl_fusion!r} needs a real image before the "
                                  "placeholder <image>")
            real_counts.append(count - (feature is not None))
        images = concat_images(images)
        n_images = 0 if images is None else images.shape[0]
        if n_images != sum(real_counts):
            raise FormatError(f"{n_images} images given for {sum(real_counts)} real <image> tokens in the batch "
                              "(placeholder images are not passed; their slot takes the feature)")

        # One CLIP call for the whole batch, one P_hl call for all features, one embedding call for all text.
        image_features = list(self.encode_images(images)) if n_images else []
        rows = [i for i, f in enumerate(features) if f is not None]
        projected_hl = dict(zip(rows, self.project_high_level(torch.cat([features[i] for i in rows])))) if rows else {}
        text_embeds = self.get_model().embed_tokens(input_ids.masked_fill(input_ids == IMAGE_TOKEN_INDEX, 0))

        sample_embeds, sample_labels = [], []
        next_image = 0
        max_length = getattr(config, "tokenizer_model_max_length", None)
        for i in range(batch_size):
            keep = attention_mask[i]
            ids, embeds, labs = input_ids[i][keep], text_embeds[i][keep], label_rows[i][keep]
            image_positions = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
            pieces, piece_labels, start, first_image = [], [], 0, None
            for j, position in enumerate(image_positions):
                pieces.append(embeds[start:position])
                piece_labels.append(labs[start:position])
                if i in projected_hl and j == len(image_positions) - 1:
                    hl = projected_hl[i].unsqueeze(0)  # [1, hidden]
                    slot = FUSIONS[config.mm_hl_fusion].fill(first_image, hl)
                else:
                    slot = image_features[next_image]
                    next_image += 1
                    first_image = slot if first_image is None else first_image
                # The projector may sit on another device than the embeddings (device_map="auto" over GPUs).
                pieces.append(slot.to(device=embeds.device, dtype=embeds.dtype))
                piece_labels.append(labs.new_full((slot.shape[0],), IGNORE_INDEX))
                start = position + 1
            pieces.append(embeds[start:])
            piece_labels.append(labs[start:])
            sample_embeds.append(torch.cat(pieces)[:max_length])
            sample_labels.append(torch.cat(piece_labels)[:max_length])

        return pad_batch(sample_embeds, sample_labels, padding_side or getattr(config, "tokenizer_padding_side", "right"),
                         mask_dtype, labels is not None)


def _param_dtype(module: torch.nn.Module, default: torch.dtype) -> torch.dtype:
    return next((p.dtype for p in module.parameters()), default)


def pad_batch(sample_embeds, sample_labels, padding_side: str, mask_dtype, with_labels: bool) -> Spliced:
    """Pad per-sample [L_i,hidden] embeddings to [B,L,hidden]; mask and positions 0..L_i-1 over real tokens."""
    device = sample_embeds[0].device
    embeds, mask = pad_sequences(sample_embeds, 0, padding_side)
    labels, _ = pad_sequences(sample_labels, IGNORE_INDEX, padding_side, device=device)
    positions, _ = pad_sequences([torch.arange(e.shape[0], device=device) for e in sample_embeds], 0, padding_side)
    return Spliced(embeds, positions, mask.to(mask_dtype), labels.long() if with_labels else None)
