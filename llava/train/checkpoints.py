"""What a training run leaves in ``--output_dir``, and whether a ``checkpoint-N`` in it is whole.

- Saves are atomic: a ``checkpoint-N`` is written into ``<output_dir>/.checkpoint-staging/checkpoint-N`` and
  renamed into place once every file is in (``LLaVATrainer._save_checkpoint``); the final save is written into
  ``<output_dir>/.final-staging`` and its files moved into ``<output_dir>``, ``config.json`` last. A kill leaves
  a staging folder behind, never a half-written ``checkpoint-N``.
- ``checkpoint_problem`` tells a torn or empty checkpoint (a kill during a save of an older version, a full disk,
  a copy cut short) from a whole one; ``resolve_resume`` refuses a torn one in one line naming the last whole one.
- ``run_entries``: what in an ``--output_dir`` belongs to a run, so a new run never mixes with an older one.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from eeg_core.errors import FormatError
from llava.constants import NON_LORA_TRAINABLES

CHECKPOINT_STAGING = ".checkpoint-staging"
FINAL_STAGING = ".final-staging"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
# Files a run writes at the top of --output_dir (the final save, LLaVA's layout, plus the Trainer's own).
RUN_FILES = ("config.json", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
             NON_LORA_TRAINABLES, "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
             "pytorch_model.bin.index.json", TRAINER_STATE, "training_args.bin")
# The files of a checkpoint that are pickles (the Trainer loads them with weights_only=True).
PICKLED = ("optimizer.pt", "scheduler.pt", "scaler.pt")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = _CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint-N`` folders of ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if checkpoint_step(p) is not None and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def run_entries(output_dir: str | os.PathLike) -> list[str]:
    """Names in ``output_dir`` that a training run wrote (checkpoints, staging folders, the final save).
    Anything else (a log the user keeps there, say) is not a run."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    names = []
    for p in sorted(folder.iterdir()):
        if checkpoint_step(p) is not None or p.name in (CHECKPOINT_STAGING, FINAL_STAGING) or p.name in RUN_FILES \
                or p.name.startswith("model-0") or p.name.startswith("pytorch_model-0"):
            names.append(p.name)
    return names


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a whole checkpoint, or None when it is: it exists, holds the Trainer's state
    (written last), a readable config and weights, and no empty file."""
    folder = Path(folder)
    if not folder.exists():
        return "not found"
    if not folder.is_dir():
        return "not a folder"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        return "empty folder"
    for p in files:
        if p.stat().st_size == 0 and p.name != "latest":
            return f"{p.relative_to(folder)} is empty (0 bytes)"
    for name in ("config.json", TRAINER_STATE, "adapter_config.json"):
        path = folder / name
        if name != "adapter_config.json" and not path.is_file():
            return f"no {name}"
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"{name} is not valid JSON"
    weights = [p for p in files if p.parent == folder and (p.suffix in (".safetensors", ".bin"))
               and p.name not in ("training_args.bin",)]
    deepspeed = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("global_step")]
    if not weights and not deepspeed:
        return "no weights"
    return None


def last_complete(output_dir: str | os.PathLike, before: int | None = None) -> Path | None:
    """The whole ``checkpoint-N`` of ``output_dir`` with the highest N (below ``before`` when given)."""
    for path in reversed(checkpoints(output_dir)):
        if before is not None and checkpoint_step(path) >= before:
            continue
        if checkpoint_problem(path) is None:
            return path
    return None


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path:
    """The checkpoint to resume from: ``resume`` itself, or for ``True`` / ``latest`` the highest ``checkpoint-N``
    of ``output_dir``. A torn or empty one is refused in one line naming it and the last whole one."""
    if resume.strip().lower() in ("true", "latest"):
        found = checkpoints(output_dir)
        if not found:
            raise FormatError(f"{output_dir}: --resume_from_checkpoint {resume}: no checkpoint-N folder to resume from")
        path = found[-1]
    else:
        path = Path(resume)
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    step = checkpoint_step(path)
    last = last_complete(path.parent, before=step) if step is not None else last_complete(output_dir)
    hint = (f"the last complete one is {last} (--resume_from_checkpoint {last})" if last is not None
            else f"no complete checkpoint beside it in {path.parent}")
    raise FormatError(f"{path}: incomplete checkpoint ({problem}); {hint}")


def _deepspeed_globals(message: str) -> list:
    """DeepSpeed's shards pickle a few of its own plain classes (``ZeroStageEnum``, the loss scaler). The one an
    unpickling error names is allowed when it is such a class: an Enum of DeepSpeed's, or a loss scaler."""
    import enum
    import importlib

    m = re.search(r"GLOBAL (deepspeed\.[\w.]+) was not an allowed global", message)
    if not m:
        return []
    module, _, name = m.group(1).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    plain = isinstance(obj, type) and (issubclass(obj, enum.Enum) or module == "deepspeed.runtime.fp16.loss_scaler")
    return [obj] if plain else []


def _unpickling_detail(e: Exception) -> str:
    """The telling part of torch's multi-paragraph unpickling error, on one line."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+) (?:was not an allowed global|whose module)", text)
    if m:
        return f"it would import {m.group(1)}"
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if m:
        return m.group(1).strip().rstrip(".")[:160]
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:160]}"


def deepspeed_tags(checkpoint: str | os.PathLike) -> list[Path]:
    """The folders DeepSpeed may load from ``checkpoint``: the ones its ``latest`` and ``latest_universal`` files
    name, and every ``global_step*`` folder. A tag that leaves the checkpoint (an absolute path, ``..``, a link
    out) or names no folder in it is refused in one line: DeepSpeed would load whatever it names, with
    ``weights_only=False``."""
    folder = Path(checkpoint)
    root = folder.resolve()
    tags = []
    for name in ("latest", "latest_universal"):
        pointer = folder / name
        if not pointer.exists():
            continue
        try:
            tag = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise FormatError(f"{pointer}: not a text file naming a DeepSpeed tag (global_stepN)") from None
        target = (folder / tag).resolve()
        if not tag or "\n" in tag or target == root or not target.is_relative_to(root):
            raise FormatError(f"{pointer}: names {tag!r}, which is not a folder inside the checkpoint {folder}; "
                              "refused (DeepSpeed would load whatever it names)")
        if not target.is_dir():
            raise FormatError(f"{pointer}: names {tag!r}, but there is no such folder in {folder}")
        tags.append(folder / tag)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("global_step")):
        if not sub.resolve().is_relative_to(root):
            raise FormatError(f"{sub}: a link to {sub.resolve()}, outside the checkpoint {folder}; refused")
        if sub not in tags:
            tags.append(sub)
    return tags


def pickled_files(checkpoint: str | os.PathLike) -> list[Path]:
    """Every pickle a resume from ``checkpoint`` may load: the Trainer's (optimizer, scheduler, scaler, RNG
    states), the model's ``.bin`` files, and each ``.pt`` file under the folders DeepSpeed may load from
    (``deepspeed_tags``), at any depth: the ZeRO partitions, and a universal checkpoint's ``zero/`` tree
    with its ``optimizer_state.pt``."""
    folder = Path(checkpoint)
    files = [folder / n for n in PICKLED if (folder / n).is_file()]
    files += sorted(folder.glob("rng_state*.pth"))
    files += sorted(p for p in folder.glob("*.bin") if p.is_file() and p.name != "training_args.bin")
    root, seen = folder.resolve(), set()
    for tag in deepspeed_tags(folder):
        todo = [tag]
        while todo:  # every depth, links followed (each real folder once: a link loop ends here)
            here = todo.pop()
            real = here.resolve()
            if not real.is_relative_to(root):
                raise FormatError(f"{here}: a link to {real}, outside the checkpoint {folder}; refused")
            if real in seen:
                continue
            seen.add(real)
            entries = sorted(here.iterdir())
            files += [p for p in entries if p.is_file() and p.name.endswith((".pt", ".pth", ".bin"))]
            todo += [p for p in entries if p.is_dir()]
    return files


def load_plain(path: str | os.PathLike, deepspeed: bool = False, mmap: bool = True):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only; with ``deepspeed``, also
    the few plain classes of DeepSpeed's (enums, the loss scaler) its shards name. Anything else is refused
    in one line naming the file."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    path = Path(path)
    extra: list = []
    for _ in range(8):
        try:
            with safe_globals(), torch.serialization.safe_globals(extra):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                except RuntimeError as e:
                    if not mmap or "mmap" not in str(e):
                        raise
                    return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
            allowed = _deepspeed_globals(str(e)) if deepspeed else []
            if allowed and allowed[0] not in extra:
                extra += allowed
                continue
            detail = _unpickling_detail(e)
            raise FormatError(f"{path}: refused: not a plain tensor file that loads without running code "
                              f"({detail})") from None
    raise FormatError(f"{path}: refused: not a plain tensor file that loads without running code")


def check_pickles(checkpoint: str | os.PathLike) -> None:
    """Every pickle a resume from the checkpoint may load (``pickled_files``) must load with
    ``torch.load(weights_only=True)``: tensors and plain containers only (plus DeepSpeed's enums and loss
    scaler under its tags). A file that needs anything else (a hostile pickle, or a foreign object), or a
    ``latest`` naming a folder outside the checkpoint, is refused here, in one line, before the model is
    built; DeepSpeed's own loader (``weights_only=False``) never sees it."""
    folder = Path(checkpoint)
    for path in pickled_files(folder):
        load_plain(path, deepspeed=path.parent != folder)
