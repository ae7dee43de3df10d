"""Fine-tune LLaVA-1.5 on EEG records with high-level features (LoRA or full), under DeepSpeed or plain PyTorch.

    deepspeed llava/train/train_mem.py --lora_enable True ... --data_path sleep_data/eeg_ft.json ...
    python llava/train/train_mem.py ...        (one process, no DeepSpeed)

Every input is checked before the first step and before anything is written to ``--output_dir``: the
conversation version, the records (turn order, a gpt reply in each), every real image (inside
``--image_folder``, decoded in full), the features (``[N, 1, mm_hidden_size]``, finite, a row per record and no
more rows than records unless named by ``feature_index``, extracted from this very records file when their
sidecar says from which, no pickles), the output folder (not holding another run unless
``--overwrite_output_dir`` / ``--resume_from_checkpoint``) and the resume checkpoint (whole, no pickle that
needs more than tensors). Bad input ends with one line (``FormatError``) and exit status 2; a run that fails
before its first step removes what it wrote. LoRA and new projectors are initialised from ``--seed``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import transformers
from transformers import HfArgumentParser

from eeg_core.errors import FormatError
from eeg_core.outputs import check_output
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments
from llava.train.dataset import make_supervised_data_module

logger = logging.getLogger("llava.train")


class Arguments(NamedTuple):
    """The command line's three argument groups, as LLaVA parses them."""

    model: ModelArguments
    data: DataArguments
    training: TrainingArguments


def parse_args(argv: Sequence[str] | None = None) -> Arguments:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return Arguments(*parser.parse_args_into_dataclasses(args=None if argv is None else list(argv)))


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
    from llava.mm_utils import ASPECT_RATIOS

    get_conv_template(model_args.version)  # unknown version -> FormatError
    if not model_args.model_name_or_path:
        raise FormatError("--model_name_or_path is required")
    if not data_args.data_path:
        raise FormatError("--data_path is required")
    if training_args.bits != 16:
        raise FormatError(f"--bits {training_args.bits}: quantised training is not supported here (use 16)")
    if model_args.mm_use_im_start_end:
        raise FormatError("--mm_use_im_start_end True is not supported (LLaVA-1.5 uses False)")
    if data_args.image_aspect_ratio not in ASPECT_RATIOS:
        raise FormatError(f"--image_aspect_ratio {data_args.image_aspect_ratio!r} is not one of {' '.join(ASPECT_RATIOS)}")
    counts = [("--per_device_train_batch_size", training_args.per_device_train_batch_size),
              ("--gradient_accumulation_steps", training_args.gradient_accumulation_steps),
              ("--model_max_length", training_args.model_max_length)]
    for flag, value in counts + ([("--lora_r", training_args.lora_r)] if training_args.lora_enable else []):
        if value < 1:  # each fails only inside the run otherwise, in a traceback
            raise FormatError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--learning_rate", training_args.learning_rate),
                        ("--mm_projector_lr", training_args.mm_projector_lr)):
        if value is not None and not value >= 0:  # NaN included
            raise FormatError(f"{flag} must be 0 or more, got {value}")


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


def explicit_flags(argv: Sequence[str] | None) -> set[str]:
    """The ``--flags`` written on the command line (not their defaults)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}


def adopt_base_vision_tower(model_args, base_config, records: list[dict], data_path, flags: set[str]) -> None:
    """Without ``--vision_tower``: take the base's ``mm_vision_tower`` (and its other ``mm_*`` settings, unless
    given on the command line) when its config names one; records with images and no tower are refused here."""
    from eeg_core import formats

    if model_args.vision_tower is not None:
        return
    tower = getattr(base_config, "mm_vision_tower", None)
    if not tower:
        if any(formats.record_images(r) for r in records):
            raise FormatError(f"{data_path}: records have images but there is no vision tower: give --vision_tower "
                              f"(the base's {Path(model_args.model_name_or_path) / 'config.json'} names no "
                              "mm_vision_tower)")
        return
    model_args.vision_tower = tower
    for flag, key in (("mm_vision_select_layer", "mm_vision_select_layer"),
                      ("mm_vision_select_feature", "mm_vision_select_feature"),
                      ("mm_projector_type", "mm_projector_type"), ("mm_patch_merge_type", "mm_patch_merge_type")):
        if flag not in flags and getattr(base_config, key, None) is not None:
            setattr(model_args, flag, getattr(base_config, key))
    logger.info("--vision_tower not given: using the base's mm_vision_tower %s (select layer %s, projector %s)",
                tower, model_args.mm_vision_select_layer, model_args.mm_projector_type)


def check_output_dir(training_args) -> str | None:
    """Refuse an ``--output_dir`` holding another run unless ``--overwrite_output_dir`` or
    ``--resume_from_checkpoint``; resolve and check the resume checkpoint (whole, no pickle that needs more than
    tensors). Returns the checkpoint to resume from, or None."""
    from llava.train import checkpoints as ckpt

    output_dir = Path(training_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FormatError(f"{output_dir}: --output_dir is a file, not a folder")
    check_output(output_dir, "--output_dir", folder=True)
    resume = training_args.resume_from_checkpoint
    previous = ckpt.run_entries(output_dir)
    if previous and not resume and not training_args.overwrite_output_dir:
        shown = ", ".join(previous[:4]) + (f" and {len(previous) - 4} more" if len(previous) > 4 else "")
        raise FormatError(f"{output_dir}: --output_dir holds another run ({shown}); give --resume_from_checkpoint "
                          "to continue it, --overwrite_output_dir True to replace it, or another --output_dir")
    if not resume:
        return None
    path = ckpt.resolve_resume(str(resume), output_dir)
    ckpt.check_pickles(path)
    step = ckpt.checkpoint_step(path)
    later = [p.name for p in ckpt.checkpoints(output_dir) if step is not None and ckpt.checkpoint_step(p) > step]
    if later:
        logger.warning("%s holds %d checkpoint(s) beyond the resume point %s (%s): each is replaced when this run "
                       "saves that step", output_dir, len(later), path.name, ", ".join(later[:3]))
    return str(path)


def clear_previous_run(training_args, resume: str | None) -> None:
    """Just before training: remove the staging folders a killed save left, and with ``--overwrite_output_dir``
    (and no resume) every entry of the previous run."""
    from llava.train import checkpoints as ckpt

    if not training_args.should_save:
        return
    output_dir = Path(training_args.output_dir)
    for name in ckpt.run_entries(output_dir):
        path = output_dir / name
        if name in (ckpt.CHECKPOINT_STAGING, ckpt.FINAL_STAGING) or (training_args.overwrite_output_dir and not resume):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


class _FirstStep(transformers.TrainerCallback):
    """Marks that this run has taken a training step (after which a failure keeps what was written)."""

    def __init__(self):
        self.stepped = False

    def on_step_end(self, args, state, control, **kwargs):
        self.stepped = True


def remove_created(output_dir: Path, existed_before: bool, entries_before: set[str]) -> None:
    """Remove what a run that failed before its first step wrote into ``output_dir``."""
    if not output_dir.exists():
        return
    if not existed_before:
        shutil.rmtree(output_dir, ignore_errors=True)
        return
    for p in output_dir.iterdir():
        if p.name not in entries_before:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging() -> None:
    """The one logging setup of a training run (``train_mem.py`` goes through ``train()`` too)."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()


def setup_environment(training_args: TrainingArguments) -> None:
    """Everything a training run changes in the process, in one call made by ``train()`` (parsing changes nothing):
    wandb's mode in ``os.environ`` (``setup_reporting``) and, for DeepSpeed without a GPU, DeepSpeed's
    communication layer on the process group that accelerate started over gloo (see
    ``TrainingArguments.__post_init__``), so that ZeRO-3's ``zero.Init`` at model load and ``deepspeed.initialize``
    count the launcher's world size. On the CPU its collectives stay on gloo: DeepSpeed's shared-memory allreduce
    op, a C++ extension compiled on first use (1-3 minutes per machine and Python environment), is not built for
    runs that exist to be small (the tests, the demo)."""
    setup_reporting(training_args)
    if training_args.deepspeed and training_args.use_cpu and torch.distributed.is_initialized():
        import importlib

        import deepspeed

        # TorchBackend reads this module's build_shm_op (None: gloo only). Imported by name: the attribute
        # ``deepspeed.comm.torch`` is the torch package itself.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def build_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    """The base's tokenizer, right-padded and cut at ``--model_max_length`` (``<im_patch>`` is added with the
    model, by ``add_image_patch_token``, since the embeddings grow with it)."""
    from llava.tokenizer import load_tokenizer

    return load_tokenizer(model_args.model_name_or_path, model_max_length=training_args.model_max_length,
                          padding_side="right")


def load_inputs(model_args: ModelArguments, data_args: DataArguments, *, base_config, flags: set[str]):
    """The records (checked: turns, replies, every image decoded) and their features; adopts the base's vision
    tower when ``--vision_tower`` is not given. Returns ``(records, features or None)``."""
    from eeg_core import formats
    from llava.train.dataset import check_records, load_train_features

    records = formats.read_records(data_args.data_path)
    check_records(records, data_args.data_path, data_args.image_folder)
    adopt_base_vision_tower(model_args, base_config, records, data_args.data_path, flags)
    return records, load_train_features(data_args, records)


def build_data(model, tokenizer, *, model_args, data_args, training_args, records, features) -> dict:
    """The Trainer's ``train_dataset`` and ``data_collator``; the features' size is checked against the model's."""
    from eeg_core import formats

    config = model.config
    if features is not None:
        path = data_args.high_level_features or formats.default_features_path(data_args.data_path, train=True)
        formats.check_feature_size(path, features, config.mm_hidden_size)
    data_args.image_processor = model.get_model().get_vision_tower().image_processor
    data_args.is_multimodal = True
    return make_supervised_data_module(tokenizer, data_args, model_args, training_args,
                                       mm_hidden_size=config.mm_hidden_size, records=records, features=features)


def record_settings(config, tokenizer, *, model_args, data_args, training_args, records) -> None:
    """What evaluation needs to read back from the saved ``config.json``: image processing, tokenizer settings,
    the conversation template, the fusion, how the images were drawn, the special token ids."""
    from eeg_core import formats

    config.image_aspect_ratio = data_args.image_aspect_ratio
    config.tokenizer_padding_side = tokenizer.padding_side
    config.tokenizer_model_max_length = training_args.model_max_length
    config.mm_use_im_start_end = model_args.mm_use_im_start_end
    config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    config.conv_version = model_args.version
    config.mm_hl_fusion = model_args.hl_fusion
    config.mm_hl_projector = model_args.hl_projector
    config.eeg_render = formats.records_render(records, data_args.data_path)  # how the images were drawn
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, key, None) is not None:
            setattr(config, key, getattr(tokenizer, key))


def trainable_dtype(training_args) -> torch.dtype:
    """The dtype the trainable weights (LoRA, projectors, or the whole LM) are kept in.

    Under DeepSpeed with ``--bf16`` / ``--fp16``: that half dtype. DeepSpeed keeps its own float32 master copy in
    the optimizer, and ZeRO-3 requires every trainable weight to share the model's dtype (its ``defragment``
    asserts a single dtype; peft would otherwise keep LoRA in float32 beside a bfloat16 projector). Without
    DeepSpeed: float32, always. The optimizer then steps float32 weights (a bfloat16 weight ignores most
    updates of size lr x grad), a float16 gradient scaler unscales float32 gradients, and autocast runs the
    compute in half precision."""
    if training_args.deepspeed and (training_args.bf16 or training_args.fp16):
        return torch.bfloat16 if training_args.bf16 else torch.float16
    return torch.float32


def cast_trainable(model, dtype: torch.dtype) -> None:
    """Every trainable weight to ``dtype``. A weight ZeRO-3 has already partitioned (it has a ``ds_id``; its
    ``zero.Init`` gave it DeepSpeed's dtype) is left to DeepSpeed."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype and not hasattr(p, "ds_id"):
            p.data = p.data.to(dtype)


def prepare_trainable(model, *, model_args, training_args):
    """Freezes what is not trained, wraps the model in LoRA when asked, logs the trainable counts. Returns the
    model to train (the peft model under ``--lora_enable``)."""
    from llava.train.trainer import is_projector_param

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
    cast_trainable(model, trainable_dtype(training_args))

    def numel(p):  # a ZeRO-3 shard's numel() is 0; ds_numel is the full size
        return getattr(p, "ds_numel", p.numel())

    config = model.config
    n_train = sum(numel(p) for p in model.parameters() if p.requires_grad)
    n_proj = sum(numel(p) for n, p in model.named_parameters() if p.requires_grad and is_projector_param(n))
    logger.info("trainable parameters: %d (projectors %d); fusion %s, projector for features %s, dtype %s",
                n_train, n_proj, config.mm_hl_fusion, config.mm_hl_projector, next(model.parameters()).dtype)
    return model


def make_trainer(model, tokenizer, *, model_args, training_args, data_module: dict, callbacks: list):
    """LLaVATrainer, given the base's ``tokenizer.model`` to copy into every LoRA checkpoint."""
    # Imported late: the Trainer's import reads WANDB_MODE (set by setup_environment).
    from llava.train.trainer import LLaVATrainer

    return LLaVATrainer(model=model, processing_class=tokenizer, args=training_args, callbacks=callbacks,
                        tokenizer_model_file=os.path.join(model_args.model_name_or_path, "tokenizer.model"),
                        **data_module)


def run_and_save(trainer, *, training_args, resume: str | None) -> None:
    """Clears what a previous run left (staging folders; everything with ``--overwrite_output_dir``), trains
    (from ``resume`` if given, whatever number of ranks wrote it) and saves the final model atomically."""
    from llava.train.zero_resume import prepare_resume

    clear_previous_run(training_args, resume)
    prepare_resume(trainer, resume)  # a ZeRO checkpoint written by another number of ranks
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_final(training_args.output_dir)


@contextlib.contextmanager
def removed_if_no_step(training_args):
    """Yields the callback that notes the first training step; a failure before it removes what the run wrote
    into ``--output_dir`` (on the main process)."""
    output_dir = Path(training_args.output_dir)
    existed_before = output_dir.is_dir()
    entries_before = set(os.listdir(output_dir)) if existed_before else set()
    first_step = _FirstStep()
    try:
        yield first_step
    except BaseException:
        if not first_step.stepped and training_args.process_index == 0:
            remove_created(output_dir, existed_before, entries_before)
        raise


def attention_implementation(bf16: bool, fp16: bool) -> tuple[str, str]:
    """``(implementation, why)`` for a run in bfloat16 (``bf16``), float16 (``fp16``) or float32.

    flash-attention 2 only where transformers can use it (``is_flash_attn_2_available``: the package imports, a
    GPU is present, the installed version works with this transformers) and the run is in half precision
    (flash-attention has no float32 kernel); else PyTorch's sdpa."""
    from transformers.utils import is_flash_attn_2_available

    if not (bf16 or fp16):
        return "sdpa", "float32 run: flash-attention needs --bf16 or --fp16"
    if not is_flash_attn_2_available():
        return "sdpa", "flash-attention 2 is not usable here (no GPU, flash_attn not installed, or it fails to import)"
    return "flash_attention_2", "flash_attn usable, half precision"


def train(argv: Sequence[str] | None = None, attn_implementation: str | None = None, *,
          attn_reason: str | None = None):
    """Parse ``argv`` (default ``sys.argv[1:]``), check every input, train, save. Returns the trainer.

    Steps: parse (no side effect), set up logging, check the options, set up the environment (one call), check
    the output folder, the tokenizer, the records and features, then ``fit``. ``attn_implementation`` (LLaVA's
    argument; ``attn_reason`` says why) defaults to ``attention_implementation``'s choice for the run's dtype."""
    args = parse_args(argv)
    model_args, data_args, training_args = args
    setup_logging()
    if attn_implementation is None:
        attn_implementation, attn_reason = attention_implementation(training_args.bf16, training_args.fp16)
    logger.info("attention: %s%s", attn_implementation, f" ({attn_reason})" if attn_reason else "")
    check_options(model_args, data_args, training_args)
    setup_environment(training_args)

    from llava.model.config import load_config

    # Everything that can be checked without the model is checked first, and nothing is written before.
    resume = check_output_dir(training_args)
    base_config = load_config(model_args.model_name_or_path)
    tokenizer = build_tokenizer(model_args, training_args)
    records, features = load_inputs(model_args, data_args, base_config=base_config, flags=explicit_flags(argv))
    if model_args.vision_tower is not None:  # recorded so that it loads from any working directory
        from llava.model.vision_tower import portable_name

        model_args.vision_tower = portable_name(model_args.vision_tower,
                                                model_args.model_name_or_path if training_args.lora_enable else None)
    with removed_if_no_step(training_args) as first_step:
        return fit(args, attn_implementation=attn_implementation, tokenizer=tokenizer, records=records,
                   features=features, resume=resume, callbacks=[first_step])


def fit(args: Arguments, *, attn_implementation, tokenizer, records, features, resume, callbacks: list):
    """The model, its data, the trainer; trains and saves. Returns the trainer."""
    from llava.model.builder import add_image_patch_token

    model_args, data_args, training_args = args
    transformers.set_seed(training_args.seed)  # seeded init: the same projector weights on every rank count
    model = build_model(model_args, training_args, attn_implementation)
    if model_args.mm_use_im_patch_token:  # as LLaVA: in the tokenizer and the embeddings, never in a prompt
        add_image_patch_token(tokenizer, model)
    data_module = build_data(model, tokenizer, model_args=model_args, data_args=data_args,
                             training_args=training_args, records=records, features=features)
    record_settings(model.config, tokenizer, model_args=model_args, data_args=data_args,
                    training_args=training_args, records=records)
    model = prepare_trainable(model, model_args=model_args, training_args=training_args)
    trainer = make_trainer(model, tokenizer, model_args=model_args, training_args=training_args,
                           data_module=data_module, callbacks=callbacks)
    run_and_save(trainer, training_args=training_args, resume=resume)
    return trainer


def main(argv: Sequence[str] | None = None) -> None:
    train(argv)


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
