"""A tiny random LLaVA-1.5 in the original layout, built here, offline, in seconds (for tests and the demo).

``python -m eeg_vlm.tiny --out DIR [--seed N] [--hidden-size 128] [--num-layers 2] ...`` writes::

    DIR/config.json              model_type llava_llama, llava-v1.5's mm_* keys, mm_vision_tower "clip"
    DIR/model.safetensors        Llama + model.mm_projector.0.* / .2.* (mlp2x_gelu)
    DIR/tokenizer.model (+ json) sentencepiece trained here on the EEG prompts/answers and the system prompts
    DIR/generation_config.json
    DIR/clip/                    a CLIP vision tower: hidden size 1024 (features [N,1,1024] as in the real system)

Same seed and sizes -> byte-identical files.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from eeg_core.answer import IMAGE_TOKEN, stage_line, user_prompt
from eeg_core.formats import FEATURE_DIM
from eeg_core.options import add_options, option, options_from_args
from llava.model.config import FEATURE_PROJECTORS, FUSION_MODES

LLAVA_V15_MM_KEYS = {  # as in liuhaotian/llava-v1.5-13b's config.json
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "flat",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "image_aspect_ratio": "pad",
    "use_mm_proj": True,
    "freeze_mm_mlp_adapter": False,
    "tune_mm_mlp_adapter": False,
    "tune_mm_vision_resampler": False,
    "unfreeze_mm_vision_tower": False,
}


def tokenizer_corpus() -> list[str]:
    """EEG questions and chain-of-thought answers, the conversation prompts and role names."""
    from llava.conversation import conv_templates
    from sleep_eeg.images.cot import example_texts

    texts = list(example_texts())
    for conv in conv_templates.values():
        texts += [conv.system, *conv.roles]
    texts += [IMAGE_TOKEN, f"USER: {user_prompt('What is the sleep stage?', 2)} ASSISTANT:"]
    return [t for t in texts if t]


def build_tiny_clip(out_dir: Path, seed: int, image_size: int = 56, patch_size: int = 14, num_layers: int = 2,
                    hidden_size: int = FEATURE_DIM, intermediate_size: int = 512, num_heads: int = 8) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=intermediate_size,
                              num_hidden_layers=num_layers, num_attention_heads=num_heads,
                              image_size=image_size, patch_size=patch_size, projection_dim=hidden_size)
    CLIPVisionModel(config).save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class TinyLlavaConfig:
    """The tiny checkpoint's sizes and feature fusion (the defaults build the tests' base); the fields made with
    ``option`` are ``python -m eeg_vlm.tiny``'s flags."""

    hidden_size: int = option(128, "the language model's width")
    num_layers: int = option(2, "its decoder layers")
    num_heads: int = option(4, "its attention heads")
    intermediate_size: int | None = option(None, "its MLP width (default 4 x hidden size)", type=int)
    vocab_size: int = option(1000, "the SentencePiece vocabulary trained on the EEG texts")
    max_position_embeddings: int = option(2048, "the longest sequence (and the tokenizer's model_max_length)")
    image_size: int = option(56, "the CLIP tower's input size (px)")
    patch_size: int = 14
    clip_layers: int = option(2, "the CLIP tower's layers")
    mm_hidden_size: int = FEATURE_DIM
    hl_fusion: str = option(FUSION_MODES[0], "how a feature fills its placeholder slot", choices=FUSION_MODES)
    hl_projector: str = option(FEATURE_PROJECTORS[0], "which projector maps the features",
                               choices=FEATURE_PROJECTORS)


DEFAULT = TinyLlavaConfig()


def build_tiny_llava(out_dir: str | os.PathLike, seed: int = 0, config: TinyLlavaConfig = DEFAULT) -> Path:
    """Write the tiny checkpoint of ``config``'s sizes into ``out_dir`` (created) and return it."""
    from llava.model.config import LlavaConfig
    from llava.model.llava_llama import LlavaLlamaForCausalLM
    from llava.tokenizer import load_tokenizer, train_sentencepiece

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_length = config.max_position_embeddings
    train_sentencepiece(tokenizer_corpus(), out_dir, vocab_size=config.vocab_size, seed=seed,
                        model_max_length=max_length)
    tokenizer = load_tokenizer(out_dir)
    build_tiny_clip(out_dir / "clip", seed, config.image_size, config.patch_size, config.clip_layers,
                    config.mm_hidden_size)

    llava_config = LlavaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size or 4 * config.hidden_size, max_position_embeddings=max_length,
        rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        architectures=["LlavaLlamaForCausalLM"],
        mm_vision_tower="clip", mm_hidden_size=config.mm_hidden_size, tokenizer_model_max_length=max_length,
        tokenizer_padding_side="right", mm_hl_fusion=config.hl_fusion, mm_hl_projector=config.hl_projector,
        **LLAVA_V15_MM_KEYS,
    )
    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM(llava_config)  # the CLIP shell holds no weights: only Llama + projector are saved
    model.save_pretrained(out_dir)
    return out_dir


def train_stage_only(base: str | os.PathLike, out: str | os.PathLike, images, features, labels, steps: int = 40,
                     lr: float = 1.5e-3, seed: int = 0) -> Path:
    """Fine-tune the tiny checkpoint ``base`` (all of it but CLIP, on the CPU, about 10 s) into ``out`` to answer
    ``Sleep stage: X`` to the first question template for each ``(image, feature [1, D], label)``: a stage-only
    checkpoint whose greedy answers are stages, for tests and benchmarks of the answer modes."""
    import shutil

    from PIL import Image
    from safetensors.torch import save_file

    from llava.constants import IGNORE_INDEX
    from llava.mm_utils import process_images
    from llava.model.builder import load_pretrained_model
    from llava.padding import pad_sequences
    from llava.train.preprocess import preprocess
    from sleep_eeg.images.cot import QUESTIONS

    out = Path(out)
    shutil.copytree(base, out, dirs_exist_ok=True)
    tokenizer, model, processor, _ = load_pretrained_model(str(base), None, "tiny", device="cpu")
    sources = [[{"from": "human", "value": user_prompt(QUESTIONS[0], 2)}, {"from": "gpt", "value": stage_line(s)}]
               for s in labels]
    data = preprocess(sources, tokenizer, has_image=True, version="v1")
    ids, mask = pad_sequences(data["input_ids"], tokenizer.pad_token_id, "right")
    targets, _ = pad_sequences(data["labels"], IGNORE_INDEX, "right")
    mask = mask.long()
    pixels = process_images([(im if isinstance(im, Image.Image) else Image.open(im)).convert("RGB") for im in images],
                            processor, model.config)
    hl = [torch.as_tensor(f, dtype=torch.float32).reshape(1, -1) for f in features]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if "vision_tower" not in n], lr=lr)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=targets, images=pixels, high_level_features=hl).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "vision_tower" not in k}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    add_options(parser, TinyLlavaConfig)
    args = parser.parse_args(argv)
    config = options_from_args(TinyLlavaConfig, args)
    out = build_tiny_llava(args.out, seed=args.seed, config=config)
    print(out)


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
