"""``--resume_from_checkpoint`` on another number of ranks than the checkpoint was written by (DeepSpeed ZeRO).

DeepSpeed ZeRO saves the optimizer state (and, under ZeRO-3, the fp32 weights) as one partition per rank
(``global_stepN/zero_pp_rank_<r>_mp_rank_00_optim_states.pt``) and refuses to load them on another world
size ("Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not currently
supported"). DeepSpeed's own answer is the *universal* checkpoint: ``deepspeed.checkpoint.ds_to_universal``
rewrites the partitions as one whole tensor per parameter (weights, Adam moments), which any world size
loads with ``"checkpoint": {"load_universal": true}``.

:func:`prepare_resume` does that when, and only when, the world size changed: the main process of each node
converts ``global_stepN`` into ``global_stepN_universal`` beside it (once; a later resume reuses it), every
rank waits for it, and the engine is told to load the universal copy. Same world size: nothing happens and
DeepSpeed loads its partitions as usual.

Two repairs on top, for DeepSpeed 0.19.8's ZeRO-3 universal load (``load_hp_checkpoint_state_from_checkpoint_dir_
stage3``), which assumes a single parameter group while LLaVA's trainer has up to four (LoRA / projector x
decay / no decay):
- it copies the FIRST group's hyper-parameters (lr, weight decay, ...) into every group, which would give the
  projector(s) the LoRA learning rate instead of ``--mm_projector_lr`` for the first step after resuming: the
  saved per-group values (the universal checkpoint's ``zero/optimizer_state.pt``) are put back;
- it gives every group's Adam state the same ``step`` tensor, which Adam increments in place once per group,
  so group k would use the bias correction of step t + k (measured: the projector biases' first update after
  resuming 15 % too small): each state gets its own copy.
Both before the first step (``on_train_begin``); with them a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from eeg_core.atomic import atomic_path, staging_folder, swap_folder

logger = logging.getLogger("llava.train")

_PARTITION = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


def checkpoint_tag(checkpoint: str | os.PathLike) -> str | None:
    """The DeepSpeed tag (``global_stepN``) the checkpoint's ``latest`` file names, or None without one."""
    latest = Path(checkpoint) / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    return tag if (Path(checkpoint) / tag).is_dir() else None


def saved_world_size(checkpoint: str | os.PathLike, tag: str) -> int:
    """How many data-parallel ranks wrote the ZeRO partitions of ``checkpoint/tag``."""
    ranks = {int(m.group(1)) for f in os.listdir(Path(checkpoint) / tag) if (m := _PARTITION.match(f))}
    return len(ranks)


def convert_to_universal(checkpoint: str | os.PathLike, tag: str) -> str:
    """Write ``checkpoint/<tag>_universal`` (and ``latest_universal`` naming it) unless it is there already.

    Written under a temporary name and renamed, so an interrupted conversion is never taken for a finished one
    and two nodes converting onto one shared file system do not mix their files."""
    root = Path(checkpoint)
    final = root / f"{tag}_universal"
    if not final.is_dir():
        tmp = staging_folder(final)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(root / tag),
               "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"]
        logger.info("checkpoint %s: converting its ZeRO partitions to DeepSpeed's universal format (%s)", root,
                    final.name)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{root}: converting {tag} to a universal checkpoint failed: {last}")
        swap_folder(tmp, final, replace=False)  # another node may have finished first: its folder stays
    latest = root / "latest_universal"
    if not latest.is_file() or latest.read_text().strip() != final.name:
        with atomic_path(latest) as part:
            part.write_text(final.name)
    return final.name


def prepare_resume(trainer, checkpoint: str | None) -> bool:
    """Before ``trainer.train(resume_from_checkpoint=checkpoint)``: when the checkpoint's ZeRO state was written
    by another number of ranks, convert it (see the module) and make the engine load the universal copy.
    Returns True when it did. Collective under DeepSpeed: every rank must call it."""
    if not checkpoint or not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    tag = checkpoint_tag(checkpoint)
    if tag is None:
        return False
    saved, world = saved_world_size(checkpoint, tag), trainer.args.world_size
    if saved in (0, world):
        return False
    logger.info("checkpoint %s was written by %d ranks, resuming on %d: loading it as a universal checkpoint",
                checkpoint, saved, world)
    if trainer.args.local_process_index == 0:
        convert_to_universal(checkpoint, tag)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    # The dict the engine is built from (Trainer.__init__ filled it from the TrainingArguments).
    ds_config = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    trainer.add_callback(RestoreParamGroups(Path(checkpoint) / f"{tag}_universal" / "zero" / "optimizer_state.pt"))
    return True


def saved_param_groups(optimizer_state: str | os.PathLike) -> list[dict]:
    """The optimizer's parameter groups as saved (hyper-parameters only, in group order)."""
    from llava.train.checkpoints import load_plain

    state = load_plain(optimizer_state, deepspeed=True, mmap=False)  # tensors and DeepSpeed's plain classes only
    return [{k: v for k, v in group.items() if k != "params"}
            for group in state["optimizer_state_dict"]["param_groups"]]


class RestoreParamGroups(TrainerCallback):
    """After DeepSpeed's universal load (``Trainer._prepare_for_training``), before the first step: each parameter
    group gets back its own saved hyper-parameters (see the module)."""

    def __init__(self, optimizer_state: Path):
        self.optimizer_state = optimizer_state

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        saved = saved_param_groups(self.optimizer_state)
        groups = optimizer.param_groups
        if len(saved) != len(groups):
            raise RuntimeError(f"{self.optimizer_state}: {len(saved)} saved parameter groups, the optimizer has "
                               f"{len(groups)}; resume with the flags the checkpoint was trained with")
        for group, values in zip(groups, saved):
            group.update(values)
        # The same load hands ONE step-count tensor to the Adam state of every group; Adam increments it in
        # place once per group, so group k would take its bias correction at step t + k. One tensor each.
        inner = optimizer
        while hasattr(inner, "optimizer"):
            inner = inner.optimizer
        for param_state in inner.state.values():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = param_state["step"].clone()
        logger.info("restored the hyper-parameters of %d parameter groups (lr %s)", len(groups),
                    ", ".join(f"{g['lr']:.3g}" for g in groups))
