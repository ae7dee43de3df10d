"""The demo: the whole pipeline at ``--quick`` size under the real launchers, then a rerun that skips it all.

One run (~1 min on 2 cores; the deepspeed launcher with ZeRO-3 included) shared by the tests below.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eeg_core import formats
from eeg_core.answer import stage_line
from eeg_core.errors import FormatError
from eeg_core.layout import FEATURES_EVAL_NAME, FEATURES_TRAIN_NAME, RENDER_FILE
from eeg_core.stages import STAGES
from eeg_vlm import demo, steps
from sleep_eeg.baselines import yasa_staging
from sleep_eeg.evaluation import score

REPO = Path(__file__).resolve().parents[1]
STEPS = [s.name for s in demo.pipeline(demo.DemoOptions(quick=True, seed=0))]


def run_demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "eeg_vlm.demo", "--workdir", str(workdir), "--quick", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    return workdir, run_demo(workdir)


def test_each_step_writes_its_files(quick_run):
    workdir, proc = quick_run
    data = workdir / "sleep_data"

    # synth + prepare: Sleep-EDF-style nights -> the seed's layout, split by subject.
    assert len(list((workdir / "edf").glob("*-PSG.edf"))) == demo.QUICK.nights
    assert len(list((workdir / "edf").glob("*-Hypnogram.edf"))) == demo.QUICK.nights
    train = formats.read_records(data / "eeg_ft.json")
    questions = formats.read_records(data / "eeg_eval.jsonl")
    assert train and questions
    for rec in train:
        assert rec["image"][0] == rec["image"][1] and (data / "eeg_images_ft" / rec["image"][0]).is_file()
        human, gpt = rec["conversations"]
        assert human["value"].startswith("<image>\n<image>\n")
        assert gpt["value"].splitlines()[-1] == stage_line(rec["label"])
    for q in questions:
        assert {"question_id", "image", "text", "label", "subject", "epoch"} <= set(q)
        assert (data / "eeg_images_eval" / q["image"][0]).is_file()
    assert not {r["subject"] for r in train} & {q["subject"] for q in questions}

    # vision module: checkpoint, [N, 1, 1024] float32 features row per record, its own scores.
    assert (workdir / demo.VISION / "model.safetensors").is_file()
    for name, n in ((FEATURES_TRAIN_NAME, len(train)), (FEATURES_EVAL_NAME, len(questions))):
        feats = np.load(data / name, allow_pickle=False)
        assert feats.shape == (n, 1, 1024) and feats.dtype == np.float32 and np.isfinite(feats).all()
        assert json.loads((data / (name + ".json")).read_text())["n"] == n
    # the vision module's own answers and the two baselines', one per question, with probabilities
    for answers_file in (demo.VISION_ANSWERS, *(demo.baseline_answers(k) for k in demo.BASELINES)):
        rows = formats.read_jsonl(workdir / answers_file)
        assert [a["question_id"] for a in rows] == [q["question_id"] for q in questions], answers_file
        for a in rows:
            probs = a["metadata"]["probabilities"]
            assert set(probs) == set(STAGES) and abs(sum(probs.values()) - 1) < 1e-4
            assert a["text"] == stage_line(max(probs, key=probs.get))

    # tiny base, then the LoRA run in LLaVA's layout with the demo's recipe in its config.
    assert (workdir / demo.TINY / "tokenizer.model").is_file() and (workdir / demo.TINY / "clip").is_dir()
    run = workdir / demo.RUN
    for name in ("config.json", "adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert (config["mm_hl_fusion"], config["mm_hl_projector"]) == ("token", "separate")
    non_lora = torch.load(run / "non_lora_trainables.bin", weights_only=True)
    assert any("mm_hl_projector" in k for k in non_lora) and all(v.numel() > 0 for v in non_lora.values())

    # model_vqa answers: one per question, LLaVA's schema, labels carried in metadata.
    answers = formats.read_jsonl(data / "answers" / "eeg_answers.jsonl")
    assert sorted(a["question_id"] for a in answers) == sorted(q["question_id"] for q in questions)
    for a in answers:
        assert {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(a)
        assert "label" in a["metadata"]

    # score: metrics.json + plots; the summary puts every model beside the baselines on the same epochs.
    metrics = json.loads((workdir / demo.SCORES / "metrics.json").read_text())
    assert metrics["n"] == len(questions)
    assert (workdir / demo.SCORES / "confusion_matrix.png").is_file()
    summary = json.loads((workdir / "results" / "demo_summary.json").read_text())
    assert summary["ran"] == STEPS and summary["scored"]["accuracy"] == metrics["accuracy"]
    table = summary["table"]
    yasa = [yasa_staging.NAME] if yasa_staging.available() else []  # YASA pretrained: with the [baselines] extra
    assert [r["name"] if r["name"] in yasa else r["name"].split(" (")[0] for r in table] == [
        "majority class", *yasa, "band-power baseline", "band-power baseline", "feature baseline", "vision module",
        "EEG-VLM"]
    # the default recipe: three panels and a sequence encoder, recorded with the checkpoints
    recipe = demo.RECIPES[demo.DEFAULT_RECIPE]
    drawn = json.loads((data / RENDER_FILE).read_text())
    assert drawn["channels"] == recipe.channels.split(",") and drawn["spectrogram"] == recipe.spectrogram
    vision = json.loads((workdir / demo.VISION / "config.json").read_text())
    assert vision["render"] == drawn and vision["sequence"]["context"] == recipe.context
    assert vision["sequence"]["name"] == recipe.sequence
    assert config["eeg_render"] == drawn and ("--class_balance" in proc.stdout) == bool(recipe.class_balance)
    assert all(r["n"] == len(questions) for r in table)
    labels = [q["label"] for q in questions]
    assert table[0]["accuracy"] == pytest.approx(max(labels.count(s) for s in set(labels)) / len(labels))
    assert table[-1]["accuracy"] == metrics["accuracy"]
    # every row below the majority class is what the scoring computes from that row's answers file, which
    # answers every held-out epoch (checked here by hand for accuracy)
    models = table[1 + len(yasa):]
    assert [r["answers_file"] for r in models] == [
        *(demo.baseline_answers(k) for k in demo.BASELINES), demo.VISION_ANSWERS, demo.ANSWERS]
    for row in models:
        by_id = {a["question_id"]: a for a in formats.read_jsonl(workdir / row["answers_file"])}
        assert sorted(by_id) == sorted(q["question_id"] for q in questions), row["name"]
        pred = [score.parse_stage(by_id[q["question_id"]]["text"]) or score.UNPARSEABLE for q in questions]
        expected = score.compute_metrics(labels, pred)
        assert row["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(pred, labels)])), row["name"]
        for key in ("n", "accuracy", "macro_f1", "kappa"):
            assert row[key] == pytest.approx(expected[key], nan_ok=True), (row["name"], key)
        assert (row["n1_f1"], row["rem_f1"]) == (expected["per_class"]["N1"]["f1"], expected["per_class"]["REM"]["f1"])
    out = proc.stdout
    for row in table:
        assert row["name"] in out
    assert "macro-F1" in out and "N1 F1" in out and "REM F1" in out
    # each command is printed as a user would type it before it runs
    for command in ("$ eeg-vlm synth", "$ eeg-vlm prepare", "$ eeg-vlm vision train", "$ eeg-vlm vision extract",
                    "$ eeg-vlm vision predict", "$ eeg-vlm baseline train", "$ eeg-vlm baseline predict",
                    "eeg_vlm.tiny", "llava/train/train_mem.py", "llava/eval/model_vqa.py", "$ eeg-vlm score"):
        assert command in out, command
    assert "--deepspeed" in out and "zero3.json" in out


def test_rerun_skips_current_steps_and_redoes_only_what_changed(quick_run):
    workdir, _ = quick_run
    stamps = {p.name: p.read_text() for p in (workdir / steps.STAMPS).iterdir()}
    answers = workdir / demo.ANSWERS
    mtime = answers.stat().st_mtime_ns

    out = run_demo(workdir).stdout
    assert out.count(": current, skipped") == len(STEPS)
    assert {p.name: p.read_text() for p in (workdir / steps.STAMPS).iterdir()} == stamps
    assert answers.stat().st_mtime_ns == mtime
    assert json.loads((workdir / "results" / "demo_summary.json").read_text())["ran"] == []

    # A lost output reruns its step and nothing upstream of it.
    (workdir / demo.SCORES / "metrics.json").unlink()
    run_demo(workdir)
    assert json.loads((workdir / "results" / "demo_summary.json").read_text())["ran"] == ["score"]
    assert (workdir / demo.SCORES / "metrics.json").is_file()


def test_edf_dir_runs_a_recipe_on_your_own_nights(quick_run, tmp_path):
    workdir, _ = quick_run
    mine = tmp_path / "mine"
    out = run_demo(mine, "--edf-dir", str(workdir / "edf"), "--recipe", "waveform", "--no-vlm",
                   "--baselines-from", str(workdir)).stdout
    summary = json.loads((mine / "results" / "demo_summary.json").read_text())
    assert summary["ran"] == ["prepare", "vision-train", "vision-predict", "score"]  # no synth, no VLM
    assert not (mine / "edf").exists() and "$ eeg-vlm synth" not in out
    last_baseline = list(demo.BASELINES.values())[-1][2]
    assert [r["name"] for r in summary["table"]][-2:] == [last_baseline, "vision module (resnet18)"]
    questions = formats.read_records(mine / demo.EVAL_RECORDS)
    assert [q["question_id"] for q in questions] == [
        q["question_id"] for q in formats.read_records(workdir / demo.EVAL_RECORDS)]  # the same held-out epochs
    assert json.loads((mine / demo.DATA / RENDER_FILE).read_text())["channels"] == ["EEG Fpz-Cz"]
    one = tmp_path / "one"
    one.mkdir()
    for f in sorted((workdir / "edf").glob("*.edf"))[:2]:  # one night: one subject
        (one / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FormatError, match=r"one: nights of 1 subject\(s\) .*needs at least two"):
        demo.main(["--workdir", str(tmp_path / "w"), "--edf-dir", str(one)])


def test_stamp_follows_arguments_inputs_and_upstream(tmp_path):
    step = steps.Step("x", ["eeg-vlm", "score", "--out", "a"], outputs=["o"], inputs=["in.txt"], after=["up"])
    (tmp_path / "in.txt").write_text("1")
    key = steps.stamp_key(step, tmp_path, {"up": "k1"})
    assert steps.stamp_key(step, tmp_path, {"up": "k1"}) == key
    assert steps.stamp_key(step, tmp_path, {"up": "k2"}) != key
    (tmp_path / "in.txt").write_text("2")
    assert steps.stamp_key(step, tmp_path, {"up": "k1"}) != key
    other = steps.Step("x", ["eeg-vlm", "score", "--out", "b"], outputs=["o"], inputs=["in.txt"], after=["up"])
    assert steps.stamp_key(other, tmp_path, {"up": "k1"}) != steps.stamp_key(step, tmp_path, {"up": "k1"})
