"""Atomic writes: a temporary file or folder beside the target, renamed over it on success.

A crash or an error never leaves a half-written file or folder behind, and the old one stays as it was.
Files: ``atomic_path`` (and ``write_json`` / ``write_jsonl`` / ``write_files`` on top of it). Folders:
``swap_folder`` is the one folder swap (every folder written whole goes through it), ``staging_folder`` the
temporary folder beside the target to fill first, ``atomic_folder`` the two together.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _beside(target: Path, tag: str, unique: bool) -> Path:
    """A hidden name beside ``target``: ``.<name>.<tag>``, plus ``-<host>-<pid>`` when ``unique``."""
    suffix = f"-{socket.gethostname()}-{os.getpid()}" if unique else ""
    return target.parent / f".{target.name}.{tag}{suffix}"


def staging_folder(target: str | os.PathLike, unique: bool = True) -> Path:
    """A fresh, empty hidden folder beside ``target`` to write its new version into before ``swap_folder``.

    ``unique`` (the default): ``.<name>.tmp-<host>-<pid>``, so writers that run at once (also on two nodes of
    one shared file system) never share one. ``unique=False``: ``.<name>.tmp``, for a folder one writer at a
    time owns; the next run clears what a killed one left there."""
    tmp = _beside(Path(target), "tmp", unique)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_folder(staged: str | os.PathLike, target: str | os.PathLike, replace: bool = True,
                old: str | os.PathLike | None = None) -> Path:
    """The one folder swap: the whole folder ``staged`` (written beside ``target``, on its file system) becomes
    ``target``. Returns ``target``.

    ``replace`` (the default): a ``target`` that is there moves aside to ``old`` (default ``.<name>.old-<host>-
    <pid>`` beside it), ``staged`` is renamed into place, then the old folder is removed; should that rename
    fail, the old folder is put back. Each step is one rename: ``target`` is the old folder or the new one,
    never a mix of both. ``replace=False``: the first writer to finish wins; when ``target`` is a folder by
    then (another process finished first), ``staged`` is removed and ``target`` kept."""
    staged, target = Path(staged), Path(target)
    if not replace:
        try:
            os.rename(staged, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(staged, ignore_errors=True)
        return target
    old = Path(old) if old is not None else _beside(target, "old", unique=True)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        if old.exists() and not target.exists():
            os.replace(old, target)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, unique: bool = True) -> Iterator[Path]:
    """Yield a fresh staging folder beside ``target`` (``staging_folder``); on success it replaces ``target``
    whole (``swap_folder``), on error it vanishes and ``target`` stays as it was."""
    tmp = staging_folder(target, unique)
    try:
        yield tmp
        swap_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_files(folder: str | os.PathLike, files: dict[str, bytes]) -> Path:
    """Write ``{name: bytes}`` into ``folder`` (made if missing), each file atomically; every other file in the
    folder is left as it is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)
    return folder


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSONL file and make them durable (flush + fsync) before returning.

    Rows are written ASCII-escaped: a line cut short by a killed writer is then still valid UTF-8,
    so ``read_jsonl(path, allow_torn_tail=True)`` sees it as a torn last line and drops it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=True) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
