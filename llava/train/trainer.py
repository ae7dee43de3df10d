"""LLaVA's Trainer: projector learning rate, modality-grouped batches, LoRA checkpoints that survive ZeRO-3.

- ``--mm_projector_lr``: the projector(s) (``mm_projector`` and ``mm_hl_projector``) get their own learning rate.
- ``--group_by_modality_length``: each batch holds records of one modality (with / without images), long
  ones together; works when every record has the same modality.
- ``--class_balance P`` (EEG-VLM; 0, off, by default as in the paper): records are drawn with replacement with
  weight ``count(stage) ** -P`` by their ``label``, so ``1`` gives every stage an equal share of the
  batches and ``0.5`` halves the imbalance; then grouped by modality as above when that flag is on.
- Saving a LoRA run (at the end and at every ``checkpoint-N``): the trainable parameters are gathered from
  their ZeRO-3 shards (all ranks take part), then the main process writes, in LLaVA-1.5's layout,
  ``adapter_config.json`` + adapter weights, ``non_lora_trainables.bin`` (e.g.
  ``base_model.model.model.mm_projector.0.weight``), ``config.json`` and the tokenizer. DeepSpeed's own
  checkpoint (optimizer state) is written beside them by the Trainer, for ``--resume_from_checkpoint``.
- Every save is atomic: ``checkpoint-N`` is written whole into ``<output_dir>/.checkpoint-staging/`` and then
  renamed into place; the final save goes through ``<output_dir>/.final-staging/`` (``config.json`` moved last).
  A kill mid-save leaves only a staging folder, which the next run removes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil

import torch
from torch.utils.data import Sampler
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from eeg_core.atomic import swap_folder
from eeg_core.errors import FormatError
from llava.constants import NON_LORA_TRAINABLES
from llava.train.checkpoints import CHECKPOINT_STAGING, FINAL_STAGING, TRAINER_STATE

logger = logging.getLogger("llava.train")

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


def class_balanced_indices(labels: list[str], power: float, generator: torch.Generator) -> list[int]:
    """``len(labels)`` indices drawn with replacement, each record weighted ``count(its label) ** -power``."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    weights = torch.tensor([counts[label] ** -power for label in labels], dtype=torch.float64)
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator).tolist()


class ClassBalancedSampler(Sampler):
    """Indices for ``--class_balance``: a fresh balanced draw every epoch (seed + epoch), optionally
    grouped by modality."""

    def __init__(self, labels: list[str], power: float, seed: int = 0, lengths: list[int] | None = None,
                 batch_size: int = 1):
        self.labels, self.power, self.seed = list(labels), power, seed
        self.lengths, self.batch_size = lengths, batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = class_balanced_indices(self.labels, self.power, g)
        if self.lengths is None:
            return iter(drawn)
        order = modality_grouped_indices([self.lengths[i] for i in drawn], self.batch_size, g)
        return iter(drawn[j] for j in order)


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


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LLaVATrainer(Trainer):
    """``tokenizer_model_file``: the base checkpoint's sentencepiece file, copied into every LoRA checkpoint
    (LLaVA-1.5's layout); every other argument is the Trainer's."""

    # While a checkpoint is being saved: the staging folder the Trainer writes it into (see _get_output_dir).
    _staging_dir: str | None = None

    def __init__(self, *args, tokenizer_model_file: str | None = None, **kwargs):
        self.tokenizer_model_file = tokenizer_model_file
        super().__init__(*args, **kwargs)
        self._cpu_float16_amp()

    def _cpu_float16_amp(self) -> None:
        """``--fp16`` on the CPU without DeepSpeed, as on a GPU: float16 autocast and a gradient scaler.

        accelerate runs float16 mixed precision only on accelerators; on the CPU it would train with neither
        autocast nor loss scaling, so small float16 gradients would underflow to zero unseen. torch's
        ``GradScaler("cpu")`` does what the CUDA one does; it is set before ``accelerator.prepare``, which
        wraps the optimizer and the forward with it."""
        acc = self.accelerator
        if (self.args.fp16 and not self.is_deepspeed_enabled and acc.device.type == "cpu" and acc.scaler is None):
            acc.scaler = torch.amp.GradScaler("cpu")
            acc.native_amp = True
            logger.info("--fp16 on the CPU: float16 autocast with torch.amp.GradScaler('cpu')")

    def _is_saver(self) -> bool:
        """The process that moves finished saves into place (one per node with --save_on_each_node)."""
        return self.args.should_save

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir if self._staging_dir is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's save (model, optimizer, scheduler, RNG, trainer state: ``trainer_state.json`` last)
        into ``<output_dir>/.checkpoint-staging/checkpoint-N``, then one rename to ``<output_dir>/checkpoint-N``,
        then the rotation (``--save_total_limit``) over the real folder."""
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staging = os.path.join(run_dir, CHECKPOINT_STAGING)
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self._is_saver():
            shutil.rmtree(staged, ignore_errors=True)
            os.makedirs(staging, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank's shards are in before the rename
        if self._is_saver():
            # A checkpoint of the same step (a resumed run passing it again) moves aside into the staging folder.
            swap_folder(staged, final, old=os.path.join(staging, name + ".old"))
            _fsync_dir(run_dir)
            try:
                os.rmdir(staging)
            except OSError:
                pass
            best = self.state.best_model_checkpoint
            if best is not None and os.path.normpath(best) == os.path.normpath(staged):
                self.state.best_model_checkpoint = final
                self.state.save_to_json(os.path.join(final, TRAINER_STATE))
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_final(self, output_dir: str) -> None:
        """The end-of-training save (model files and ``trainer_state.json``) into ``<output_dir>/.final-staging``,
        then each file moved into ``output_dir``: ``config.json`` is removed first and moved in last, so a folder
        with a ``config.json`` holds a whole save."""
        staging = os.path.join(output_dir, FINAL_STAGING)
        if self._is_saver():
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.save_model(staging)
        if self._is_saver():
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE))
        self.accelerator.wait_for_everyone()
        if self._is_saver():
            config = os.path.join(output_dir, "config.json")
            if os.path.exists(config):
                os.remove(config)
            names = sorted(os.listdir(staging), key=lambda n: n == "config.json")
            for name in names:
                target = os.path.join(output_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                os.replace(os.path.join(staging, name), target)
            _fsync_dir(output_dir)
            os.rmdir(staging)
        self.accelerator.wait_for_everyone()

    def _run_epoch(self, *args, **kwargs):
        """The Trainer's epoch, unless ``--max_steps`` is reached already: a run resumed from the checkpoint of
        its last step (a kill during the final save) would otherwise take one more step (the loop checks the
        limit only after a step) and save a spurious ``checkpoint-<max_steps + 1>``. It loads the checkpoint,
        trains nothing, and its final save equals an uninterrupted run's."""
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch = self.args.train_batch_size * self.args.world_size * self.args.gradient_accumulation_steps
        lengths = dataset.modality_lengths if self.args.group_by_modality_length and dataset is not None else None
        if self.args.class_balance and dataset is not None:
            return ClassBalancedSampler(dataset.stage_labels, self.args.class_balance, seed, lengths, batch)
        if lengths is not None:
            return ModalityLengthGroupedSampler(lengths, batch, seed=seed)
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
        with _one_line(resume_from_checkpoint, "model weights"):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        path = os.path.join(resume_from_checkpoint, NON_LORA_TRAINABLES)
        if is_peft(model) and os.path.isfile(path):
            with _one_line(path, "projector weights"):
                state = torch.load(path, map_location="cpu", weights_only=True)
            params = dict(model.named_parameters())
            missing = [k for k in state if k not in params]
            if missing:
                raise FormatError(f"{path}: keys not in the model: {missing[:3]} (a checkpoint of another model?)")
            with torch.no_grad():
                for k, v in state.items():
                    if not hasattr(params[k], "ds_id") and params[k].shape != v.shape:  # (a ZeRO-3 shard is empty)
                        raise FormatError(f"{path}: {k} has shape {list(v.shape)}, the model's is "
                                          f"{list(params[k].shape)} (a checkpoint of another model?)")
                    params[k].copy_(v.to(params[k].dtype))

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        with _one_line(checkpoint, "optimizer / scheduler state"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint) -> None:
        with _one_line(checkpoint, "RNG state"):
            super()._load_rng_state(checkpoint)


@contextlib.contextmanager
def _one_line(path, what: str):
    """A failure to load part of a resume checkpoint becomes one line naming the file or folder."""
    try:
        yield
    except FormatError:
        raise
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, EOFError, OSError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise FormatError(f"{path}: cannot resume from its {what} ({type(e).__name__}: {first[:200]})") from None
