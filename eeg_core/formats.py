"""The project's data formats, each defined once. Every reader and writer goes through here.

- Train records (LLaVA's format): a JSON array of ``{"id", "image": [img, img], "conversations": [...]}``
  plus metadata (``label``, ``subject``, ``night``, ``epoch``, optionally ``feature_index``).
- Eval questions: JSONL of ``{"question_id", "image": [img, img], "text", "label", ...}``.
- Answers: JSONL in LLaVA's schema ``{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}``
  plus ``model_sha256``, the content fingerprint of the checkpoint that wrote them. Every answer writer builds
  them with ``question_answer``: the question's fields but ``ANSWER_DROPPED_FIELDS`` go into ``metadata``, and
  ``answer_id`` is deterministic (``answer_id``).
- Question ids: a string or an integer, compared as text (``question_key``): ``7`` and ``"7"`` are one id.
- Image paths: relative to the image folder; absolute paths and ``..`` are refused (``image_path``).
- Features: ``.npy`` float32 (float16 accepted) ``[N, 1, D]``; row i belongs to record i of the matching
  records file unless the record names its row with an integer ``feature_index``. ``D`` is ``FEATURE_DIM``
  (1024) unless a vision module is trained with another ``--feature-dim``; a sidecar ``<features>.json``
  (``features_sidecar``) says what they were extracted from.
- Render settings: how the images were drawn (channels, scales, sizes), a JSON object with its ``id``, in
  ``render.json`` beside the records; every record names it with ``"render": <id>``. Vision-module and
  LLaVA checkpoints keep the settings they were trained on; a model never reads images drawn another way.

Stages, the answer line, the data folder's file names and atomic writes have their own core modules
(``eeg_core.stages``, ``eeg_core.answer``, ``eeg_core.layout``, ``eeg_core.atomic``).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Container, Sequence

import numpy as np

from eeg_core.answer import user_prompt
from eeg_core.atomic import atomic_path, file_sha256, write_json
from eeg_core.errors import FormatError
from eeg_core.layout import FEATURES_EVAL_NAME, FEATURES_TRAIN_NAME, RENDER_FILE

# The high-level feature's size D by default: CLIP ViT-L/14's width, what LLaVA-1.5's projector takes
# (``mm_hidden_size``). Every vision module, the extraction and the tiny LLaVA default to it.
FEATURE_DIM = 1024


# ---------------------------------------------------------------------------------------------
# Records (train JSON array or eval JSONL)
# ---------------------------------------------------------------------------------------------
def read_text(path: Path, what: str) -> str:
    """The file as UTF-8 text; a binary file (or another encoding) is refused in one line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not a text file (byte {e.start} is not UTF-8); a {what} file is JSON text") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: a folder, not a {what} file") from None


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read train records (JSON array) or eval questions (JSONL); the content decides, not the suffix."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: records file not found")
    text = read_text(path, "records")
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
    lines = read_text(path, "JSONL").splitlines()
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


def question_key(qid: Any, where: str = "") -> str:
    """The identity of a question id: ids are compared as text, so ``7`` and ``"7"`` are the same question.

    An id is a string or an integer; anything else (None, a bool, a float, a list) is refused."""
    if isinstance(qid, bool) or not isinstance(qid, (str, int)):
        prefix = f"{where}: " if where else ""
        raise FormatError(f"{prefix}question_id {qid!r} is not a string or an integer")
    return str(qid)


def question_keys(records: Sequence[dict], path: str | os.PathLike, what: str = "record") -> list[str]:
    """``question_key`` of every record in file order; a repeated id (``7`` and ``"7"`` included) is refused."""
    keys: list[str] = []
    first: dict[str, tuple[int, Any]] = {}
    for i, rec in enumerate(records):
        qid = rec.get("question_id") if isinstance(rec, dict) else None
        if qid is None:
            raise FormatError(f"{path}: {what} #{i} has no question_id")
        key = question_key(qid, f"{path}: {what} #{i}")
        if key in first:
            j, other = first[key]
            if other == qid:
                raise FormatError(f"{path}: duplicate question_id {qid!r} ({what}s #{j} and #{i})")
            raise FormatError(f"{path}: question_id {other!r} ({what} #{j}) and {qid!r} ({what} #{i}) are the same id "
                              "(ids are compared as text)")
        first[key] = (i, qid)
        keys.append(key)
    return keys


def answer_keys(rows: Sequence[Any], path: str | os.PathLike, questions: Container[str], source: str) -> list[str]:
    """``question_key`` of every answer row (a JSONL answers file), in order: each row names a ``question_id``
    that is one of ``questions`` (keys from ``question_keys``), and no question is answered twice. Answers are
    named by their line (``answer #1`` is the first); ``source`` names where the questions come from."""
    keys: list[str] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows, 1):
        qid = row.get("question_id") if isinstance(row, dict) else None
        if qid is None:
            raise FormatError(f"{path}: answer #{lineno} has no question_id")
        key = question_key(qid, f"{path}: answer #{lineno}")
        if key not in questions:
            raise FormatError(f"{path}: answer #{lineno} is for question_id {qid!r}, which is not in {source}")
        if key in seen:
            raise FormatError(f"{path}: question_id {qid!r} is answered twice (answer #{lineno})")
        seen.add(key)
        keys.append(key)
    return keys


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


def image_path(folder: str | os.PathLike, name: str, where: str) -> Path:
    """``folder / name`` for a record's image; an absolute path or one with ``..`` (leaving the image folder)
    is refused with ``where`` (the records file and the record) in the message."""
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"{where}: image {name!r} is not a file name")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive or ".." in pure.parts:
        raise FormatError(f"{where}: image path {name!r} leaves the image folder (absolute or '..'); "
                          "image paths are relative to the image folder")
    path = Path(folder) / name
    if os.path.islink(path) or any(os.path.islink(Path(folder) / part) for part in _prefixes(pure)):
        real, root = os.path.realpath(path), os.path.realpath(folder)
        if os.path.commonpath([real, root]) != root:
            raise FormatError(f"{where}: image {name!r} is a link to {real}, outside the image folder {folder}")
    return path


def _prefixes(pure: PurePosixPath) -> list[str]:
    """``a/b/c.png`` -> ``["a", "a/b"]``: the folders inside the image folder that an image path passes through."""
    parts = pure.parts[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def decode_images(images: Sequence[tuple[Path, str]], desc: str = "checking images", progress: bool = True,
                  keep: Callable[[int, Any], None] | None = None) -> None:
    """Open and fully decode every image (``(path, where)`` pairs, ``where`` naming the records file and record)
    before any work, with a progress bar: a missing file, a non-image or corrupt pixel data (a bad PNG IDAT)
    is one FormatError naming the image and the record, as are images of different sizes (one render draws
    every image at its one size). Decoding runs on a few threads. ``keep(i, image)``, when given, is called
    with each decoded PIL image (on the decoding thread), so a caller that needs the pixels decodes once."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image
    from tqdm.auto import tqdm

    sizes: dict[tuple[int, int], tuple[Path, str]] = {}  # the first image of each size

    def check(i: int, item: tuple[Path, str]) -> str | None:
        path, where = item
        try:
            with Image.open(path) as img:
                img.load()
                sizes.setdefault(img.size, (path, where))
                if keep is not None:
                    keep(i, img)
        except FileNotFoundError:
            return f"{where}: image {path} not found"
        except IsADirectoryError:
            return f"{where}: image {path} is a folder"
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, zlib errors ...
            detail = str(e).splitlines()[0] if str(e) else ""
            return f"{where}: image {path} is not a readable image ({type(e).__name__}: {detail})"
        return None

    images = list(images)
    if not images:
        return
    pool = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, len(images))))
    try:
        bar = tqdm(pool.map(check, range(len(images)), images), total=len(images), desc=desc, unit="img",
                   disable=not progress or len(images) < 2, leave=False)
        for problem in bar:
            if problem is not None:
                bar.close()
                raise FormatError(problem)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if len(sizes) > 1:  # one render draws every image at one size: another size is another drawing (or an edit)
        counts = {size: 0 for size in sizes}
        for path, _ in images:
            with Image.open(path) as img:
                counts[img.size] += 1
        (common, _), *_ = sorted(counts.items(), key=lambda kv: -kv[1])
        odd = next(size for size in sizes if size != common)
        path, where = sizes[odd]
        raise FormatError(f"{where}: image {path} is {odd[0]}x{odd[1]} px, but {counts[common]} of the {len(images)} "
                          f"images are {common[0]}x{common[1]} px ({sum(counts.values()) - counts[common]} of "
                          "other sizes): images of one render settings have one size")


def make_train_record(
    record_id_: str, images: Sequence[str], question: str, answer: str, **metadata: Any
) -> dict:
    """A LLaVA train record with one ``<image>`` line per image ahead of the question."""
    return {
        "id": record_id_,
        "image": list(images),
        "conversations": [{"from": "human", "value": user_prompt(question, len(images))}, {"from": "gpt", "value": answer}],
        **metadata,
    }


def make_question(
    question_id: str, images: Sequence[str], text: str, label: str, **metadata: Any
) -> dict:
    """An eval question for ``model_vqa.py`` (the ``<image>`` tokens are added by the evaluator)."""
    return {"question_id": question_id, "image": list(images), "text": text, "label": label, **metadata}


# ---------------------------------------------------------------------------------------------
# Render settings: how the images of a records file were drawn
# ---------------------------------------------------------------------------------------------
def settings_id(settings: dict) -> str:
    """A short content id of a JSON-able settings object (its ``id`` key excluded)."""
    blob = json.dumps({k: v for k, v in settings.items() if k != "id"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def records_render(records: Sequence[dict], records_path: str | os.PathLike) -> dict | None:
    """The render settings every record was drawn with (``render.json`` beside the records file), or None for
    records that name none (written before settings were recorded). Records that disagree, or name settings
    the file beside them does not hold, are refused."""
    records_path = Path(records_path)
    ids = {r.get("render") for r in records}
    if ids == {None}:
        return None
    settings_file = records_path.parent / RENDER_FILE
    if not settings_file.is_file():
        raise FormatError(f"{records_path}: records name render settings {sorted(map(str, ids))[0]!r} but "
                          f"{settings_file} is missing")
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(f"{settings_file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(settings, dict) or settings.get("id") != settings_id(settings):
        raise FormatError(f"{settings_file}: render settings do not match their id (edited by hand?)")
    for i, rec in enumerate(records):
        if rec.get("render") != settings["id"]:
            raise FormatError(f"{records_path}: record {record_id(rec)!r} (#{i}) was drawn with render settings "
                              f"{rec.get('render')!r}, not {settings['id']!r} of {settings_file}")
    return settings


def check_render(model_settings: dict | None, data_settings: dict | None, model: str, data: str) -> None:
    """A model reads only images drawn as those it was trained on: one line naming both when they differ.
    Either side without recorded settings (older files) is not compared."""
    if model_settings is None or data_settings is None or model_settings.get("id") == data_settings.get("id"):
        return
    diff = [k for k in sorted((set(model_settings) | set(data_settings)) - {"id"})
            if model_settings.get(k) != data_settings.get(k)]
    shown = "; ".join(f"{k}: {model_settings.get(k)} vs {data_settings.get(k)}" for k in diff[:3])
    raise FormatError(f"{data}: images drawn with other render settings than {model} was trained on ({shown})")


# ---------------------------------------------------------------------------------------------
# Answers (LLaVA's model_vqa schema)
# ---------------------------------------------------------------------------------------------
def make_answer(question_id: Any, prompt: str, text: str, answer_id: str, model_id: str, metadata: dict,
                model_sha256: str | None = None) -> dict:
    """LLaVA's answer schema; ``model_sha256`` (the checkpoint's content fingerprint) binds the answer to the
    model that wrote it, whatever its folder is called."""
    answer = {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": answer_id,
        "model_id": model_id,
        "metadata": metadata,
    }
    if model_sha256 is not None:
        answer["model_sha256"] = model_sha256
    return answer


# Question fields an answer does not carry in its ``metadata``: the prompt's (its id, text and images) and a
# train record's own (``id``, ``conversations``). Every other field of the question goes into ``metadata``.
ANSWER_DROPPED_FIELDS = ("question_id", "id", "text", "image", "conversations")
# The namespace of the answer ids (uuid5, see ``answer_id``).
ANSWER_ID_NAMESPACE = uuid.UUID("6f0c1f4e-5b7a-4a8e-9d1c-2f1b5e0c9a11")


def answer_id(question_id: Any, model_id: str, model_sha256: str | None = None) -> str:
    """The answer-id policy, one for every answer writer: deterministic, so the same model answering the same
    questions writes the same answers file, and distinct within one file (one answer per question id).

    It is ``uuid5(ANSWER_ID_NAMESPACE, "<model_id>\\n<model_sha256 or ''>\\n<question_key>").hex``: a hash of
    the answering model as the answer names it (``model_id``, and ``model_sha256`` when the answer carries one)
    and of the question id compared as text (``7`` and ``"7"`` give one id)."""
    name = f"{model_id}\n{model_sha256 or ''}\n{question_key(question_id)}"
    return uuid.uuid5(ANSWER_ID_NAMESPACE, name).hex


def question_answer(question: dict, text: str, model_id: str, extra: dict | None = None,
                    model_sha256: str | None = None) -> dict:
    """The answer ``text`` to ``question`` (an eval question or a record), as every answer writer builds it
    (``make_answer``): ``question_id`` is the question's id (``record_id``), ``prompt`` its ``text``,
    ``metadata`` its fields but ``ANSWER_DROPPED_FIELDS`` followed by ``extra``, ``answer_id`` by ``answer_id``."""
    qid = record_id(question)
    metadata = {k: v for k, v in question.items() if k not in ANSWER_DROPPED_FIELDS}
    return make_answer(qid, question.get("text", ""), text, answer_id(qid, model_id, model_sha256), model_id,
                       {**metadata, **(extra or {})}, model_sha256)


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
    if records_path is not None:
        check_features_sidecar(path, records_path)
    if records is not None:
        where = str(records_path) if records_path is not None else str(path)
        named = False
        for i, rec in enumerate(records):
            row = feature_row(rec, i, where)
            named = named or "feature_index" in rec
            if row >= feats.shape[0]:
                raise FormatError(
                    f"{path}: {feats.shape[0]} feature rows but record {record_id(rec)!r} (#{i} of {where}) needs row {row}"
                )
        if feats.shape[0] > len(records) and not named:
            raise FormatError(
                f"{path}: {feats.shape[0]} feature rows for {len(records)} records in {where}: the rows belong to "
                "other records (extract the features again, or name each record's row with 'feature_index')"
            )
    return feats


def features_sidecar(path: str | os.PathLike) -> Path:
    """``<features>.npy.json``: what the features were extracted from (written by ``save_features``)."""
    return Path(str(path) + ".json")


def check_features_sidecar(path: str | os.PathLike, records_path: str | os.PathLike) -> None:
    """When the features file has a sidecar holding ``records_sha256``, the records file must be the very file
    the features were extracted from (same bytes). Without a sidecar there is nothing to compare."""
    sidecar = features_sidecar(path)
    if not sidecar.is_file():
        print(f"warning: {path}: no sidecar ({sidecar.name}), so nothing shows which records the features were "
              f"extracted from; only their row count is checked against {records_path}", file=sys.stderr)
        return
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FormatError(f"{sidecar}: unreadable features sidecar ({str(e).splitlines()[0]})") from None
    expected = meta.get("records_sha256") if isinstance(meta, dict) else None
    if not expected:
        return
    actual = file_sha256(records_path)
    if actual != expected:
        source = meta.get("records") or "another records file"
        raise FormatError(
            f"{path}: extracted from {source} (records_sha256 {expected[:12]}... in {sidecar.name}), not from "
            f"{records_path} (sha256 {actual[:12]}...): stale features; extract them again for {records_path}"
        )


def check_feature_size(path: str | os.PathLike, features: np.ndarray, dim: int | None) -> None:
    """D of ``[N, 1, D]`` features must be the projector's input size (``mm_hidden_size``)."""
    if dim is not None and features.shape[2] != dim:
        raise FormatError(
            f"{path}: feature size D={features.shape[2]} does not match the projector's input mm_hidden_size={dim}"
        )


def save_features(path: str | os.PathLike, features: np.ndarray, sidecar: dict | None = None) -> None:
    """Write ``[N, 1, D]`` float32 features atomically, plus their sidecar (``features_sidecar``) describing them."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim != 3 or features.shape[1] != 1:
        raise FormatError(f"{path}: features must be shaped [N, 1, D], got {list(features.shape)}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features, allow_pickle=False)
    meta = {"n": int(features.shape[0]), "d": int(features.shape[2]), "dtype": "float32", **(sidecar or {})}
    write_json(features_sidecar(path), meta)
