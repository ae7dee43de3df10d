"""Where a command will write, checked before it does any work: an output that is a file where a folder is
needed (or a folder where a file is), or that lies under a file, is a one-line error up front, not a
traceback after an hour of training or a batch of answers."""
from __future__ import annotations

import os
from pathlib import Path

from eeg_core.errors import FormatError


def check_output(path: str | os.PathLike, flag: str, folder: bool) -> Path:
    """``path``, the value of ``flag``, can be written as a folder (``folder``) or a file: it is not the other
    kind, and the nearest ancestor that exists is a folder."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise FormatError(f"{path}: {flag} must be a folder, but it is a file")
    if not folder and path.is_dir():
        raise FormatError(f"{path}: {flag} must be a file, but it is a folder")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise FormatError(f"{path}: {flag} lies under {parent}, which is a file")
            break
    return path


def check_out_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder that is a file, or lies under one, is a one-line error (raised before any work)."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            if folder == path:
                raise FormatError(f"{path}: {flag} must be a folder, but it is a file")
            raise FormatError(f"{path}: {flag} must be a folder, but {folder} is a file")
    return path


def check_positive(value: int, flag: str) -> int:
    """A count such as ``--batch-size`` must be at least 1."""
    if value < 1:
        raise FormatError(f"{flag} must be at least 1, got {value}")
    return value


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """A device name torch knows (``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...), and a usable GPU for ``cuda``,
    checked before any work."""
    if device is None:
        return None
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise FormatError(f"{flag} {device!r} is not a device (cpu, cuda, cuda:N, mps ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise FormatError(f"{flag} {device}: no GPU is usable here (use --device cpu)")
    return device
