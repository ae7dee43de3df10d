"""The project's data formats, each defined once. Every reader and writer goes through here.

- Stages: AASM ``W N1 N2 N3 REM``.
- Train records (LLaVA's format): a JSON array of ``{"id", "image": [img, img], "conversations": [...]}``
  plus metadata (``label``, ``subject``, ``night``, ``epoch``, optionally ``feature_index``).
- Eval questions: JSONL of ``{"question_id", "image": [img, img], "text", "label", ...}``.
- Answers: JSONL in LLaVA's schema ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``.
- Features: ``.npy`` float32 (float16 accepted) ``[N, 1, D]``; row i belongs to record i of the matching
  records file unless the record names its row with an integer ``feature_index``.

Files are written atomically (a temporary file in the same folder, then ``os.replace``) so that a crash
never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
STAGE_INDEX: dict[str, int] = {s: i for i, s in enumerate(STAGES)}

# The last line of every chain-of-thought answer, e.g. "Sleep stage: N2".
ANSWER_STAGE_PREFIX = "Sleep stage:"

FEATURES_TRAIN_NAME = "train_high_level_features.npy"
FEATURES_EVAL_NAME = "eval_high_level_features.npy"


class FormatError(ValueError):
    """Bad input: the message is one line naming the file and, where there is one, the record."""


def stage_line(stage: str) -> str:
    """The line that ends an answer: ``Sleep stage: <stage>``."""
    check_stage(stage)
    return f"{ANSWER_STAGE_PREFIX} {stage}"


def check_stage(stage: Any, where: str = "") -> str:
    if stage not in STAGE_INDEX:
        prefix = f"{where}: " if where else ""
        raise FormatError(f"{prefix}label {stage!r} is not one of {' '.join(STAGES)}")
    return stage


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Records (train JSON array or eval JSONL)
# ---------------------------------------------------------------------------------------------
def read_records(path: str | os.PathLike) -> list[dict]:
    """Read train records (JSON array) or eval questions (JSONL); the content decides, not the suffix."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: records file not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise FormatError(f"{path}: records file is empty")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        records = read_jsonl(path)
    if not records:
        raise FormatError(f"{path}: records file holds no records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise FormatError(f"{path}: record {i} is not a JSON object")
    return records


def read_jsonl(path: str | os.PathLike, allow_torn_tail: bool = False) -> list[dict]:
    """Read a JSONL file. With ``allow_torn_tail`` an unparseable *last* line (a killed writer) is dropped."""
    path = Path(path)
    rows: list[dict] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if allow_torn_tail and lineno == len(lines):
                break
            raise FormatError(f"{path}: line {lineno} is not valid JSON") from None
    return rows


def record_id(record: dict) -> Any:
    """``id`` for train records, ``question_id`` for eval questions."""
    return record.get("question_id", record.get("id"))


def record_images(record: dict) -> list[str]:
    """The record's image list: ``image`` may be a string or a list; no image gives ``[]``."""
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, str):
        return [image]
    if isinstance(image, (list, tuple)) and all(isinstance(x, str) for x in image):
        return list(image)
    raise FormatError(f"record {record_id(record)!r}: 'image' must be a string or a list of strings")


def has_placeholder(record: dict) -> bool:
    """``[Image1, Image2]``: the second image is a placeholder whose slot is filled from the features."""
    return len(record_images(record)) == 2


def real_images(record: dict) -> list[str]:
    """The images that are opened and run through CLIP: all listed, less the placeholder of ``[Image1, Image2]``."""
    images = record_images(record)
    return images[:-1] if has_placeholder(record) else images


def make_train_record(
    record_id_: str, images: Sequence[str], question: str, answer: str, **metadata: Any
) -> dict:
    """A LLaVA train record with one ``<image>`` line per image ahead of the question."""
    from llava.constants import DEFAULT_IMAGE_TOKEN

    prompt = "\n".join([DEFAULT_IMAGE_TOKEN] * len(images) + [question])
    return {
        "id": record_id_,
        "image": list(images),
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}],
        **metadata,
    }


def make_question(
    question_id: str, images: Sequence[str], text: str, label: str, **metadata: Any
) -> dict:
    """An eval question for ``model_vqa.py`` (the ``<image>`` tokens are added by the evaluator)."""
    return {"question_id": question_id, "image": list(images), "text": text, "label": label, **metadata}


# ---------------------------------------------------------------------------------------------
# Answers (LLaVA's model_vqa schema)
# ---------------------------------------------------------------------------------------------
def make_answer(question_id: Any, prompt: str, text: str, answer_id: str, model_id: str, metadata: dict) -> dict:
    return {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": answer_id,
        "model_id": model_id,
        "metadata": metadata,
    }


# ---------------------------------------------------------------------------------------------
# High-level features
# ---------------------------------------------------------------------------------------------
def default_features_path(records_path: str | os.PathLike, train: bool) -> Path:
    """``train_high_level_features.npy`` / ``eval_high_level_features.npy`` beside the records file."""
    return Path(records_path).parent / (FEATURES_TRAIN_NAME if train else FEATURES_EVAL_NAME)


def feature_row(record: dict, position: int, where: str = "") -> int:
    """Row of the features file that belongs to the record at ``position`` (or its ``feature_index``)."""
    idx = record.get("feature_index", position)
    if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or idx < 0:
        prefix = f"{where}: " if where else ""
        raise FormatError(f"{prefix}record {record_id(record)!r}: feature_index {idx!r} is not a non-negative integer")
    return int(idx)


def load_features(
    path: str | os.PathLike,
    records: Sequence[dict] | None = None,
    dim: int | None = None,
    records_path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Memory-map a features file and check it up front: shape ``[N, 1, D]``, float dtype, ``D == dim``,
    finite values, and a row for every record (by position or ``feature_index``)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: features file not found")
    try:
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise FormatError(f"{path}: cannot load features without pickle ({e})") from None
    except Exception as e:  # truncated or not an .npy at all
        raise FormatError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if feats.ndim != 3 or feats.shape[1] != 1:
        raise FormatError(f"{path}: features must be shaped [N, 1, D], got {list(feats.shape)}")
    if feats.dtype not in (np.float32, np.float16):
        raise FormatError(f"{path}: features must be float32 or float16, got {feats.dtype}")
    check_feature_size(path, feats, dim)
    bad = ~np.isfinite(feats).all(axis=(1, 2))
    if bad.any():
        raise FormatError(f"{path}: row {int(np.flatnonzero(bad)[0])} holds NaN or inf")
    if records is not None:
        where = str(records_path) if records_path is not None else str(path)
        for i, rec in enumerate(records):
            row = feature_row(rec, i, where)
            if row >= feats.shape[0]:
                raise FormatError(
                    f"{path}: {feats.shape[0]} feature rows but record {record_id(rec)!r} (#{i} of {where}) needs row {row}"
                )
    return feats


def check_feature_size(path: str | os.PathLike, features: np.ndarray, dim: int | None) -> None:
    """D of ``[N, 1, D]`` features must be the projector's input size (``mm_hidden_size``)."""
    if dim is not None and features.shape[2] != dim:
        raise FormatError(
            f"{path}: feature size D={features.shape[2]} does not match the projector's input mm_hidden_size={dim}"
        )


def save_features(path: str | os.PathLike, features: np.ndarray, sidecar: dict | None = None) -> None:
    """Write ``[N, 1, D]`` float32 features atomically, plus ``<path>.json`` describing them."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 3 or features.shape[1] != 1:
        raise FormatError(f"{path}: features must be shaped [N, 1, D], got {list(features.shape)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features, allow_pickle=False)
    meta = {"n": int(features.shape[0]), "d": int(features.shape[2]), "dtype": "float32", **(sidecar or {})}
    write_json(Path(str(path) + ".json"), meta)
