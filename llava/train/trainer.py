"""LLaVA's Trainer: projector learning rate, modality-grouped batches, LoRA checkpoints that survive ZeRO-3.

- ``--mm_projector_lr``: the projector(s) (``mm_projector`` and ``mm_hl_projector``) get their own learning rate.
- ``--group_by_modality_length``: each batch holds records of one modality (with / without images), long
  ones together; works when every record has the same modality.
- Saving a LoRA run (at the end and at every ``checkpoint-N``): the trainable parameters are gathered from
  their ZeRO-3 shards (all ranks take part), then the main process writes, in LLaVA-1.5's layout,
  ``adapter_config.json`` + adapter weights, ``non_lora_trainables.bin`` (e.g.
  ``base_model.model.model.mm_projector.0.weight``), ``config.json`` and the tokenizer. DeepSpeed's own
  checkpoint (optimizer state) is written beside them by the Trainer, for ``--resume_from_checkpoint``.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch
from torch.utils.data import Sampler
from transformers import Trainer

logger = logging.getLogger("llava.train")

NON_LORA_TRAINABLES = "non_lora_trainables.bin"
PROJECTOR_KEYS = ("mm_projector", "mm_hl_projector")


def is_projector_param(name: str) -> bool:
    return any(f".{key}." in f".{name}" for key in PROJECTOR_KEYS)


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def modality_grouped_indices(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """Shuffle within each modality (sign of ``lengths``), cut into chunks of ``batch_size`` sorted longest
    first, shuffle the full chunks; the partial chunks of both modalities go last."""
    groups = [[i for i, n in enumerate(lengths) if n >= 0], [i for i, n in enumerate(lengths) if n < 0]]
    full, partial = [], []
    for group in groups:
        order = [group[j] for j in torch.randperm(len(group), generator=generator).tolist()]
        for k in range(0, len(order), batch_size):
            chunk = sorted(order[k : k + batch_size], key=lambda i: -abs(lengths[i]))
            (full if len(chunk) == batch_size else partial).append(chunk)
    chunks = [full[j] for j in torch.randperm(len(full), generator=generator).tolist()] + partial
    return [i for chunk in chunks for i in chunk]


class ModalityLengthGroupedSampler(Sampler):
    """Indices for ``--group_by_modality_length``; ``batch_size`` is the global batch (all devices)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, g))


def gather_trainable(model) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable parameters, gathered from ZeRO-3 shards where they are sharded.

    Must be called on every rank (the gather is collective)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                out[name] = p.data.detach().cpu().clone()
        else:
            out[name] = p.detach().cpu().clone()
        if out[name].numel() == 0:
            raise RuntimeError(f"parameter {name} gathered empty; refusing to save a broken checkpoint")
    return out


def save_llava_config(model, output_dir: str) -> None:
    """config.json of the base model, with use_cache back on for inference."""
    config = model.get_base_model().config if is_peft(model) else model.config
    use_cache = config.use_cache
    config.use_cache = True
    config.save_pretrained(output_dir)
    config.use_cache = use_cache


class LLaVATrainer(Trainer):
    # The base checkpoint's sentencepiece file, copied into every LoRA checkpoint (LLaVA-1.5's layout).
    tokenizer_model_file: str | None = None

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_modality_length and dataset is not None:
            return ModalityLengthGroupedSampler(
                dataset.modality_lengths,
                self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        if self.args.mm_projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
        groups = []
        for projector in (False, True):
            for with_decay in (True, False):
                params = [p for n, p in named if is_projector_param(n) == projector and (n in decay) == with_decay]
                if not params:
                    continue
                group = {"params": params, "weight_decay": self.args.weight_decay if with_decay else 0.0}
                if projector:
                    group["lr"] = self.args.mm_projector_lr
                groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not is_peft(self.model):
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                save_llava_config(self.model, output_dir or self.args.output_dir)
            return
        output_dir = output_dir or self.args.output_dir
        trainable = gather_trainable(self.model)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        lora = {k: v for k, v in trainable.items() if "lora_" in k}
        non_lora = {k: v for k, v in trainable.items() if "lora_" not in k}
        self.model.save_pretrained(output_dir, state_dict=lora)
        torch.save(non_lora, os.path.join(output_dir, NON_LORA_TRAINABLES))
        save_llava_config(self.model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.tokenizer_model_file and os.path.isfile(self.tokenizer_model_file):
            shutil.copyfile(self.tokenizer_model_file, os.path.join(output_dir, "tokenizer.model"))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        logger.info("saved LoRA checkpoint %s (%d adapter tensors, %d other trainables)", output_dir, len(lora),
                    len(non_lora))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Adapter weights via the Trainer, then the projector(s) from ``non_lora_trainables.bin``."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        path = os.path.join(resume_from_checkpoint, NON_LORA_TRAINABLES)
        if is_peft(model) and os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
            params = dict(model.named_parameters())
            missing = [k for k in state if k not in params]
            if missing:
                raise RuntimeError(f"{path}: keys not in the model: {missing[:3]}")
            with torch.no_grad():
                for k, v in state.items():
                    params[k].copy_(v.to(params[k].dtype))
