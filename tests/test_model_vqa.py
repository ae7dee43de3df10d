"""llava/eval/model_vqa.py and merge_answers.py on the tiny random LLaVA: batching, resuming, chunks, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eeg_core.atomic import write_jsonl
from eeg_core.errors import FormatError
from eeg_core.formats import make_question, question_answer, read_jsonl, save_features
from llava.eval import merge_answers as merge_mod
from llava.eval import model_vqa
from llava.model.builder import model_fingerprint
from sleep_eeg.images.cot import QUESTIONS

from refusal import check_refusal

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 12  # tokens per answer: enough to tell answers apart, cheap on 2 cores
N_QUESTIONS = 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 questions over 4 PNGs: eight [img, img] pairs, one with a feature_index, one single image;
    12 feature rows beside the question file (the default path)."""
    root = tmp_path_factory.mktemp("vqa")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for k in range(4):
        name = f"epoch_{k}.png"
        Image.fromarray(rng.integers(0, 256, (40, 120, 3), dtype=np.uint8)).save(images / name)
        names.append(name)
    stages = ["W", "N1", "N2", "N3", "REM"]
    questions = []
    for i in range(N_QUESTIONS):
        img = names[i % 4]
        extra = {"subject": f"S{i // 5}", "night": 1, "epoch": i}
        if i == 3:
            extra["feature_index"] = 11
        q = make_question(f"q{i}", [img, img], QUESTIONS[i % len(QUESTIONS)], stages[i % 5], **extra)
        if i == 9:
            q["image"] = img  # one real image, no placeholder, no feature
        questions.append(q)
    qfile = root / "eeg_eval.jsonl"
    write_jsonl(qfile, questions)
    save_features(root / "eval_high_level_features.npy", rng.normal(size=(12, 1, 1024)).astype(np.float32))
    return {"root": root, "questions": qfile, "images": images, "records": questions}


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    return model_vqa.load_model(str(tiny_llava), None, "cpu")


def answer(data, tiny_llava, loaded, answers_file, **kw):
    kw.setdefault("max_new_tokens", MAX_NEW)
    return model_vqa.run(
        model_path=str(tiny_llava),
        question_file=str(kw.pop("question_file", data["questions"])),
        answers_file=str(answers_file),
        image_folder=str(data["images"]),
        device="cpu",
        loaded=loaded,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(data, tiny_llava):
    """The documented command, as a script, one question at a time: the answers every other run must match."""
    out = data["root"] / "answers" / "reference.jsonl"
    cmd = [sys.executable, "llava/eval/model_vqa.py", "--model-path", str(tiny_llava),
           "--question-file", str(data["questions"]), "--image-folder", str(data["images"]),
           "--answers-file", str(out), "--batch-size", "1", "--max-new-tokens", str(MAX_NEW)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_jsonl(out)


def texts(rows):
    return {r["question_id"]: r["text"] for r in rows}


def test_reference_answers_follow_llava_schema(reference, data, tiny_llava):
    assert [r["question_id"] for r in reference] == [q["question_id"] for q in data["records"]]
    for row, q in zip(reference, data["records"]):
        # LLaVA's schema, plus the fingerprint of the checkpoint that wrote the answer
        assert set(row) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata", "model_sha256"}
        assert row["model_sha256"] == model_fingerprint(tiny_llava)
        assert row["prompt"] == q["text"]
        assert row["model_id"] == tiny_llava.name
        assert row["metadata"]["label"] == q["label"] and row["metadata"]["epoch"] == q["epoch"]
        assert row["metadata"]["subject"] == q["subject"]
    assert reference[3]["metadata"]["feature_index"] == 11
    assert len({r["answer_id"] for r in reference}) == len(reference)
    # the model really answers: different inputs, different greedy answers
    assert len(set(texts(reference).values())) > 1


def test_batch_4_gives_the_answers_of_batch_1(reference, data, tiny_llava, loaded, tmp_path):
    out = tmp_path / "b4.jsonl"
    summary = answer(data, tiny_llava, loaded, out, batch_size=4)
    rows = read_jsonl(out)
    assert summary["answered"] == N_QUESTIONS
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in reference]
    assert texts(rows) == texts(reference)
    assert [r["metadata"] for r in rows] == [r["metadata"] for r in reference]
    assert rows == reference  # the same answers file, answer ids included (they are deterministic)


def test_answer_metadata_and_ids_are_one_policy():
    """Every answer writer builds its answers with question_answer: the question's fields but the prompt's (and a
    train record's id and conversation) go into metadata, then the writer's own; the id is a hash of the model and
    the question id (as text), so the same model gives the same id and another model another."""
    q = {"question_id": 7, "image": ["a.png", "b.png"], "text": "Which stage?", "label": "N2", "subject": "s1",
         "id": "r7", "conversations": [], "epoch": 3}
    a = question_answer(q, "Sleep stage: N2", "m", {"probabilities": {"N2": 1.0}}, "f" * 64)
    assert a["question_id"] == 7 and a["prompt"] == "Which stage?" and a["model_sha256"] == "f" * 64
    assert a["metadata"] == {"label": "N2", "subject": "s1", "epoch": 3, "probabilities": {"N2": 1.0}}
    assert list(a["metadata"]) == ["label", "subject", "epoch", "probabilities"]
    assert a["answer_id"] == question_answer({**q, "question_id": "7"}, "other", "m", None, "f" * 64)["answer_id"]
    others = [question_answer(q, "x", "m", None, "e" * 64), question_answer(q, "x", "n", None, "f" * 64),
              question_answer({**q, "question_id": 8}, "x", "m", None, "f" * 64), question_answer(q, "x", "m")]
    assert len({a["answer_id"], *(o["answer_id"] for o in others)}) == 5
    assert "model_sha256" not in others[-1] and len(a["answer_id"]) == 32


def test_features_reach_the_answers(reference, data, tiny_llava, loaded, tmp_path):
    """Shifted feature rows change answers: so equal answers elsewhere mean the right rows were used."""
    feats = np.load(data["root"] / "eval_high_level_features.npy")
    shifted = tmp_path / "shifted.npy"
    save_features(shifted, np.roll(feats, 1, axis=0))
    out = tmp_path / "shifted.jsonl"
    answer(data, tiny_llava, loaded, out, batch_size=4, high_level_features=str(shifted))
    new, ref = texts(read_jsonl(out)), texts(reference)
    assert new["q9"] == ref["q9"]  # the question without a placeholder uses no feature
    assert any(new[q] != ref[q] for q in ref if q != "q9")


def test_killed_run_resumes_without_gaps_or_repeats(reference, data, tiny_llava, loaded, tmp_path, monkeypatch):
    out = tmp_path / "killed.jsonl"
    real = model_vqa.answer_batch
    calls = []

    def dies_on_third_batch(*args, **kwargs):
        calls.append(len(kwargs["prompts"]))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_vqa, "answer_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        answer(data, tiny_llava, loaded, out, batch_size=3)
    assert [r["question_id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "q3", "q4", "q5"]

    calls.clear()
    monkeypatch.setattr(model_vqa, "answer_batch", real)
    summary = answer(data, tiny_llava, loaded, out, batch_size=3)
    assert (summary["answered"], summary["skipped"]) == (4, 6)
    rows = read_jsonl(out)
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in reference]
    assert texts(rows) == texts(reference)
    # a third run has nothing left to do
    assert answer(data, tiny_llava, loaded, out, batch_size=3)["answered"] == 0


def test_torn_last_line_is_repaired(reference, data, tiny_llava, loaded, tmp_path):
    out = tmp_path / "torn.jsonl"
    lines = [json.dumps(r) for r in reference[:4]]
    out.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    summary = answer(data, tiny_llava, loaded, out, batch_size=4)
    assert (summary["answered"], summary["skipped"]) == (7, 3)
    rows = read_jsonl(out)  # strict: no torn line left anywhere
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in reference]
    assert texts(rows) == texts(reference)


def test_two_chunks_merged_equal_the_unchunked_run(reference, data, tiny_llava, loaded, tmp_path):
    parts = [tmp_path / f"chunk_{k}.jsonl" for k in range(2)]
    for k, part in enumerate(parts):
        answer(data, tiny_llava, loaded, part, batch_size=4, num_chunks=2, chunk_idx=k)
    assert [r["question_id"] for r in read_jsonl(parts[1])] == ["q5", "q6", "q7", "q8", "q9"]
    merged = tmp_path / "merged.jsonl"
    assert merge_mod.main(["--question-file", str(data["questions"]), "--answers-file", str(merged),
                           *map(str, reversed(parts))]) == 0
    rows = read_jsonl(merged)
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in reference]
    assert texts(rows) == texts(reference)
    assert [r["metadata"] for r in rows] == [r["metadata"] for r in reference]


def test_merge_refuses_missing_and_repeated_answers(reference, data, tmp_path):
    part = tmp_path / "part.jsonl"
    write_jsonl(part, reference[:6])
    with pytest.raises(FormatError, match="4 of 10 questions have no answer"):
        merge_mod.merge_answers(data["questions"], [part], tmp_path / "m.jsonl")
    rest = tmp_path / "rest.jsonl"
    write_jsonl(rest, reference[5:])
    with pytest.raises(FormatError, match="'q5'.*answered twice"):
        merge_mod.merge_answers(data["questions"], [part, rest], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def bad_question_file(tmp_path, data, kind):
    qfile = tmp_path / "eeg_eval.jsonl"
    records = [dict(q) for q in data["records"]]
    if kind == "empty":
        qfile.write_text("")
        return qfile
    if kind == "duplicate":
        records[4]["question_id"] = "q2"
    if kind == "missing image":
        records[6]["image"] = ["gone.png", "gone.png"]
    write_jsonl(qfile, records)
    if kind == "too few feature rows":
        save_features(tmp_path / "eval_high_level_features.npy", np.zeros((5, 1, 1024), np.float32))
    elif kind == "feature size":
        save_features(tmp_path / "eval_high_level_features.npy", np.zeros((12, 1, 16), np.float32))
    else:
        (tmp_path / "eval_high_level_features.npy").write_bytes(
            (data["root"] / "eval_high_level_features.npy").read_bytes())
    return qfile


@pytest.mark.parametrize("kind, message", [
    ("empty", "records file is empty"),
    ("duplicate", "duplicate question_id 'q2'"),
    ("missing image", "question 'q6': image .*gone.png not found"),
    ("too few feature rows", "5 feature rows but record 'q3'"),
    ("feature size", "D=16 does not match .*mm_hidden_size=1024"),
])
def test_bad_input_gives_one_line_error(kind, message, data, tiny_llava, loaded, tmp_path):
    qfile = bad_question_file(tmp_path, data, kind)
    with pytest.raises(FormatError, match=message) as err:
        answer(data, tiny_llava, loaded, tmp_path / "a.jsonl", question_file=qfile)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a.jsonl").exists()


def test_answers_for_unknown_questions_are_refused(reference, data, tiny_llava, loaded, tmp_path):
    out = tmp_path / "foreign.jsonl"
    write_jsonl(out, [dict(reference[0], question_id="other-7")])
    with pytest.raises(FormatError, match="'other-7', which is not in this run's questions"):
        answer(data, tiny_llava, loaded, out)
    # a chunk's answers file only holds that chunk's questions
    write_jsonl(out, reference[:2])
    with pytest.raises(FormatError, match="'q0', which is not in this run's questions"):
        answer(data, tiny_llava, loaded, out, num_chunks=2, chunk_idx=1)


def test_script_reports_bad_input_in_one_line(data, tmp_path):
    missing = tmp_path / "nope.jsonl"
    proc = subprocess.run(
        [sys.executable, "llava/eval/model_vqa.py", "--model-path", "checkpoints/x", "--question-file", str(missing),
         "--image-folder", str(data["images"]), "--answers-file", str(tmp_path / "a.jsonl")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    line = check_refusal(proc.returncode, proc.stderr, alone=True)
    assert line == f"error: {missing}: records file not found"


def test_documented_command_runs_as_written_on_a_lora_checkpoint(reference, data, tiny_llava, tmp_path, monkeypatch):
    """The paper's command verbatim (relative paths, default flags): LoRA checkpoint + base, as training saves them."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    from llava.model.builder import load_pretrained_model

    monkeypatch.chdir(tmp_path)
    base = Path("your_checkpoints_path/LLaVA-v1.5-13b")
    shutil.copytree(tiny_llava, base)
    lora = Path("checkpoints/your_checkpoints_save_path")
    _, model, _, _ = load_pretrained_model(str(base), None, "tiny", device="cpu")
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,  # random B: the adapter changes the answers
                        target_modules=r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(lora)
    model.config.save_pretrained(lora)
    projector = {f"base_model.model.{k}": v for k, v in peft_model.base_model.model.state_dict().items()
                 if "mm_projector" in k}
    torch.save(projector, lora / "non_lora_trainables.bin")
    shutil.copytree(data["images"], "sleep_data/eeg_images_eval")
    shutil.copy(data["questions"], "sleep_data/eeg_eval.jsonl")
    shutil.copy(data["root"] / "eval_high_level_features.npy", "sleep_data/eval_high_level_features.npy")

    argv = ("--model-path checkpoints/your_checkpoints_save_path/ --model-base your_checkpoints_path/LLaVA-v1.5-13b/ "
            "--question-file sleep_data/eeg_eval.jsonl --image-folder sleep_data/eeg_images_eval "
            "--answers-file sleep_data/answers/eeg_answers.jsonl").split()
    assert model_vqa.main(argv) == 0
    rows = read_jsonl("sleep_data/answers/eeg_answers.jsonl")
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in reference]
    assert {r["model_id"] for r in rows} == {"your_checkpoints_save_path"}
    # the adapter was applied: the base alone answers differently
    assert model_vqa.main(["--model-path", str(base), "--question-file", "sleep_data/eeg_eval.jsonl",
                           "--image-folder", "sleep_data/eeg_images_eval", "--answers-file", "base.jsonl"]) == 0
    assert texts(rows) != texts(read_jsonl("base.jsonl"))


def test_conv_mode_defaults_to_the_checkpoints_conv_version(reference, data, tiny_llava, loaded, tmp_path, monkeypatch):
    answer(data, tiny_llava, loaded, tmp_path / "explicit.jsonl", conv_mode="eeg_vqa")
    monkeypatch.setattr(loaded[1].config, "conv_version", "eeg_vqa", raising=False)
    answer(data, tiny_llava, loaded, tmp_path / "default.jsonl")
    explicit, default = texts(read_jsonl(tmp_path / "explicit.jsonl")), texts(read_jsonl(tmp_path / "default.jsonl"))
    assert default == explicit
    assert default != texts(reference)  # reference: no conv_version in the tiny config -> llava_v1


def test_sampling_is_repeatable_with_a_seed(reference, data, tiny_llava, loaded, tmp_path):
    runs = []
    for k in range(2):
        answer(data, tiny_llava, loaded, tmp_path / f"s{k}.jsonl", temperature=1.0, top_p=0.9, seed=3, batch_size=4)
        runs.append(texts(read_jsonl(tmp_path / f"s{k}.jsonl")))
    assert runs[0] == runs[1]
    assert runs[0] != texts(reference)


def test_answers_from_another_model_are_not_mixed_in(reference, data, tiny_llava, loaded, tmp_path):
    out = tmp_path / "other_model.jsonl"
    write_jsonl(out, [dict(r, model_id="llava-v1.5-13b", model_sha256="ab" * 32) for r in reference[:3]])
    before = out.read_bytes()
    with pytest.raises(FormatError, match="written by model 'llava-v1.5-13b' with fingerprint abababababab"):
        answer(data, tiny_llava, loaded, out)
    assert out.read_bytes() == before
    # the folder name does not decide: the same checkpoint under another name resumes
    write_jsonl(out, [dict(r, model_id="renamed") for r in reference[:3]])
    assert answer(data, tiny_llava, loaded, out)["skipped"] == 3
