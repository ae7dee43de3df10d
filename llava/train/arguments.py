"""Command-line arguments of ``llava/train/train.py``: LLaVA-1.5's three dataclasses, plus the EEG flags.

Compatibility with the documented command on transformers 5:
- ``--evaluation_strategy`` is accepted and copied into ``eval_strategy``;
- ``--warmup_ratio`` is accepted and becomes ``warmup_steps`` (transformers 5 reads a value in [0, 1) there as
  a ratio of the total steps);
- without a GPU, ``--bf16`` / ``--fp16`` are kept (the run trains in that dtype on the CPU, as on a GPU, and a
  log line says so); ``--tf32`` logs a warning and is dropped.

Parsing has no side effect on the process: it neither changes ``os.environ`` nor starts torch.distributed;
``llava.train.train.setup_environment`` does both, once, from ``train()``.

Flags of LLaVA's that are accepted for compatibility and ignored (each says so in its help text):
``--lazy_preprocess`` (always lazy), ``--is_multimodal`` (set from the data), ``--cache_dir``, ``--mpt_attn_impl``,
``--double_quant``, ``--quant_type`` (no quantised training: ``--bits`` must be 16), ``--lora_weight_path``.
``--mm_use_im_patch_token True`` (LLaVA's default) adds ``<im_patch>`` to the tokenizer, as LLaVA does, and never
puts it in a prompt.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
import transformers

from llava.model.config import FEATURE_PROJECTORS, FUSION_MODES
from llava.model.fusion import FUSIONS

logger = logging.getLogger("llava.train")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base LLaVA-1.5 / LLM checkpoint folder."})
    version: str = field(default="v1", metadata={"help": "Conversation template (llava.conversation)."})
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "Train the projector(s) only."})
    vision_tower: str | None = field(default=None)
    mm_vision_select_layer: int = field(default=-1)
    pretrain_mm_mlp_adapter: str | None = field(default=None)
    mm_projector_type: str = field(default="linear")
    mm_use_im_start_end: bool = field(default=False, metadata={"help": "Only False (LLaVA-1.5's setting)."})
    mm_use_im_patch_token: bool = field(
        default=True, metadata={"help": "Adds <im_patch> to the tokenizer (and the embeddings), as LLaVA does; "
                                "LLaVA-1.5 never uses it in a prompt."})
    mm_patch_merge_type: str = field(default="flat")
    mm_vision_select_feature: str = field(default="patch")
    # EEG-VLM
    hl_fusion: Literal[FUSION_MODES] = field(
        default=FUSION_MODES[0],
        metadata={"help": "How a high-level feature fills its placeholder slot: "
                  + "; ".join(f"'{name}' {fusion.about}" for name, fusion in FUSIONS.items()) + "."},
    )
    hl_projector: Literal[FEATURE_PROJECTORS] = field(
        default="shared",
        metadata={"help": "P for the features: the shared mm_projector (the paper's) or a separate projector "
                  "of the same type (learns faster from a random start)."},
    )


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "Train records: a JSON array (LLaVA format)."})
    lazy_preprocess: bool = field(default=False, metadata={"help": "accepted for LLaVA compatibility; ignored "
                                                           "(always lazy)"})
    is_multimodal: bool = field(default=False, metadata={"help": "accepted for LLaVA compatibility; ignored (set "
                                                         "from the data)"})
    image_folder: str | None = field(default=None)
    image_aspect_ratio: str = field(default="square", metadata={"help": "pad | square"})
    # EEG-VLM
    high_level_features: str | None = field(
        default=None,
        metadata={"help": "[N, 1, D] .npy features, row i for record i (or its feature_index); default "
                  "train_high_level_features.npy beside --data_path."},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None, metadata={"help": "accepted for LLaVA compatibility; ignored"})
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    mpt_attn_impl: str | None = field(default="triton", metadata={"help": "accepted for LLaVA compatibility; ignored"})
    model_max_length: int = field(default=512, metadata={"help": "Sequences are right-padded and truncated to this."})
    double_quant: bool = field(default=True, metadata={"help": "accepted for LLaVA compatibility; ignored "
                                                       "(no quantised training)"})
    quant_type: str = field(default="nf4", metadata={"help": "accepted for LLaVA compatibility; ignored "
                                                     "(no quantised training)"})
    bits: int = field(default=16, metadata={"help": "Only 16 (no quantised training here)."})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = field(default="", metadata={"help": "accepted for LLaVA compatibility; ignored"})
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = field(default=False)
    class_balance: float = field(
        default=0.0,
        metadata={"help": "EEG-VLM: draw records with weight count(stage)^-P by their label (1: every stage "
                  "equally often; 0: off, as the paper)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the run already in --output_dir (its checkpoint-N folders and final save); "
                  "without it (or --resume_from_checkpoint) such a folder is refused."},
    )
    # Flags that transformers 5 renamed or folded; accepted so LLaVA-1.5 commands run verbatim.
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Old name of --eval_strategy."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "Warm-up as a ratio of the total steps."})

    def __post_init__(self):
        if self.class_balance < 0:
            raise ValueError(f"--class_balance must be >= 0 (0 is off), got {self.class_balance}")
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps and self.warmup_ratio:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            if self.warmup_ratio:
                self.warmup_steps = self.warmup_ratio
        if self.gradient_checkpointing is not None and self.activation_checkpointing is None:
            # transformers 5 renamed it; same meaning, without the deprecation warning.
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        if not torch.cuda.is_available():
            # With no GPU, say "CPU" to accelerate. Under a launcher it would otherwise find no distributed
            # backend and count ONE process whatever the world size, so the DeepSpeed config is filled with
            # train_batch_size = 1 x per-device batch and DeepSpeed (which sees every rank) stops with
            # "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size". With
            # use_cpu it joins the launcher's ranks over gloo (RANK / WORLD_SIZE / MASTER_* from the launcher);
            # the Trainer's Accelerator still runs DeepSpeed on top (it is not told cpu=True). Without a launcher
            # it is also what lets --bf16 through transformers' GPU check.
            self.use_cpu = True
            self.dataloader_pin_memory = False
            for flag, dtype in (("bf16", "bfloat16"), ("fp16", "float16")):
                if getattr(self, flag):
                    logger.warning("no GPU: --%s True kept, training in %s on the CPU (slower than float32 on "
                                   "most CPUs; --%s False trains in float32)", flag, dtype, flag)
            if self.tf32:
                logger.warning("no GPU: --tf32 True ignored")
                self.tf32 = None
        # With WANDB_MODE=offline, the first import of transformers' integrations (in super().__post_init__)
        # prints "[INFO] Running in WANDB offline mode" to stdout: imported here with stdout captured unless this
        # run reports to wandb (os.environ is left alone).
        targets = self.report_to if isinstance(self.report_to, list) else [self.report_to]
        if not {"wandb", "all"} & set(targets) and "transformers.integrations.integration_utils" not in sys.modules:
            with contextlib.redirect_stdout(io.StringIO()):
                import transformers.integrations.integration_utils  # noqa: F401
        super().__post_init__()
