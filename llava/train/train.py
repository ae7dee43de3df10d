"""Fine-tune LLaVA-1.5 on EEG records with high-level features (LoRA or full), under DeepSpeed or plain PyTorch.

    deepspeed llava/train/train_mem.py --lora_enable True ... --data_path sleep_data/eeg_ft.json ...
    python llava/train/train_mem.py ...        (one process, no DeepSpeed)

Every input is checked before the first step and before anything is written to ``--output_dir``: the
conversation version, the records, each real image's header, the features (``[N, 1, mm_hidden_size]``, finite,
a row per record, no pickles). Bad input ends with one line (``FormatError``) and exit status 2.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
import transformers
from transformers import HfArgumentParser

from eeg_vlm.formats import FormatError
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.dataset import make_supervised_data_module

logger = logging.getLogger("llava.train")


def parse_args(argv: Sequence[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=None if argv is None else list(argv))


def setup_reporting(training_args: TrainingArguments) -> None:
    """``--report_to wandb``: offline when there is no API key (nothing leaves the machine), dropped if not installed."""
    if "wandb" not in training_args.report_to:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        logger.warning("--report_to wandb: wandb is not installed; not reporting to wandb")
        training_args.report_to = [r for r in training_args.report_to if r != "wandb"]
        return
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        logger.info("wandb mode %s (from WANDB_MODE)", os.environ["WANDB_MODE"])
    elif not has_key:
        os.environ["WANDB_MODE"] = "offline"
        logger.warning("--report_to wandb: no WANDB_API_KEY; wandb runs offline (sync later with `wandb sync`)")


def check_options(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    from llava.conversation import get_conv_template

    get_conv_template(model_args.version)  # unknown version -> FormatError
    if not model_args.model_name_or_path:
        raise FormatError("--model_name_or_path is required")
    if not data_args.data_path:
        raise FormatError("--data_path is required")
    if training_args.bits != 16:
        raise FormatError(f"--bits {training_args.bits}: quantised training is not supported here (use 16)")
    if model_args.mm_use_im_start_end or model_args.mm_use_im_patch_token:
        raise FormatError("--mm_use_im_start_end / --mm_use_im_patch_token True are not supported (LLaVA-1.5 uses False)")
    if data_args.image_aspect_ratio not in ("pad", "square"):
        raise FormatError(f"--image_aspect_ratio {data_args.image_aspect_ratio!r} is not one of pad square")


def lm_linear_names(model) -> list[str]:
    """Full names of the language model's linear layers (decoder blocks only: never the vision tower, the
    projector(s) or lm_head)."""
    decoder = model.get_model().layers
    prefix = "model.layers."
    return [prefix + name for name, module in decoder.named_modules() if isinstance(module, torch.nn.Linear)]


def build_model(model_args, training_args, attn_implementation: str | None):
    from llava.model import LlavaLlamaForCausalLM
    from llava.model.config import load_config

    dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    config = load_config(model_args.model_name_or_path)
    kwargs = dict(config=config, dtype=dtype)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = LlavaLlamaForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    model.config.use_cache = False
    if model_args.vision_tower is not None:
        model.get_model().initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    if model.get_model().get_vision_tower() is None:
        raise FormatError(f"{model_args.model_name_or_path}: no vision tower (give --vision_tower)")
    inner = model.get_model()
    for module in (inner.get_vision_tower(), inner.mm_projector, inner.mm_hl_projector):
        if module is not None:
            module.to(dtype=dtype)
    return model


def set_trainable(model, model_args, training_args, freeze_lm: bool) -> None:
    """Vision tower frozen; projector(s) trainable (unless --freeze_mm_mlp_adapter); the LM frozen if asked."""
    inner = model.get_model()
    if freeze_lm:
        model.requires_grad_(False)
    inner.get_vision_tower().requires_grad_(False)
    for name in ("mm_projector", "mm_hl_projector"):
        module = getattr(inner, name, None)
        if module is not None:
            module.requires_grad_(not training_args.freeze_mm_mlp_adapter)


def train(argv: Sequence[str] | None = None, attn_implementation: str | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``), check every input, train, save. Returns the trainer."""
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    check_options(model_args, data_args, training_args)
    setup_reporting(training_args)

    from llava.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_args.model_name_or_path, model_max_length=training_args.model_max_length,
                               padding_side="right")
    # Records and images before the model (cheap and fails fast); features once mm_hidden_size is known.
    from eeg_vlm import formats
    from llava.train.dataset import check_records

    records = formats.read_records(data_args.data_path)
    check_records(records, data_args.data_path, data_args.image_folder)

    transformers.set_seed(training_args.seed)  # seeded init: same LoRA / new projector weights on every rank count
    model = build_model(model_args, training_args, attn_implementation)
    config = model.config
    tower = model.get_model().get_vision_tower()
    data_args.image_processor = tower.image_processor
    data_args.is_multimodal = True
    data_module = make_supervised_data_module(tokenizer, data_args, model_args, training_args,
                                              mm_hidden_size=config.mm_hidden_size, records=records)

    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = training_args.model_max_length
    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    config.conv_version = model_args.version
    config.mm_hl_fusion = model_args.hl_fusion
    config.mm_hl_projector = model_args.hl_projector
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, key, None) is not None:
            setattr(config, key, getattr(tokenizer, key))

    # Imported late: the Trainer's import reads WANDB_MODE (see TrainingArguments.__post_init__).
    from llava.train.trainer import LLaVATrainer, is_projector_param

    set_trainable(model, model_args, training_args,
                  freeze_lm=training_args.lora_enable or model_args.tune_mm_mlp_adapter or model_args.freeze_backbone)
    if training_args.activation_checkpointing:
        model.enable_input_require_grads()
    if training_args.lora_enable:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(
            r=training_args.lora_r,
            lora_alpha=training_args.lora_alpha,
            target_modules=lm_linear_names(model),
            lora_dropout=training_args.lora_dropout,
            bias=training_args.lora_bias,
            task_type="CAUSAL_LM",
        )
        transformers.set_seed(training_args.seed)  # LoRA A's init, whatever ran since (ZeRO-3 init, rank count)
        with warnings.catch_warnings():  # peft reads the deprecated is_gradient_checkpointing (transformers 5)
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, lora_config)
        set_trainable(model.get_base_model(), model_args, training_args, freeze_lm=False)  # peft froze the projector(s)

    def numel(p):  # a ZeRO-3 shard's numel() is 0; ds_numel is the full size
        return getattr(p, "ds_numel", p.numel())

    n_train = sum(numel(p) for p in model.parameters() if p.requires_grad)
    n_proj = sum(numel(p) for n, p in model.named_parameters() if p.requires_grad and is_projector_param(n))
    logger.info("trainable parameters: %d (projectors %d); fusion %s, projector for features %s, dtype %s",
                n_train, n_proj, config.mm_hl_fusion, config.mm_hl_projector, next(model.parameters()).dtype)

    trainer = LLaVATrainer(model=model, processing_class=tokenizer, args=training_args, **data_module)
    trainer.tokenizer_model_file = os.path.join(model_args.model_name_or_path, "tokenizer.model")
    resume = training_args.resume_from_checkpoint
    from llava.train.zero_resume import prepare_resume

    prepare_resume(trainer, resume)  # a ZeRO checkpoint written by another number of ranks
    trainer.train(resume_from_checkpoint=resume if resume else None)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    return trainer


def main(argv: Sequence[str] | None = None) -> None:
    train(argv)


if __name__ == "__main__":
    from eeg_vlm.cli import run

    run(main)
