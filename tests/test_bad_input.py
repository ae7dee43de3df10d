"""Bad input, one table: each command refuses it with one line naming the file (and the record), exit
status 2, and nothing written. Around the table, what a careful user relies on next to it: warnings with
counts for data that may be fine, hedged answers left unparsed, a kill during a checkpoint save and the
resume after it, a failed start that cleans up, the same seed giving the same weights, the base's tower.

Built once per module: a small dataset (records, questions, images, features with their sidecars), one
short training run with checkpoints, one synthetic EDF night. Most commands run in-process through their
``main(argv)`` (as ``eeg_vlm.cli.run`` runs them: ``error: ...`` and exit 2); one case per entry point runs
as a real subprocess.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from eeg_core import formats
from eeg_core.answer import stage_line
from eeg_core.atomic import write_json, write_jsonl
from eeg_core.errors import FormatError
from eeg_core.layout import FEATURES_EVAL_NAME, FEATURES_TRAIN_NAME
from eeg_core.stages import STAGES
from eeg_vlm import commands
from refusal import check_refusal, refused, snapshot

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is the sleep stage of this EEG epoch?"
N_TRAIN, N_EVAL = 6, 4

def train_argv(ctx, out: Path, data: Path | None = None, images: Path | None = None, features: Path | None = None,
               base: Path | None = None, tower: bool = True, *extra: str) -> list[str]:
    """The README's training command pointed at tiny data, without DeepSpeed, one step, no saves."""
    argv = commands.train_argv(
        model=base or ctx.tiny, data_path=data or ctx.train_records, image_folder=images or ctx.images,
        output_dir=out, vision_tower=ctx.tiny / "clip" if tower else None, deepspeed=None, lora_r=8,
        per_device_train_batch_size=2, evaluation_strategy="no", save_strategy="no", save_steps=None,
        save_total_limit=3, dataloader_num_workers=0, report_to="none", max_steps=1,
        high_level_features=features or ctx.train_features)
    if not tower:
        i = argv.index("--vision_tower")
        del argv[i: i + 2]
    return argv + list(extra)


# ---------------------------------------------------------------------------------------------
# Fixtures, built once
# ---------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    root: Path
    tiny: Path
    images: Path
    train_records: Path
    train_features: Path
    questions: Path
    eval_features: Path
    run: Path  # a finished run: checkpoint-1, checkpoint-2 and the final save (LoRA + projector)


def save_bound_features(path: Path, records_path: Path, n: int, seed: int) -> None:
    """Features with the sidecar `eeg-vlm vision extract` writes: it names the records file and its hash."""
    feats = np.random.default_rng(seed).standard_normal((n, 1, 1024)).astype(np.float32)
    formats.save_features(path, feats, sidecar={"records": str(records_path),
                                                "records_sha256": formats.file_sha256(records_path)})


@pytest.fixture(scope="module")
def ctx(tiny_llava, tmp_path_factory) -> Ctx:
    from llava.train.train import train

    root = tmp_path_factory.mktemp("bad_input")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_TRAIN):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / f"e{i}.png")
    records = [formats.make_train_record(f"r{i}", [f"e{i}.png"] * 2, QUESTION,
                                         stage_line(STAGES[i % 5]), label=STAGES[i % 5])
               for i in range(N_TRAIN)]
    write_json(root / "eeg_ft.json", records)
    save_bound_features(root / FEATURES_TRAIN_NAME, root / "eeg_ft.json", N_TRAIN, seed=1)
    questions = [formats.make_question(f"q{i}", [f"e{i}.png"] * 2, QUESTION, STAGES[i % 5],
                                       subject="S1", night=1, epoch=i) for i in range(N_EVAL)]
    write_jsonl(root / "eeg_eval.jsonl", questions)
    save_bound_features(root / FEATURES_EVAL_NAME, root / "eeg_eval.jsonl", N_EVAL, seed=2)
    c = Ctx(root, tiny_llava, images, root / "eeg_ft.json", root / FEATURES_TRAIN_NAME,
            root / "eeg_eval.jsonl", root / FEATURES_EVAL_NAME, root / "run")
    train(train_argv(c, c.run, None, None, None, None, True, "--max_steps", "2", "--save_strategy", "steps",
                     "--save_steps", "1"))
    assert sorted(p.name for p in c.run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    return c


# ---------------------------------------------------------------------------------------------
# Builders of bad input
# ---------------------------------------------------------------------------------------------
def write_night(folder: Path, annotations, minutes: float = 20, flat: bool = False, name: str = "SC9001E0") -> Path:
    """A Sleep-EDF-style pair (PSG with EEG Fpz-Cz at 100 Hz, hypnogram); returns the hypnogram."""
    from sleep_eeg.recording import edf

    fs = 100.0
    n = int(minutes * 60 * fs)
    t = np.arange(n) / fs
    x = np.zeros(n) if flat else 30 * np.sin(2 * np.pi * 2 * t) + np.random.default_rng(0).normal(0, 10, n)
    hyp = folder / f"{name[:-1]}C-Hypnogram.edf"
    edf.write_night(folder / f"{name}-PSG.edf", hyp, {"EEG Fpz-Cz": x}, fs, annotations,
                    datetime.datetime(2000, 1, 1, 22))
    return hyp


def corrupt_idat(path: Path) -> None:
    """Garble the pixel data of a PNG but keep its chunk CRCs valid: the header reads, decoding fails."""
    data = bytearray(path.read_bytes())
    i = data.index(b"IDAT")
    n = int.from_bytes(data[i - 4: i], "big")
    for k in range(i + 14, i + n):
        data[k] ^= 0x55
    data[i + 4 + n: i + 8 + n] = (zlib.crc32(bytes(data[i: i + 4 + n])) & 0xFFFFFFFF).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def copy_images(ctx, tmp: Path, corrupt: str | None = None) -> Path:
    folder = tmp / "images"
    shutil.copytree(ctx.images, folder)
    if corrupt:
        corrupt_idat(folder / corrupt)
    return folder


def edited_records(ctx, tmp: Path, edit: Callable[[list[dict]], None], name: str = "eeg_ft.json") -> Path:
    records = formats.read_records(ctx.train_records)
    edit(records)
    path = tmp / name
    write_json(path, records)
    return path


def edited_questions(ctx, tmp: Path, edit: Callable[[list[dict]], None]) -> Path:
    questions = formats.read_records(ctx.questions)
    edit(questions)
    path = tmp / "eeg_eval.jsonl"
    write_jsonl(path, questions)
    return path


class Hostile:
    """A pickle that would run a shell command when loaded with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def copied_run(ctx, tmp: Path) -> Path:
    out = tmp / "run"
    shutil.copytree(ctx.run, out)
    return out


def vqa_argv(ctx, tmp: Path, questions: Path | None = None, images: Path | None = None,
             features: Path | None = None, model: Path | None = None, base: Path | None = None) -> list[str]:
    argv = ["--model-path", str(model or ctx.tiny), "--question-file", str(questions or ctx.questions),
            "--image-folder", str(images or ctx.images), "--answers-file", str(tmp / "answers.jsonl"),
            "--high-level-features", str(features or ctx.eval_features), "--max-new-tokens", "4"]
    return argv + (["--model-base", str(base)] if base else [])


def answer_rows(ctx, fingerprint: str, model_id: str, ids) -> list[dict]:
    return [formats.make_answer(qid, QUESTION, "Sleep stage: W", f"a{qid}", model_id, {"label": "W"}, fingerprint)
            for qid in ids]


# ---------------------------------------------------------------------------------------------
# The table: (entry point, how to make the bad input -> (argv, fragments of the one-line error))
# ---------------------------------------------------------------------------------------------
def prepare_unknown_stage(ctx, tmp):
    edf_dir = tmp / "edf"
    edf_dir.mkdir()
    hyp = write_night(edf_dir, [(0, 300, "Sleep stage W"), (300, 300, "Sleep stage N5"), (600, 600, "Sleep stage 2")])
    return (["--edf-dir", str(edf_dir), "--out", str(tmp / "sleep_data"), "--workers", "1"],
            [f"{hyp}: unknown stage annotation 'Sleep stage N5' at 300 s"])


def prepare_overlap(ctx, tmp):
    edf_dir = tmp / "edf"
    edf_dir.mkdir()
    hyp = write_night(edf_dir, [(0, 600, "Sleep stage W"), (570, 630, "Sleep stage 2")])
    return (["--edf-dir", str(edf_dir), "--out", str(tmp / "sleep_data"), "--workers", "1"],
            [f"{hyp}: annotations overlap and contradict: 'Sleep stage W' at 0 s (600 s) and 'Sleep stage 2' "
             "at 570 s (630 s) cover 570-600 s"])


def prepare_out_is_a_file(ctx, tmp):
    edf_dir = tmp / "edf"
    edf_dir.mkdir()
    write_night(edf_dir, [(0, 1200, "Sleep stage 2")])
    out = tmp / "sleep_data"
    out.write_text("not a folder\n")
    return (["--edf-dir", str(edf_dir), "--out", str(out / "sub"), "--workers", "1"],
            [f"{out / 'sub'}: --out must be a folder, but {out} is a file"])


def vision_train_absolute_image(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[2].update(image=[str(ctx.images / "e2.png")] * 2))
    return (["train", "--records", str(records), "--image-folder", str(ctx.images), "--out", str(tmp / "ck"),
             "--epochs", "1", "--no-progress"],
            [f"{records}: record 'r2' (#2): image path '{ctx.images / 'e2.png'}' leaves the image folder"])


def vision_extract_dotdot_image(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[1].update(image=["../eeg_ft.json"] * 2))
    return (["extract", "--checkpoint", str(tmp / "ck"), "--records", str(records), "--image-folder",
             str(ctx.images), "--out", str(tmp / "f.npy"), "--no-progress"],
            [f"{records}: record 'r1' (#1): image path '../eeg_ft.json' leaves the image folder"])


def vision_train_corrupt_png(ctx, tmp):
    images = copy_images(ctx, tmp, corrupt="e1.png")
    return (["train", "--records", str(ctx.train_records), "--image-folder", str(images), "--out", str(tmp / "ck"),
             "--epochs", "1", "--no-progress"],
            [f"{ctx.train_records}: record 'r1' (#1): image {images / 'e1.png'} is not a readable image"])


def vision_extract_foreign_module(ctx, tmp):
    """A checkpoint whose import_path names a module outside the registry: refused before it is imported."""
    from safetensors.torch import save_file

    mods = tmp / "mods"
    mods.mkdir()
    (mods / "rel_evil_module.py").write_text(f"open({str(tmp / 'imported')!r}, 'w').close()\n")
    ck = tmp / "ck"
    ck.mkdir()
    save_file({"w": torch.zeros(1)}, str(ck / "model.safetensors"))
    write_json(ck / "config.json", {"arch": "evil_cnn", "import_path": "rel_evil_module",
                                            "feature_dim": 1024, "num_classes": 5})
    return (["extract", "--checkpoint", str(ck), "--records", str(ctx.questions), "--image-folder", str(ctx.images),
             "--out", str(tmp / "f.npy"), "--no-progress"],
            [f"{ck / 'config.json'}: vision module 'evil_cnn' is registered by the Python module 'rel_evil_module'",
             "--import-module rel_evil_module"])


def vision_train_hostile_resume(ctx, tmp):
    ck = tmp / "ck"
    ck.mkdir()
    torch.save({"model": Hostile(tmp / "pwned")}, ck / "resume.pt")
    return (["train", "--records", str(ctx.train_records), "--image-folder", str(ctx.images), "--out", str(ck),
             "--epochs", "2", "--resume", "--no-progress"],
            [f"{ck / 'resume.pt'}: refused: not a plain tensor file that loads without running code",
             f"{os.system.__module__}.system"])


def train_stale_features(ctx, tmp):
    """Another records file of the same length (prepare rerun with another split): its features are stale."""
    records = edited_records(ctx, tmp, lambda r: r.reverse())
    return (train_argv(ctx, tmp / "out", records),
            [f"{ctx.train_features}: extracted from {ctx.train_records}", f"not from {records}", "stale features"])


def train_more_rows_than_records(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r.__delitem__(slice(4, None)))
    feats = tmp / "feats.npy"
    np.save(feats, np.load(ctx.train_features))  # no sidecar: only the row count can tell
    return (train_argv(ctx, tmp / "out", records, None, feats),
            [f"{feats}: 6 feature rows for 4 records in {records}", "feature_index"])


def train_absolute_image(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[2].update(image=["/etc/passwd"] * 2))
    return (train_argv(ctx, tmp / "out", records),
            [f"{records}: record 'r2' (#2): image path '/etc/passwd' leaves the image folder"])


def train_dotdot_image(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[3].update(image=["sub/../../eeg_ft.json"] * 2))
    return (train_argv(ctx, tmp / "out", records),
            [f"{records}: record 'r3' (#3): image path 'sub/../../eeg_ft.json' leaves the image folder"])


def train_corrupt_png(ctx, tmp):
    images = copy_images(ctx, tmp, corrupt="e4.png")
    return (train_argv(ctx, tmp / "out", None, images),
            [f"{ctx.train_records}: record 'r4' (#4): image {images / 'e4.png'} is not a readable image"])


def train_human_only(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[3]["conversations"].pop())
    return (train_argv(ctx, tmp / "out", records),
            [f"{records}: record 'r3' (#3): no 'gpt' reply to learn from"])


def train_empty_reply(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[4]["conversations"][1].update(value=" \n"))
    return (train_argv(ctx, tmp / "out", records),
            [f"{records}: record 'r4' (#4): turn 1 is an empty 'gpt' reply"])


def train_turn_order(ctx, tmp):
    records = edited_records(ctx, tmp, lambda r: r[5]["conversations"].append({"from": "gpt", "value": "again"}))
    return (train_argv(ctx, tmp / "out", records),
            [f"{records}: record 'r5' (#5): turn 2 is from 'gpt', expected 'human'"])


def train_no_vision_tower(ctx, tmp):
    """Records with images, no --vision_tower, and a base whose config names no mm_vision_tower."""
    base = tmp / "base"
    base.mkdir()
    for p in ctx.tiny.iterdir():
        if p.name != "config.json":
            os.symlink(p, base / p.name)
    config = json.loads((ctx.tiny / "config.json").read_text())
    config.pop("mm_vision_tower")
    (base / "config.json").write_text(json.dumps(config))
    return (train_argv(ctx, tmp / "out", None, None, None, base, False),
            [f"{ctx.train_records}: records have images but there is no vision tower",
             f"{base / 'config.json'} names no mm_vision_tower"])


def train_number(flag: str, value: str, fragment: str):
    """A count or rate that used to fail inside the run (the sampler, the optimizer, peft, a reshape)."""
    def make(ctx, tmp):
        return train_argv(ctx, tmp / "out", None, None, None, None, True, flag, value), [fragment]
    make.__name__ = f"train_{flag.strip('-')}_{value.replace('-', 'minus')}"
    return make


def train_output_dir_holds_a_run(ctx, tmp):
    out = copied_run(ctx, tmp)
    return (train_argv(ctx, out),
            [f"{out}: --output_dir holds another run (adapter_config.json, adapter_model.safetensors, checkpoint-1, "
             "checkpoint-2 and", "--overwrite_output_dir True"])


def train_torn_checkpoint(ctx, tmp):
    out = copied_run(ctx, tmp)
    (out / "checkpoint-2" / "config.json").write_bytes(b"")
    return (train_argv(ctx, out, None, None, None, None, True, "--resume_from_checkpoint",
                       str(out / "checkpoint-2")),
            [f"{out / 'checkpoint-2'}: incomplete checkpoint (config.json is empty (0 bytes)); the last complete one "
             f"is {out / 'checkpoint-1'} (--resume_from_checkpoint {out / 'checkpoint-1'})"])


def train_empty_checkpoint(ctx, tmp):
    out = copied_run(ctx, tmp)
    (out / "checkpoint-3").mkdir()
    return (train_argv(ctx, out, None, None, None, None, True, "--resume_from_checkpoint", "True"),
            [f"{out / 'checkpoint-3'}: incomplete checkpoint (empty folder); the last complete one is "
             f"{out / 'checkpoint-2'}"])


def hostile(name: str):
    def make(ctx, tmp):
        out = copied_run(ctx, tmp)
        path = out / "checkpoint-2" / name
        torch.save({"state": Hostile(tmp / "pwned")}, path)
        return (train_argv(ctx, out, None, None, None, None, True, "--resume_from_checkpoint",
                           str(out / "checkpoint-2")),
                [f"{path}: refused: not a plain tensor file that loads without running code (it would import "
                 f"{os.system.__module__}.system)"])
    make.__name__ = f"train_hostile_{name}"
    return make


def hostile_deepspeed(where: str, latest: str | None = None):
    """A hostile pickle where DeepSpeed would load it on resume: under the folder ``latest`` names (inside the
    checkpoint or not), or deep in a universal checkpoint's ``zero/`` tree. ``{tmp}`` in ``latest`` or ``where``
    is the case's folder."""
    def make(ctx, tmp):
        out = copied_run(ctx, tmp)
        ck = out / "checkpoint-2"
        path = Path(where.format(tmp=tmp)) if where.startswith("{tmp}") else ck / where
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": Hostile(tmp / "pwned")}, path)
        if latest is not None:
            (ck / "latest").write_text(latest.format(tmp=tmp))
        argv = train_argv(ctx, out, None, None, None, None, True, "--resume_from_checkpoint", str(ck))
        if latest is not None and (latest.startswith("{tmp}") or latest.startswith("..")):
            return argv, [f"{ck / 'latest'}: names {latest.format(tmp=tmp)!r}, which is not a folder inside the "
                          f"checkpoint {ck}; refused"]
        return argv, [f"{path}: refused: not a plain tensor file that loads without running code (it would "
                      f"import {os.system.__module__}.system)"]
    make.__name__ = "train_hostile_" + re.sub(r"\W+", "_", f"{where}_{latest or ''}").strip("_")
    return make


def train_deepspeed_folder_linked_out(ctx, tmp):
    """A folder under global_step2 that is a link to another place, holding a hostile shard: refused, not read."""
    out = copied_run(ctx, tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    torch.save({"state": Hostile(tmp / "pwned")}, elsewhere / "fp32.pt")
    (out / "checkpoint-2" / "global_step2" / "zero").mkdir(parents=True)
    os.symlink(elsewhere, out / "checkpoint-2" / "global_step2" / "zero" / "lm.weight")
    link = out / "checkpoint-2" / "global_step2" / "zero" / "lm.weight"
    return (train_argv(ctx, out, None, None, None, None, True, "--resume_from_checkpoint", str(out / "checkpoint-2")),
            [f"{link}: a link to {elsewhere}, outside the checkpoint {out / 'checkpoint-2'}; refused"])


def vqa_retrained_model(ctx, tmp):
    """Answers of a model, then a new training into the same folder name: the answers are not resumed."""
    from llava.model.builder import model_fingerprint

    model = tmp / "run"
    shutil.copytree(ctx.run, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    answers = tmp / "answers.jsonl"
    write_jsonl(answers, answer_rows(ctx, model_fingerprint(model, ctx.tiny), "run", ["q0", "q1"]))
    shutil.copy(ctx.run / "checkpoint-1" / "adapter_model.safetensors", model)  # "retrained" in the same folder
    return (vqa_argv(ctx, tmp, model=model, base=ctx.tiny),
            [f"{answers}: answer #1 was written by model 'run' with fingerprint",
             "this run is 'run' with fingerprint", "(another model, or retrained)"])


def vqa_absolute_image(ctx, tmp):
    questions = edited_questions(ctx, tmp, lambda q: q[1].update(image=[str(ctx.images / "e1.png")] * 2))
    return (vqa_argv(ctx, tmp, questions),
            [f"{questions}: question 'q1': image path '{ctx.images / 'e1.png'}' leaves the image folder"])


def vqa_corrupt_png(ctx, tmp):
    images = copy_images(ctx, tmp, corrupt="e3.png")
    return (vqa_argv(ctx, tmp, None, images),
            [f"{ctx.questions}: question 'q3': image {images / 'e3.png'} is not a readable image"])


def vqa_stale_features(ctx, tmp):
    questions = edited_questions(ctx, tmp, lambda q: q.reverse())
    return (vqa_argv(ctx, tmp, questions),
            [f"{ctx.eval_features}: extracted from {ctx.questions}", f"not from {questions}", "stale features"])


def vqa_more_rows(ctx, tmp):
    questions = edited_questions(ctx, tmp, lambda q: q.pop())
    feats = tmp / "feats.npy"
    np.save(feats, np.load(ctx.eval_features))
    return (vqa_argv(ctx, tmp, questions, None, feats), [f"{feats}: 4 feature rows for 3 records in {questions}"])


def same_id_questions(ctx, tmp) -> Path:
    def edit(q):
        q[0]["question_id"], q[1]["question_id"] = 7, "7"
    return edited_questions(ctx, tmp, edit)


def vqa_int_and_str_ids(ctx, tmp):
    questions = same_id_questions(ctx, tmp)
    return (vqa_argv(ctx, tmp, questions),
            [f"{questions}: question_id 7 (record #0) and '7' (record #1) are the same id (ids are compared as text)"])


def merge_two_models(ctx, tmp):
    a, b = tmp / "4_0.jsonl", tmp / "4_1.jsonl"
    write_jsonl(a, answer_rows(ctx, "a" * 64, "run", ["q0", "q1"]))
    write_jsonl(b, answer_rows(ctx, "b" * 64, "run", ["q2", "q3"]))
    return (["--question-file", str(ctx.questions), "--answers-file", str(tmp / "merged.jsonl"), str(a), str(b)],
            [f"{b}: answer #1 comes from another model (model_sha256 bbbbbbbbbbbb) than {a} (aaaaaaaaaaaa)"])


def merge_int_and_str_ids(ctx, tmp):
    questions = same_id_questions(ctx, tmp)
    a = tmp / "4_0.jsonl"
    write_jsonl(a, answer_rows(ctx, "a" * 64, "run", [7, "q2", "q3"]))
    return (["--question-file", str(questions), "--answers-file", str(tmp / "merged.jsonl"), str(a)],
            [f"{questions}: question_id 7 (record #0) and '7' (record #1) are the same id"])


def score_int_and_str_ids(ctx, tmp):
    questions = same_id_questions(ctx, tmp)
    answers = tmp / "answers.jsonl"
    write_jsonl(answers, answer_rows(ctx, "a" * 64, "run", [7, "q2", "q3"]))
    return (["--question-file", str(questions), "--answers-file", str(answers), "--out", str(tmp / "scores")],
            [f"{questions}: question_id 7 (record #0) and '7' (record #1) are the same id"])


def score_two_models(ctx, tmp):
    answers = tmp / "answers.jsonl"
    write_jsonl(answers, answer_rows(ctx, "a" * 64, "run", ["q0", "q1"]) + answer_rows(ctx, "b" * 64, "run",
                                                                                        ["q2", "q3"]))
    return (["--question-file", str(ctx.questions), "--answers-file", str(answers), "--out", str(tmp / "scores")],
            [f"{answers}: answer #3 (question_id 'q2') comes from another model (model_sha256 bbbbbbbbbbbb) than "
             "answer #1 (aaaaaaaaaaaa)"])


def score_metadata_not_an_object(ctx, tmp):
    rows = answer_rows(ctx, "a" * 64, "run", ["q0", "q1", "q2", "q3"])
    rows[2]["metadata"] = ["W"]
    answers = tmp / "answers.jsonl"
    write_jsonl(answers, rows)
    return (["--question-file", str(ctx.questions), "--answers-file", str(answers), "--out", str(tmp / "s")],
            [f"{answers}: answer #3 (question_id 'q2'): 'metadata' must be a JSON object, got list"])


def bad_probabilities(name: str, value):
    def make(ctx, tmp):
        rows = answer_rows(ctx, "a" * 64, "run", ["q0", "q1", "q2", "q3"])
        for row in rows:
            row["metadata"]["probabilities"] = {s: 0.2 for s in STAGES}
        rows[1]["metadata"]["probabilities"]["N2"] = value
        answers = tmp / "answers.jsonl"
        answers.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
        return (["--question-file", str(ctx.questions), "--answers-file", str(answers), "--out", str(tmp / "s")],
                [f"{answers}: answer #2 (question_id 'q1'): metadata.probabilities['N2'] = {value!r} is not a "
                 "probability"])
    make.__name__ = f"score_probability_{name}"
    return make


_BASELINE: dict = {}


def baseline_setup(ctx) -> dict:
    """Built once, on first use: two 20-minute nights (subjects SC900 for training, SC901 for questions), their
    records and questions, and a band-power baseline trained on the first."""
    if _BASELINE:
        return _BASELINE
    from sleep_eeg.baselines import classic as baselines

    root = ctx.root / "baseline"
    edf = root / "edf"
    edf.mkdir(parents=True)
    stages = [(0, 600, "Sleep stage W"), (600, 600, "Sleep stage 2")]
    write_night(edf, stages, name="SC9001E0")
    write_night(edf, stages, name="SC9011E0")
    rows = [{"psg": "SC9001E0-PSG.edf", "subject": "SC900", "night": 1, "epoch": e, "label": "W" if e < 20 else "N2"}
            for e in range(40)]
    write_json(root / "train.json", [{"id": f"b{e}", **r} for e, r in enumerate(rows)])
    write_jsonl(root / "eval.jsonl", [{"question_id": f"c{e}", "text": QUESTION, **r,
                                       "psg": "SC9011E0-PSG.edf", "subject": "SC901"} for e, r in enumerate(rows)])
    baselines.train(root / "train.json", edf, root / "model")
    _BASELINE.update(root=root, edf=edf, train=root / "train.json", eval=root / "eval.jsonl", model=root / "model")
    return _BASELINE


def baseline_predict_argv(b: dict, tmp: Path, model: Path | None = None, questions: Path | None = None) -> list:
    return ["predict", "--model", str(model or b["model"]), "--question-file", str(questions or b["eval"]),
            "--edf-dir", str(b["edf"]), "--answers-file", str(tmp / "answers.jsonl")]


def baseline_config_edited(ctx, tmp):
    """Reversing `classes` would remap every answer: the config is covered by its sha256."""
    b = baseline_setup(ctx)
    model = tmp / "model"
    shutil.copytree(b["model"], model)
    config = json.loads((model / "config.json").read_text())
    write_json(model / "config.json", {**config, "classes": config["classes"][::-1]})
    return (baseline_predict_argv(b, tmp, model),
            [f"{model / 'config.json'}: its content differs from its config_sha256"])


def baseline_object_array(ctx, tmp):
    """A features model whose model.npz holds an object array (a pickle), its hashes made to match."""
    from sleep_eeg.baselines.classic import config_sha256

    b = baseline_setup(ctx)
    model = tmp / "model"
    model.mkdir()
    with open(model / "model.npz", "wb") as f:
        np.savez(f, trees=np.array([Hostile(tmp / "pwned")], dtype=object))
    config = json.loads((b["model"] / "config.json").read_text())
    config.update(kind="features", extractor="scipy", model_file="model.npz",
                  model_sha256=formats.file_sha256(model / "model.npz"))
    write_json(model / "config.json", {**config, "config_sha256": config_sha256(config)})
    return (baseline_predict_argv(b, tmp, model),
            [f"{model / 'model.npz'}: not a model file of plain numbers (Object arrays cannot be loaded"])


def baseline_duplicate_ids(ctx, tmp):
    b = baseline_setup(ctx)
    questions = tmp / "eval.jsonl"
    rows = formats.read_records(b["eval"])
    rows[3]["question_id"] = rows[1]["question_id"]
    write_jsonl(questions, rows)
    return (baseline_predict_argv(b, tmp, None, questions),
            [f"{questions}: duplicate question_id 'c1' (questions #1 and #3)"])


def baseline_questions_without_subject(ctx, tmp):
    b = baseline_setup(ctx)
    questions = tmp / "eval.jsonl"
    write_jsonl(questions, [{k: v for k, v in q.items() if k != "subject"} for q in formats.read_records(b["eval"])])
    return (baseline_predict_argv(b, tmp, None, questions),
            [f"{questions}: 40 of 40 questions carry no subject, so whether they are of the subjects the model "
             f"{b['model']} was trained on cannot be checked; pass --allow-overlap"])


def baseline_flat_nights(ctx, tmp):
    b = baseline_setup(ctx)
    edf = tmp / "edf"
    edf.mkdir()
    write_night(edf, [(0, 600, "Sleep stage W"), (600, 600, "Sleep stage 2")], flat=True, name="SC9001E0")
    return (["train", "--records", str(b["train"]), "--edf-dir", str(edf), "--out", str(tmp / "model")],
            [f"{b['train']}: the features are the same in every epoch of every night (40 records)"])


def vision_predict_duplicate_ids(ctx, tmp):
    questions = edited_questions(ctx, tmp, lambda q: q[2].update(question_id="q0"))
    return (["predict", "--checkpoint", str(tmp / "ck"), "--question-file", str(questions), "--image-folder",
             str(ctx.images), "--answers-file", str(tmp / "answers.jsonl"), "--no-progress"],
            [f"{questions}: duplicate question_id 'q0' (questions #0 and #2)"])


def vision_checkpoint_config(content: bytes, name: str, fragment: str):
    """A vision checkpoint whose config.json is binary, or names its sizes wrongly: one line, not a traceback."""
    def make(ctx, tmp):
        ck = tmp / "ck"
        ck.mkdir()
        (ck / "config.json").write_bytes(content)
        (ck / "model.safetensors").write_bytes(b"")
        return (["predict", "--checkpoint", str(ck), "--question-file", str(ctx.questions), "--image-folder",
                 str(ctx.images), "--answers-file", str(tmp / "answers.jsonl"), "--no-progress"],
                [f"{ck / 'config.json'}: {fragment}"])
    make.__name__ = f"vision_predict_config_{name}"
    return make


def a_file(tmp: Path) -> Path:
    path = tmp / "a_file"
    path.write_text("mine\n")
    return path


def binary(tmp: Path, name: str) -> Path:
    path = tmp / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 8)
    return path


def vision_train_out_is_a_file(ctx, tmp):
    out = a_file(tmp)
    return (["train", "--records", str(ctx.train_records), "--image-folder", str(ctx.images), "--out", str(out),
             "--epochs", "1", "--no-progress"], [f"{out}: --out must be a folder, but it is a file"])


def vision_train_number(flag: str, value: str, fragment: str):
    """A count or rate that used to fail deep inside training (the optimizer, a DataLoader, a resize)."""
    def make(ctx, tmp):
        return (["train", "--records", str(ctx.train_records), "--image-folder", str(ctx.images), "--out",
                 str(tmp / "ck"), "--epochs", "1", "--no-progress", flag, *value.split()], [fragment])
    make.__name__ = f"vision_train_{flag.strip('-').replace('-', '_')}_{value.replace(' ', '_').replace('-', 'minus')}"
    return make


def vqa_device_unknown(ctx, tmp):
    return vqa_argv(ctx, tmp) + ["--device", "gpu0"], ["--device 'gpu0' is not a device (cpu, cuda, cuda:N, mps ...)"]


def vision_predict_device_unknown(ctx, tmp):
    return (["predict", "--checkpoint", str(tmp / "ck"), "--question-file", str(ctx.questions), "--image-folder",
             str(ctx.images), "--answers-file", str(tmp / "answers.jsonl"), "--device", "gpu", "--no-progress"],
            ["--device 'gpu' is not a device"])


def vqa_max_new_tokens_0(ctx, tmp):
    return vqa_argv(ctx, tmp)[:-2] + ["--max-new-tokens", "0"], ["--max-new-tokens must be at least 1, got 0"]


def vision_predict_batch_size_0(ctx, tmp):
    return (["predict", "--checkpoint", str(tmp / "ck"), "--question-file", str(ctx.questions), "--image-folder",
             str(ctx.images), "--answers-file", str(tmp / "answers.jsonl"), "--batch-size", "0", "--no-progress"],
            ["--batch-size must be at least 1, got 0"])


def vision_extract_out_under_a_file(ctx, tmp):
    parent = a_file(tmp)
    return (["extract", "--checkpoint", str(tmp / "ck"), "--records", str(ctx.questions), "--image-folder",
             str(ctx.images), "--out", str(parent / "f.npy"), "--no-progress"],
            [f"{parent / 'f.npy'}: --out lies under {parent}, which is a file"])


def vqa_answers_under_a_file(ctx, tmp):
    parent = a_file(tmp)
    argv = vqa_argv(ctx, tmp)
    argv[argv.index("--answers-file") + 1] = str(parent / "answers.jsonl")
    return argv, [f"{parent / 'answers.jsonl'}: --answers-file lies under {parent}, which is a file"]


def vqa_binary_questions(ctx, tmp):
    questions = binary(tmp, "eeg_eval.jsonl")
    return vqa_argv(ctx, tmp, questions), [f"{questions}: not a text file (byte 0 is not UTF-8)"]


def vqa_hostile_adapter_bin(ctx, tmp):
    """A LoRA checkpoint whose adapter is a pickle that would run a command: refused before peft loads it."""
    model = tmp / "run"
    shutil.copytree(ctx.run, model, ignore=shutil.ignore_patterns("checkpoint-*", "adapter_model.safetensors"))
    torch.save({"base_model.model.x": Hostile(tmp / "pwned")}, model / "adapter_model.bin")
    return (vqa_argv(ctx, tmp, model=model, base=ctx.tiny),
            [f"{model / 'adapter_model.bin'}: refused: not a plain tensor file that loads without running code (it "
             f"would import {os.system.__module__}.system)"])


def train_binary_records(ctx, tmp):
    records = binary(tmp, "eeg_ft.json")
    return train_argv(ctx, tmp / "out", records), [f"{records}: not a text file (byte 0 is not UTF-8)"]


def train_output_dir_under_a_file(ctx, tmp):
    parent = a_file(tmp)
    return (train_argv(ctx, parent / "out"), [f"{parent / 'out'}: --output_dir lies under {parent}, which is a file"])


def merge_answers_under_a_file(ctx, tmp):
    parent = a_file(tmp)
    a = tmp / "4_0.jsonl"
    write_jsonl(a, answer_rows(ctx, "a" * 64, "run", ["q0", "q1", "q2", "q3"]))
    return (["--question-file", str(ctx.questions), "--answers-file", str(parent / "m.jsonl"), str(a)],
            [f"{parent / 'm.jsonl'}: --answers-file lies under {parent}, which is a file"])


def score_binary_answers(ctx, tmp):
    answers = binary(tmp, "answers.jsonl")
    return (["--question-file", str(ctx.questions), "--answers-file", str(answers), "--out", str(tmp / "s")],
            [f"{answers}: not a text file (byte 0 is not UTF-8)"])


def score_out_is_a_file(ctx, tmp):
    out = a_file(tmp)
    answers = tmp / "answers.jsonl"
    write_jsonl(answers, answer_rows(ctx, "a" * 64, "run", ["q0", "q1", "q2", "q3"]))
    return (["--question-file", str(ctx.questions), "--answers-file", str(answers), "--out", str(out)],
            [f"{out}: --out must be a folder, but it is a file"])


def baseline_train_out_under_a_file(ctx, tmp):
    b = baseline_setup(ctx)
    parent = a_file(tmp)
    return (["train", "--records", str(b["train"]), "--edf-dir", str(b["edf"]), "--out", str(parent / "m")],
            [f"{parent / 'm'}: --out lies under {parent}, which is a file"])


def _main(entry: str):
    if entry == "prepare":
        from sleep_eeg.images.prepare import main
    elif entry == "vision":
        from vision_modules.cli import main
    elif entry == "train":
        from llava.train.train_mem import main
    elif entry == "model_vqa":
        from llava.eval.model_vqa import main
    elif entry == "merge":
        from llava.eval.merge_answers import main
    elif entry == "stage":
        from eeg_vlm.stage import main
    elif entry == "synth":
        from sleep_eeg.synthetic.synth import main
    elif entry == "demo":
        from eeg_vlm.demo import main
    elif entry == "baseline":
        from sleep_eeg.baselines.classic import main
    else:
        from sleep_eeg.evaluation.score import main
    return main


def _command(entry: str) -> list[str]:
    script = Path(sys.executable).parent / "eeg-vlm"
    eeg_vlm = [str(script)] if script.is_file() else [sys.executable, "-m", "eeg_vlm.cli"]
    return {"prepare": eeg_vlm + ["prepare"], "vision": eeg_vlm + ["vision"], "score": eeg_vlm + ["score"],
            "stage": eeg_vlm + ["stage"], "synth": eeg_vlm + ["synth"], "demo": eeg_vlm + ["demo"],
            "baseline": eeg_vlm + ["baseline"],
            "train": [sys.executable, "llava/train/train_mem.py"],
            "model_vqa": [sys.executable, "llava/eval/model_vqa.py"],
            "merge": [sys.executable, "llava/eval/merge_answers.py"]}[entry]


# ---------------------------------------------------------------------------------------------
# EEG side: which hypnogram goes with which recording, EDF+D, sampling rates, output paths, images
# ---------------------------------------------------------------------------------------------
NIGHT_START = datetime.datetime(2000, 1, 1, 22)


def write_pair(folder: Path, psg: str = "SC9001E0-PSG.edf", hyp: str = "SC9001EC-Hypnogram.edf", minutes: float = 20,
               fs: float = 100.0, hyp_start: datetime.datetime = NIGHT_START, flat: bool = False,
               annotations=((0, 600, "Sleep stage W"), (600, 600, "Sleep stage 2"))) -> tuple[Path, Path]:
    """A PSG (EEG Fpz-Cz at ``fs``, starting NIGHT_START) and a hypnogram whose header starts at ``hyp_start``."""
    import edfio

    from sleep_eeg.recording import edf

    n = int(minutes * 60 * fs)
    t = np.arange(n) / fs
    x = np.zeros(n) if flat else 30 * np.sin(2 * np.pi * 0.25 * t) + np.random.default_rng(0).normal(0, 10, n)
    folder.mkdir(parents=True, exist_ok=True)
    edf.write_night(folder / psg, folder / hyp, {"EEG Fpz-Cz": x}, fs, list(annotations), NIGHT_START)
    if hyp_start != NIGHT_START:
        edfio.Edf([], recording=edfio.Recording(startdate=hyp_start.date()), starttime=hyp_start.time(),
                  annotations=[edfio.EdfAnnotation(*a) for a in annotations]).write(folder / hyp)
    return folder / psg, folder / hyp


def make_discontinuous(psg: Path, gap_after_records: int = 34, gap_s: int = 300) -> None:
    """Rewrite an EDF as EDF+D whose data records after the first ``gap_after_records`` start ``gap_s`` later."""
    import edfio

    src = edfio.read_edf(psg)
    edf = edfio.Edf(list(src.signals), starttime=src.starttime, recording=src.recording,
                    data_record_duration=src.data_record_duration,
                    annotations=[edfio.EdfAnnotation(0, None, "Recording starts")])
    edf.write(psg)
    data = bytearray(psg.read_bytes())
    data[192:197] = b"EDF+D"
    step = int(src.data_record_duration)
    for k in range(gap_after_records, src.num_data_records):
        old, new = b"+%d\x14\x14\x00" % (k * step), b"+%d\x14\x14\x00" % (k * step + gap_s)
        assert len(old) == len(new)
        i = data.index(old)
        data[i: i + len(old)] = new
    psg.write_bytes(bytes(data))


def vision_checkpoint(ctx) -> Path:
    """One random vision module (resnet18) trained, as it were, on EEG Fpz-Cz images; made once per module, beside
    ctx.root (whose snapshot the cases compare)."""
    out = ctx.root.parent / f"{ctx.root.name}_rel_eeg_vision"
    if not (out / "config.json").is_file():
        from sleep_eeg.images.render import RenderConfig
        from vision_modules.checkpoint import random_checkpoint

        random_checkpoint(out, RenderConfig(px_per_s=4, height=32).to_dict(), image_size=(32, 96))
    return out


def prepare_argv(tmp: Path, edf_dir: Path, *extra: str) -> list[str]:
    return ["--edf-dir", str(edf_dir), "--out", str(tmp / "sleep_data"), "--workers", "1", *extra]


def stage_argv(ctx, tmp: Path, psg: Path, *extra: str) -> list[str]:
    return [str(psg), "--vision", str(vision_checkpoint(ctx)), "--out", str(tmp / "report"), "--device", "cpu", *extra]


def prepare_hypnogram_of_night_2(ctx, tmp):
    """Night 2's hypnogram (it starts ten minutes after night 1's recording) under night 1's name."""
    psg, hyp = write_pair(tmp / "edf", hyp_start=NIGHT_START + datetime.timedelta(minutes=10))
    return (prepare_argv(tmp, tmp / "edf"),
            [f"{hyp}: scores +0.17 h to +0.50 h (starting 2000-01-01 22:10:00) of a recording of 0.33 h ({psg}): "
             "a hypnogram of another night"])


def prepare_hypnogram_of_the_next_day(ctx, tmp):
    psg, hyp = write_pair(tmp / "edf", hyp_start=NIGHT_START + datetime.timedelta(days=1))
    return prepare_argv(tmp, tmp / "edf"), [f"{hyp}: scores +24.00 h to +24.33 h", "a hypnogram of another night"]


def stage_hypnogram_of_another_subject(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    _, hyp = write_pair(tmp / "edf", "SC9011E0-PSG.edf", "SC9011EC-Hypnogram.edf")
    return (stage_argv(ctx, tmp, psg, "--hypnogram", str(hyp)),
            [f"{hyp}: a hypnogram of subject SC901 night 1, not of SC9001E0-PSG.edf (subject SC900 night 1)"])


def stage_hypnogram_of_night_2(ctx, tmp):
    psg, hyp = write_pair(tmp / "edf", hyp_start=NIGHT_START + datetime.timedelta(minutes=10))
    return (stage_argv(ctx, tmp, psg, "--hypnogram", str(hyp)),
            [f"{hyp}: scores +0.17 h to +0.50 h (starting 2000-01-01 22:10:00) of a recording of 0.33 h ({psg}): "
             "a hypnogram of another night"])


def prepare_discontinuous_edf(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    make_discontinuous(psg)
    return (prepare_argv(tmp, tmp / "edf"),
            [f"{psg}: a discontinuous EDF+D recording (1 gap(s), the first 300 s long after 1020 s of data)"])


def stage_discontinuous_edf(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    make_discontinuous(psg)
    return (stage_argv(ctx, tmp, psg),
            [f"{psg}: a discontinuous EDF+D recording (1 gap(s), the first 300 s long after 1020 s of data)"])


def stage_out_is_a_file(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    (tmp / "report").write_text("the user's file\n")
    return stage_argv(ctx, tmp, psg), [f"{tmp / 'report'}: --out must be a folder, but it is a file"]


def stage_out_holds_the_users_stages_csv(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    (tmp / "report").mkdir()
    (tmp / "report" / "stages.csv").write_text("the user's table\n")
    return (stage_argv(ctx, tmp, psg),
            [f"{tmp / 'report' / 'stages.csv'}: is there and eeg-vlm stage did not write it"])


def stage_eeg_at_2_hz(ctx, tmp):
    psg, _ = write_pair(tmp / "edf", fs=2.0)
    return (stage_argv(ctx, tmp, psg),
            [f"{psg}: channel 'EEG Fpz-Cz' is sampled at 2 Hz, too slow for its band 0.3-35 Hz (at least 70 Hz)"])


def prepare_eeg_at_2_hz(ctx, tmp):
    psg, _ = write_pair(tmp / "edf", fs=2.0)
    return (prepare_argv(tmp, tmp / "edf"),
            [f"{psg}: channel 'EEG Fpz-Cz' is sampled at 2 Hz, too slow for its band 0.3-35 Hz (at least 70 Hz)"])


def prepare_px_per_s_0(ctx, tmp):
    write_pair(tmp / "edf")
    return prepare_argv(tmp, tmp / "edf", "--px-per-s", "0"), ["render: px_per_s must be a positive number, got 0"]


def prepare_fs_below_the_band(ctx, tmp):
    write_pair(tmp / "edf")
    return (prepare_argv(tmp, tmp / "edf", "--fs", "50"),
            ["render: the band 0.3-35 Hz reaches above half the drawing rate fs = 50 Hz"])


def prepare_eval_fraction_1_5(ctx, tmp):
    write_pair(tmp / "edf")
    return prepare_argv(tmp, tmp / "edf", "--eval-fraction", "1.5"), ["--eval-fraction must be between 0 and 1, got 1.5"]


def prepare_out_is_a_file_itself(ctx, tmp):
    write_pair(tmp / "edf")
    (tmp / "sleep_data").write_text("the user's file\n")
    return prepare_argv(tmp, tmp / "edf"), [f"{tmp / 'sleep_data'}: --out must be a folder, but it is a file"]


def synth_out_is_a_file(ctx, tmp):
    (tmp / "edf").write_text("the user's file\n")
    return (["--out", str(tmp / "edf"), "--nights", "1", "--hours", "0.1"],
            [f"{tmp / 'edf'}: --out must be a folder, but it is a file"])


def synth_hours_too_short(ctx, tmp):
    return (["--out", str(tmp / "edf"), "--nights", "1", "--hours", "0.005"],
            ["--hours 0.005 is 18 s; a synthetic night is at least 4 epochs of 30 s (0.0333 h)"])


def synth_no_nights(ctx, tmp):
    return (["--out", str(tmp / "edf"), "--nights", "0"],
            ["--nights, --hours and --nights-per-subject must be positive"])


def demo_workdir_is_a_file(ctx, tmp):
    (tmp / "work").write_text("the user's file\n")
    return (["--workdir", str(tmp / "work"), "--quick"],
            [f"{(tmp / 'work').resolve()}: --workdir must be a folder, but it is a file"])


def vision_train_link_out_of_the_image_folder(ctx, tmp):
    images = copy_images(ctx, tmp)
    (tmp / "elsewhere").mkdir()
    secret = tmp / "elsewhere" / "secret.png"
    shutil.copy(images / "e1.png", secret)
    (images / "e1.png").unlink()
    os.symlink(secret, images / "e1.png")
    return (["train", "--records", str(ctx.train_records), "--image-folder", str(images), "--out", str(tmp / "ck"),
             "--epochs", "1", "--no-progress"],
            [f"{ctx.train_records}: record 'r1' (#1): image 'e1.png' is a link to {os.path.realpath(secret)}, outside "
             f"the image folder {images}"])


def vision_train_image_of_another_size(ctx, tmp):
    images = copy_images(ctx, tmp)
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(images / "e3.png")
    return (["train", "--records", str(ctx.train_records), "--image-folder", str(images), "--out", str(tmp / "ck"),
             "--epochs", "1", "--no-progress"],
            [f"{ctx.train_records}: record 'r3' (#3): image {images / 'e3.png'} is 30x20 px, but 5 of the 6 images "
             "are 60x40 px"])


def baseline_psg_outside_the_edf_dir(ctx, tmp):
    psg, _ = write_pair(tmp / "elsewhere")
    records = [{"id": f"r{i}", "psg": str(psg), "epoch": i, "label": "W"} for i in range(4)]
    write_json(tmp / "eeg_ft.json", records)
    (tmp / "edf").mkdir()
    return (["train", "--records", str(tmp / "eeg_ft.json"), "--edf-dir", str(tmp / "edf"), "--out",
             str(tmp / "model")],
            [f"{tmp / 'eeg_ft.json'}: record 'r0' (#0): 'psg' '{psg}' leaves --edf-dir (absolute or '..')"])


# Recordings and hypnograms of other labs
def prepare_csv_hypnogram_unknown_stage(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    (tmp / "edf" / "SC9001EC-Hypnogram.edf").unlink()
    hyp = tmp / "edf" / "SC9001EC-Hypnogram.csv"
    hyp.write_text("W\nN2\nN5\n")
    return prepare_argv(tmp, tmp / "edf"), [f"{hyp}: line 3: unknown stage 'N5'"]


def prepare_pairing_csv_without_recording_column(ctx, tmp):
    write_pair(tmp / "edf")
    pairs = tmp / "edf" / "pairs.csv"
    pairs.write_text("psg,hypnogram\nSC9001E0-PSG.edf,SC9001EC-Hypnogram.edf\n")
    return prepare_argv(tmp, pairs), [f"{pairs}: a pairing CSV needs a header with the column 'recording'"]


def stage_eeg_name_not_in_the_recording(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    return (stage_argv(ctx, tmp, psg, "--eeg-name", "C4-M1"),
            [f"{psg}: no channel 'C4-M1', which the vision checkpoint", "channels present: EEG Fpz-Cz"])


def stage_csv_hypnogram_of_a_code_yasa_lacks(ctx, tmp):
    psg, _ = write_pair(tmp / "edf")
    hyp = tmp / "codes.txt"
    hyp.write_text("0\n2\n5\n")
    return (stage_argv(ctx, tmp, psg, "--hypnogram", str(hyp)),
            [f"{hyp}: line 3: stage code '5' is not one of YASA's integer codes"])


CASES = [  # (entry point, bad input, run as a real subprocess: one per entry point)
    ("prepare", prepare_unknown_stage, True),
    ("prepare", prepare_overlap, False),
    ("prepare", prepare_out_is_a_file, False),
    ("vision", vision_train_absolute_image, False),
    ("vision", vision_extract_dotdot_image, False),
    ("vision", vision_train_corrupt_png, False),
    ("vision", vision_extract_foreign_module, True),
    ("vision", vision_train_hostile_resume, False),
    ("train", train_stale_features, False),
    ("train", train_more_rows_than_records, False),
    ("train", train_absolute_image, False),
    ("train", train_dotdot_image, False),
    ("train", train_corrupt_png, False),
    ("train", train_human_only, False),
    ("train", train_turn_order, False),
    ("train", train_empty_reply, False),
    ("train", train_no_vision_tower, False),
    ("train", train_output_dir_holds_a_run, False),
    ("train", train_torn_checkpoint, False),
    ("train", train_empty_checkpoint, False),
    ("train", hostile("optimizer.pt"), True),
    ("train", hostile("scheduler.pt"), False),
    ("train", hostile("rng_state.pth"), False),
    ("train", hostile_deepspeed("global_step2_universal/zero/optimizer_state.pt"), False),
    ("train", train_deepspeed_folder_linked_out, False),
    ("train", hostile_deepspeed("global_step2_universal/zero/lm.weight/fp32.pt"), False),
    ("train", hostile_deepspeed("weights/mp_rank_00_model_states.pt", latest="weights"), False),
    ("train", hostile_deepspeed("{tmp}/elsewhere/mp_rank_00_model_states.pt", latest="{tmp}/elsewhere"), False),
    ("train", hostile_deepspeed("{tmp}/run/elsewhere/mp_rank_00_model_states.pt", latest="../elsewhere"), False),
    ("model_vqa", vqa_retrained_model, False),
    ("model_vqa", vqa_absolute_image, False),
    ("model_vqa", vqa_corrupt_png, False),
    ("model_vqa", vqa_stale_features, False),
    ("model_vqa", vqa_more_rows, False),
    ("model_vqa", vqa_int_and_str_ids, True),
    ("merge", merge_two_models, True),
    ("merge", merge_int_and_str_ids, False),
    ("score", score_two_models, False),
    ("baseline", baseline_config_edited, True),
    ("baseline", baseline_object_array, False),
    ("baseline", baseline_duplicate_ids, False),
    ("baseline", baseline_questions_without_subject, False),
    ("baseline", baseline_flat_nights, False),
    ("vision", vision_predict_duplicate_ids, False),
    ("vision", vision_train_out_is_a_file, False),
    ("vision", vision_predict_batch_size_0, False),
    ("vision", vision_train_number("--lr", "-0.001", "--lr must be a positive number, got -0.001"), False),
    ("vision", vision_train_number("--image-size", "0 0", "--image-size must be at least 1, got 0"), False),
    ("vision", vision_train_number("--workers", "-1", "--workers must be 0 or more, got -1"), False),
    ("vision", vision_train_number("--feature-dim", "0", "--feature-dim must be at least 1, got 0"), False),
    ("model_vqa", vqa_max_new_tokens_0, False),
    ("model_vqa", vqa_device_unknown, False),
    ("vision", vision_predict_device_unknown, False),
    ("vision", vision_extract_out_under_a_file, False),
    ("vision", vision_checkpoint_config(b"\xff\xfe{}", "binary", "not a text file (byte 0 is not UTF-8)"), False),
    ("vision", vision_checkpoint_config(b'{"arch": "resnet18", "feature_dim": "1024", "num_classes": 5}', "text_size",
                                        "'feature_dim' '1024' is not a positive integer"), False),
    ("model_vqa", vqa_answers_under_a_file, False),
    ("model_vqa", vqa_binary_questions, False),
    ("model_vqa", vqa_hostile_adapter_bin, False),
    ("train", train_binary_records, False),
    ("train", train_output_dir_under_a_file, False),
    ("train", train_number("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be at least 1"),
     False),
    ("train", train_number("--gradient_accumulation_steps", "0", "--gradient_accumulation_steps must be at least 1"),
     False),
    ("train", train_number("--model_max_length", "0", "--model_max_length must be at least 1, got 0"), False),
    ("train", train_number("--lora_r", "0", "--lora_r must be at least 1, got 0"), False),
    ("train", train_number("--learning_rate", "-1", "--learning_rate must be 0 or more, got -1.0"), False),
    ("merge", merge_answers_under_a_file, False),
    ("score", score_binary_answers, False),
    ("score", score_out_is_a_file, False),
    ("baseline", baseline_train_out_under_a_file, False),
    ("score", bad_probabilities("negative", -0.1), False),
    ("score", bad_probabilities("nan", float("nan")), False),
    ("score", score_metadata_not_an_object, False),
    ("score", score_int_and_str_ids, True),
    # EEG side: the hypnogram of another night, EDF+D, sampling rates, output paths, images, PSG paths
    ("prepare", prepare_hypnogram_of_night_2, False),
    ("prepare", prepare_hypnogram_of_the_next_day, False),
    ("stage", stage_hypnogram_of_another_subject, False),
    ("stage", stage_hypnogram_of_night_2, False),
    ("prepare", prepare_discontinuous_edf, False),
    ("stage", stage_discontinuous_edf, True),
    ("stage", stage_out_is_a_file, False),
    ("stage", stage_out_holds_the_users_stages_csv, False),
    ("stage", stage_eeg_at_2_hz, False),
    ("prepare", prepare_eeg_at_2_hz, False),
    ("prepare", prepare_px_per_s_0, False),
    ("prepare", prepare_fs_below_the_band, False),
    ("prepare", prepare_eval_fraction_1_5, False),
    ("prepare", prepare_out_is_a_file_itself, False),
    ("synth", synth_out_is_a_file, True),
    ("synth", synth_hours_too_short, False),
    ("synth", synth_no_nights, False),
    ("demo", demo_workdir_is_a_file, False),
    ("vision", vision_train_link_out_of_the_image_folder, False),
    ("vision", vision_train_image_of_another_size, False),
    ("baseline", baseline_psg_outside_the_edf_dir, False),
    # recordings and hypnograms of other labs
    ("prepare", prepare_csv_hypnogram_unknown_stage, False),
    ("prepare", prepare_pairing_csv_without_recording_column, False),
    ("stage", stage_eeg_name_not_in_the_recording, False),
    ("stage", stage_csv_hypnogram_of_a_code_yasa_lacks, False),
]


@pytest.fixture(scope="module", autouse=True)
def subprocesses(request, tmp_path_factory):
    """The subprocess cases run one after another in a background thread from the module's start, beside the
    in-process cases (one core each); each test waits for its own. {case: (future, fragments, tmp, snapshot)}."""
    selected = " ".join(item.nodeid for item in request.session.items)
    real = [(entry, make) for entry, make, is_real in CASES if is_real and case_id(entry, make) in selected]
    if not real:
        yield {}
        return
    ctx_ = request.getfixturevalue("ctx")
    pool = ThreadPoolExecutor(1)
    started = {}
    made = {}
    for entry, make in real:  # every case made first: a make may build shared input once (baseline_setup)
        tmp = tmp_path_factory.mktemp(make.__name__)
        made[make.__name__] = (tmp, *make(ctx_, tmp))
    for entry, make in real:
        tmp, argv, fragments = made[make.__name__]
        before = snapshot(tmp, ctx_.root)
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), str(tmp / "mods"), os.environ.get("PYTHONPATH", "")]))
        future = pool.submit(subprocess.run, _command(entry) + argv, cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
        started[make.__name__] = (future, fragments, tmp, before)
    yield started
    pool.shutdown(wait=True, cancel_futures=True)


def case_id(entry, make) -> str:
    return f"{entry}-{make.__name__}"


# ---------------------------------------------------------------------------------------------
# Suspicious but maybe fine: a warning with counts, and the work is done
# ---------------------------------------------------------------------------------------------
def test_flat_channel_and_short_hypnogram_are_warnings_with_counts(tmp_path, capsys):
    from sleep_eeg.images.prepare import main

    edf_dir = tmp_path / "edf"
    edf_dir.mkdir()
    write_night(edf_dir, [(0, 1200, "Sleep stage 2")], minutes=20, flat=True, name="SC9001E0")
    short = write_night(edf_dir, [(0, 1200, "Sleep stage 2")], minutes=40, name="SC9011E0")
    assert main(["--edf-dir", str(edf_dir), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--eval-subjects", "SC901"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {edf_dir / 'SC9001E0-PSG.edf'}: channel 'EEG Fpz-Cz' is flat (peak-to-peak under 1 µV) in 40 of "
        "40 epochs; their images are blank",
        f"warning: {short}: the hypnogram ends at 0.33 h, 0.33 h before the recording does (0.67 h in "
        f"{edf_dir / 'SC9011E0-PSG.edf'}); 40 of 80 epochs have no stage and are dropped",
    ]
    assert len(formats.read_records(tmp_path / "out" / "eeg_ft.json")) == 40
    assert len(formats.read_records(tmp_path / "out" / "eeg_eval.jsonl")) == 40


def test_baseline_on_a_flat_night_is_a_warning_with_counts(ctx, tmp_path, capsys):
    from sleep_eeg.baselines import classic as baselines

    b = baseline_setup(ctx)
    edf = tmp_path / "edf"
    shutil.copytree(b["edf"], edf)
    write_night(edf, [(0, 600, "Sleep stage W"), (600, 600, "Sleep stage 2")], flat=True, name="SC9011E0")
    records = tmp_path / "train.json"
    night2 = [{**r, "id": f"f{r['epoch']}", "psg": "SC9011E0-PSG.edf", "subject": "SC901"}
              for r in formats.read_records(b["train"])]
    write_json(records, formats.read_records(b["train"]) + night2)
    capsys.readouterr()
    baselines.train(records, edf, tmp_path / "model")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {records}: night SC9011E0-PSG.edf: the features are the same in all 40 of its "
                        "epochs (a flat channel?); the baseline learns nothing from them"]
    assert (tmp_path / "model" / "config.json").is_file()


def test_unknown_fusion_is_refused_wherever_it_is_set(ctx, tmp_path):
    """A fusion name outside FUSION_MODES never falls through to 'token': refused when a config is built, read
    (a base's config.json) or changed in code (a benchmark, a caller's ModelArguments)."""
    from llava.model.config import LlavaConfig, load_config

    with pytest.raises(FormatError, match="mm_hl_fusion 'no-such-mode' is not one of add token"):
        LlavaConfig(mm_hl_fusion="no-such-mode")
    config = LlavaConfig()
    with pytest.raises(FormatError, match="mm_hl_fusion 'no-such-mode' is not one of add token"):
        config.mm_hl_fusion = "no-such-mode"
    with pytest.raises(FormatError, match="mm_hl_projector 'own' is not one of shared separate"):
        config.mm_hl_projector = "own"
    assert config.mm_hl_fusion == "add" and config.mm_hl_projector == "shared"
    base = tmp_path / "base"
    base.mkdir()
    saved = json.loads((ctx.tiny / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**saved, "mm_hl_fusion": "Token"}))
    with pytest.raises(FormatError, match="mm_hl_fusion 'Token' is not one of add token"):
        load_config(base)


def test_stage_imports_the_named_module(capsys, tmp_path):
    """`eeg-vlm stage --import-module M` imports M (which registers the vision checkpoint's module) first."""
    from eeg_vlm.stage import main

    refused(main, ["--edf-dir", tmp_path, "--vision", tmp_path / "ck", "--out", tmp_path / "out", "--import-module",
                   "no_such_module_of_yours"], capsys, ["--import-module no_such_module_of_yours: cannot import it"],
            watch=[tmp_path])


def test_features_without_their_sidecar_are_used_with_a_warning(ctx, tmp_path, capsys):
    from llava.train.train import train

    feats = tmp_path / "feats.npy"
    shutil.copy(ctx.train_features, feats)  # the sidecar (.npy.json) left behind
    capsys.readouterr()
    assert train(train_argv(ctx, tmp_path / "out", None, None, feats)).state.global_step == 1
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert f"warning: {feats}: no sidecar (feats.npy.json), so nothing shows which records the features were " \
           f"extracted from; only their row count is checked against {ctx.train_records}" in warnings


def test_hedged_answers_are_unparseable_not_guessed(ctx, tmp_path):
    from eeg_core.answer import parse_stage
    from sleep_eeg.evaluation.score import score

    hedged = ["stage 2 or stage 3", "REM? no. Sleep stage: unclear", "Sleep stage: N2/N3", "Sleep stage: N1?",
              "N2, possibly N3", "N2 (maybe N1)", "either N1 or W", "Sleep stage: N2.5", "Sleep stage: N2, possibly N3",
              "Sleep stage: N2 (maybe N1)", "Sleep stage: either N1 or W", "Sleep stage: N2-N3", "probably N2"]
    assert {t: parse_stage(t) for t in hedged} == {t: None for t in hedged}
    assert parse_stage("It could be N1 or N2; the spindles decide.\nSleep stage: N2") == "N2"
    answers = tmp_path / "answers.jsonl"
    write_jsonl(answers, [formats.make_answer(f"q{i}", QUESTION, text, f"a{i}", "m", {})
                          for i, text in enumerate(hedged[4:8])])  # the four questions, hedged as in the field
    metrics = score(ctx.questions, answers, tmp_path / "scores")
    assert metrics["unparseable_question_ids"] == ["q0", "q1", "q2", "q3"] and metrics["accuracy"] == 0.0


# ---------------------------------------------------------------------------------------------
# Checkpoints: a kill during a save, a torn checkpoint, and the resume that names which one to use
# ---------------------------------------------------------------------------------------------
def test_kill_during_save_then_resume_from_the_named_checkpoint(ctx, tmp_path, monkeypatch):
    from llava.train.train import train
    from llava.train.trainer import LLaVATrainer

    out = tmp_path / "run"
    argv = train_argv(ctx, out, None, None, None, None, True, "--save_strategy", "steps", "--save_steps", "1",
                      "--max_steps", "3")
    save_rng = LLaVATrainer._save_rng_state

    def killed_at_step_2(self, output_dir):  # the process dies in the middle of checkpoint-2's save
        if self.state.global_step == 2:
            raise KeyboardInterrupt("killed")
        save_rng(self, output_dir)

    monkeypatch.setattr(LLaVATrainer, "_save_rng_state", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(argv)
    monkeypatch.undo()
    # The save went to a staging folder: no half-written checkpoint-2 beside the whole checkpoint-1.
    assert sorted(p.name for p in out.iterdir()) == [".checkpoint-staging", "checkpoint-1"]
    assert (out / ".checkpoint-staging" / "checkpoint-2" / "adapter_model.safetensors").is_file()

    # A torn checkpoint-2 (what a kill left before saves were atomic): a 0-byte config.json.
    shutil.copytree(out / ".checkpoint-staging" / "checkpoint-2", out / "checkpoint-2")
    (out / "checkpoint-2" / "config.json").write_bytes(b"")
    with pytest.raises(FormatError) as err:
        train(argv + ["--resume_from_checkpoint", "True"])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{out / 'checkpoint-2'}: incomplete checkpoint")
    named = re.search(r"--resume_from_checkpoint (\S+)\)$", message).group(1)
    assert named == str(out / "checkpoint-1")

    trainer = train(argv + ["--resume_from_checkpoint", named])  # the one the message names
    assert trainer.state.global_step == 3
    assert sorted(p.name for p in out.glob("*checkpoint*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    from llava.train.checkpoints import checkpoint_problem

    assert [checkpoint_problem(out / f"checkpoint-{k}") for k in (1, 2, 3)] == [None, None, None]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


def test_kill_during_the_final_save_then_resume_equals_an_uninterrupted_run(ctx, tmp_path, monkeypatch):
    """The last step's checkpoint is whole, the final save is killed: the resume takes no step beyond
    --max_steps (no checkpoint-3) and saves the weights an uninterrupted run saves (constant learning rate, so
    one more step would show)."""
    from safetensors.torch import load_file

    from llava.train.checkpoints import FINAL_STAGING
    from llava.train.train import train
    from llava.train.trainer import LLaVATrainer

    def argv(out: Path) -> list[str]:
        return train_argv(ctx, out, None, None, None, None, True, "--max_steps", "2", "--save_strategy", "steps",
                          "--save_steps", "1", "--lr_scheduler_type", "constant", "--warmup_ratio", "0")

    def weights(out: Path) -> dict:
        state = dict(load_file(out / "adapter_model.safetensors"))
        state.update(torch.load(out / "non_lora_trainables.bin", weights_only=True))
        return state

    train(argv(tmp_path / "plain"))
    out = tmp_path / "run"
    save_model = LLaVATrainer.save_model

    def killed_in_final_save(self, output_dir=None, _internal_call=False):
        save_model(self, output_dir, _internal_call)
        if output_dir is not None and Path(output_dir).name == FINAL_STAGING:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(LLaVATrainer, "save_model", killed_in_final_save)
    with pytest.raises(KeyboardInterrupt):
        train(argv(out))
    monkeypatch.undo()
    assert not (out / "config.json").exists() and (out / "checkpoint-2").is_dir()

    trainer = train(argv(out) + ["--resume_from_checkpoint", "True"])
    assert trainer.state.global_step == 2
    assert sorted(p.name for p in out.glob("*checkpoint*")) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    plain, resumed = weights(tmp_path / "plain"), weights(out)
    assert plain.keys() == resumed.keys()
    assert all(torch.equal(plain[k], resumed[k]) for k in plain), \
        max(float((plain[k] - resumed[k]).abs().max()) for k in plain)


def test_failure_before_the_first_step_removes_what_the_run_created(ctx, tmp_path, monkeypatch):
    from llava.train.train import train
    from llava.train.trainer import LLaVATrainer

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("simulated: out of memory in the first step")

    monkeypatch.setattr(LLaVATrainer, "training_step", out_of_memory)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated"):
        train(train_argv(ctx, out))
    assert not out.exists()
    # A folder the user made (with a log in it) stays, with only what was there before.
    out.mkdir()
    (out / "train.log").write_text("my notes\n")
    with pytest.raises(RuntimeError, match="simulated"):
        train(train_argv(ctx, out))
    assert [p.name for p in out.iterdir()] == ["train.log"]


def test_overwrite_output_dir_replaces_the_previous_run(ctx, tmp_path):
    from llava.train.train import train

    out = copied_run(ctx, tmp_path)
    train(train_argv(ctx, out, None, None, None, None, True, "--overwrite_output_dir", "True"))
    assert not list(out.glob("checkpoint-*"))  # the old run's checkpoints are gone, not mixed with the new run
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1 and (out / "config.json").is_file()


# ---------------------------------------------------------------------------------------------
# Seeds and the base's vision tower
# ---------------------------------------------------------------------------------------------
def test_same_command_same_seed_same_weights(ctx, tmp_path):
    """LoRA and a new (separate) feature projector are initialised from --seed: two runs of the same command
    give the same weights on the CPU; another seed gives others."""
    from safetensors.torch import load_file

    from llava.train.train import train

    def weights(out: Path, seed: str) -> dict:
        train(train_argv(ctx, out, None, None, None, None, True, "--hl_projector", "separate", "--seed", seed))
        state = dict(load_file(out / "adapter_model.safetensors"))
        state.update(torch.load(out / "non_lora_trainables.bin", weights_only=True))
        return state

    a, b, c = weights(tmp_path / "a", "0"), weights(tmp_path / "b", "0"), weights(tmp_path / "c", "1")
    assert any("mm_hl_projector" in k for k in a) and any("lora_A" in k for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_checkpoint_works_wherever_it_is_moved_and_from_any_working_directory(ctx, tmp_path, monkeypatch):
    """A run trained with a tower path relative to the working directory records it relative to its base; base
    and run moved elsewhere load from another working directory (one holding a decoy `clip` folder), and so does
    a run that recorded the old working-directory path."""
    from llava.model.builder import load_pretrained_model
    from llava.train.train import train

    shutil.copytree(ctx.tiny, tmp_path / "ck" / "tiny")
    monkeypatch.chdir(tmp_path)
    train(train_argv(ctx, Path("ck/run"), None, None, None, Path("ck/tiny"), True, "--vision_tower", "ck/tiny/clip"))
    assert json.loads((tmp_path / "ck" / "run" / "config.json").read_text())["mm_vision_tower"] == "clip"

    shutil.move(tmp_path / "ck", tmp_path / "moved")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "clip").mkdir(parents=True)  # not a tower: the checkpoint's own comes first
    monkeypatch.chdir(elsewhere)
    run, base = tmp_path / "moved" / "run", tmp_path / "moved" / "tiny"
    for recorded in ("clip", "ck/tiny/clip"):  # as recorded now, and as recorded relative to the old cwd
        config = json.loads((run / "config.json").read_text())
        write_json(run / "config.json", {**config, "mm_vision_tower": recorded})
        _, model, processor, _ = load_pretrained_model(str(run), str(base), "run", device="cpu")
        assert processor is not None and model.get_vision_tower().is_loaded, recorded


def test_without_vision_tower_the_bases_tower_is_taken(ctx, tmp_path):
    from llava.train.train import train

    out = tmp_path / "run"
    trainer = train(train_argv(ctx, out, None, None, None, None, False))
    assert trainer.state.global_step == 1
    config = json.loads((out / "config.json").read_text())
    assert config["mm_vision_tower"] == "clip" and config["mm_vision_select_layer"] == -2
    assert config["mm_projector_type"] == "mlp2x_gelu"


# ---------------------------------------------------------------------------------------------
# The table (last: the subprocess cases have run in the background meanwhile)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, make, real", CASES, ids=[case_id(e, m) for e, m, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(entry, make, real, ctx, tmp_path, capsys, subprocesses):
    """The shared check (tests/refusal.py): exit 2, one error line holding its fragments, and nothing under the
    case's folder or the module's data written, removed or touched."""
    if real:
        future, fragments, tmp_path, before = subprocesses[make.__name__]
        proc = future.result()
        check_refusal(proc.returncode, proc.stderr, fragments, before, watch=[tmp_path, ctx.root])
    else:
        argv, fragments = make(ctx, tmp_path)
        refused(_main(entry), argv, capsys, fragments, watch=[tmp_path, ctx.root])


# ---------------------------------------------------------------------------------------------
# EEG side: suspicious but maybe fine, a warning with counts and the work done
# ---------------------------------------------------------------------------------------------
def test_a_hypnogram_longer_than_its_recording_and_a_flat_night_are_warnings_with_counts(ctx, tmp_path, capsys):
    """A recording cut short under its whole hypnogram (prepare and stage), and a flat EEG (stage): one warning
    line each, with counts, and the work is done."""
    from eeg_vlm.stage import main as stage_main
    from sleep_eeg.images.prepare import main as prepare_main

    scoring = ((0, 600, "Sleep stage W"), (600, 1200, "Sleep stage 2"), (1800, 300, "Sleep stage ?"))
    psg, hyp = write_pair(tmp_path / "edf", minutes=20, annotations=scoring)  # scored to 30 min, recorded 20
    longer = (f"warning: {hyp}: the hypnogram scores 20 epochs (0.17 h) after the recording ends (0.33 h in {psg}); "
              "they have no signal and are dropped")
    assert prepare_main(prepare_argv(tmp_path, tmp_path / "edf", "--eval-fraction", "0")) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")] == [longer]
    assert len(formats.read_records(tmp_path / "sleep_data" / "eeg_ft.json")) == 40
    assert stage_main(stage_argv(ctx, tmp_path, psg, "--hypnogram", str(hyp))) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")] == [longer]

    flat, _ = write_pair(tmp_path / "flat", flat=True)
    assert stage_main([str(flat), "--vision", str(vision_checkpoint(ctx)), "--out", str(tmp_path / "flat_report"),
                       "--device", "cpu"]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")] == [
        f"warning: {flat}: channel 'EEG Fpz-Cz' is flat (peak-to-peak under 1 µV) in 40 of 40 epochs; their images "
        "are blank"]
    assert (tmp_path / "flat_report" / "stages.csv").is_file()
