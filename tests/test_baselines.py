"""`eeg-vlm baseline`: train on the training subjects, answer the held-out questions in the answers format,
score beside other answers (`eeg-vlm score --compare`); bad input is one line and writes nothing."""
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from eeg_core.answer import parse_stage, stage_line
from eeg_core.atomic import file_sha256, write_json, write_jsonl
from eeg_core.formats import read_jsonl, read_records
from eeg_core.stages import STAGES
from eeg_vlm.cli import main as eeg_vlm
from sleep_eeg.baselines import classic as baselines, classifiers, features
from sleep_eeg.signal import bands

from refusal import refused

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def cli(*args) -> subprocess.CompletedProcess:
    """The command as a user types it (a fresh process)."""
    r = subprocess.run([sys.executable, "-m", "eeg_vlm.cli", *map(str, args)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def in_process(*args) -> int:
    try:
        eeg_vlm([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Three short synthetic nights, prepared with one subject held out."""
    root = tmp_path_factory.mktemp("baselines")
    edf, data = root / "edf", root / "sleep_data"
    assert in_process("synth", "--out", edf, "--nights", 3, "--hours", 0.5, "--seed", 0) == 0
    assert in_process("prepare", "--edf-dir", edf, "--out", data, "--cot", "none", "--workers", 1,
                      "--eval-fraction", 0.34) == 0
    return {"root": root, "edf": edf, "train": data / "eeg_ft.json", "eval": data / "eeg_eval.jsonl"}


@pytest.fixture(scope="module")
def bandpower(split):
    """The reference baseline, trained and run through the console command."""
    model, answers = split["root"] / "bandpower", split["root"] / "answers" / "bandpower.jsonl"
    cli("baseline", "train", "--records", split["train"], "--edf-dir", split["edf"], "--kind", "bandpower",
        "--out", model)
    cli("baseline", "predict", "--model", model, "--question-file", split["eval"], "--edf-dir", split["edf"],
        "--answers-file", answers)
    return model, answers


def check_answers(answers_file: Path, question_file: Path) -> list[dict]:
    """One answer per question, in order, in LLaVA's schema; the text's stage is the most probable one."""
    questions, answers = read_records(question_file), read_jsonl(answers_file)
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    for a, q in zip(answers, questions):
        assert set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert a["prompt"] == q["text"] and a["metadata"]["label"] == q["label"]
        probs = a["metadata"]["probabilities"]
        assert list(probs) == list(STAGES) and abs(sum(probs.values()) - 1) < 1e-4
        assert a["text"] == stage_line(max(probs, key=probs.get)) and parse_stage(a["text"]) in STAGES
    assert len({a["answer_id"] for a in answers}) == len(answers)
    return answers


def test_bandpower_trains_on_training_subjects_and_answers_held_out_questions(split, bandpower):
    model, answers_file = bandpower
    config = json.loads((model / "config.json").read_text())
    train, questions = read_records(split["train"]), read_records(split["eval"])
    assert config["kind"] == "bandpower" and config["channels"] == ["EEG Fpz-Cz"]
    assert len(config["feature_names"]) == 5 and set(config["classes"]) <= set(STAGES)
    assert config["training"]["subjects"] == sorted({r["subject"] for r in train})
    assert config["training"]["records_sha256"] == file_sha256(split["train"])
    assert config["model_sha256"] == file_sha256(model / "model.json")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.json"]
    assert not set(config["training"]["subjects"]) & {q["subject"] for q in questions}
    check_answers(answers_file, split["eval"])
    # Several channels: five features each.
    two = split["root"] / "bandpower_two"
    config = baselines.train(split["train"], split["edf"], two, channels="EEG Fpz-Cz,EEG Pz-Oz")
    assert config["channels"] == ["EEG Fpz-Cz", "EEG Pz-Oz"] and len(config["feature_names"]) == 10
    assert len({n.split(":")[0] for n in config["feature_names"]}) == 2
    # Same inputs, same bytes.
    again = split["root"] / "again.jsonl"
    assert baselines.predict(model, split["eval"], split["edf"], again) == len(questions)
    assert again.read_bytes() == answers_file.read_bytes()


def test_features_baseline_on_scipy_and_score_compare(split, bandpower):
    model, answers = split["root"] / "features_scipy", split["root"] / "answers" / "features.jsonl"
    assert in_process("baseline", "train", "--records", split["train"], "--edf-dir", split["edf"],
                      "--kind", "features", "--extractor", "scipy", "--out", model) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["extractor"] == "scipy" and config["classes"] and (model / "model.npz").is_file()
    assert {"eeg_alpha", "eeg_alpha_c7min_norm", "eeg_alpha_p2min_norm", "time_hour"} <= set(config["feature_names"])
    with np.load(model / "model.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert len(z["roots"]) > 0
    assert in_process("baseline", "predict", "--model", model, "--question-file", split["eval"],
                      "--edf-dir", split["edf"], "--answers-file", answers) == 0
    check_answers(answers, split["eval"])

    out = split["root"] / "scores"
    r = cli("score", "--question-file", split["eval"], "--answers-file", bandpower[1], "--out", out, "--no-plots",
            "--compare", f"features={answers}")
    lines = r.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if "N1 F1" in line and "REM F1" in line):]
    rows = json.loads((out / "metrics.json").read_text())["comparison"]
    labels = [q["label"] for q in read_records(split["eval"])]
    top, count = Counter(labels).most_common(1)[0]
    assert [row["name"] for row in rows] == [f"majority class ({top})", "features", "bandpower"]
    assert [line[: len(row["name"])] for line, row in zip(table[1:], rows)] == [row["name"] for row in rows]
    majority, feats, bp = rows
    assert majority["accuracy"] == pytest.approx(count / len(labels)) and majority["kappa"] == 0
    for row, path in ((feats, answers), (bp, bandpower[1])):
        predicted = [parse_stage(a["text"]) for a in read_jsonl(path)]
        assert row["n"] == len(labels)
        assert row["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, labels)]))
        assert {"macro_f1", "kappa", "n1_f1", "rem_f1"} <= set(row)
    # The band-power baseline learns something real: it agrees with the labels beyond chance. (Its accuracy
    # against always answering the commonest stage is too noisy a yardstick here: two training subjects and
    # one held-out 30-min night, which differ as much as real subjects do.)
    assert bp["kappa"] > 0.2 and feats["accuracy"] > majority["accuracy"] + 0.1


def test_features_baseline_with_yasa(split, tmp_path):
    pytest.importorskip("yasa")
    model, answers = tmp_path / "features_yasa", tmp_path / "features_yasa.jsonl"
    baselines.train(split["train"], split["edf"], model, kind="features")  # --extractor auto picks YASA
    config = json.loads((model / "config.json").read_text())
    assert config["extractor"] == "yasa" and config["extractor_version"] == features.yasa_version()
    baselines.predict(model, split["eval"], split["edf"], answers)
    check_answers(answers, split["eval"])
    # The scipy stand-in computes every YASA feature, and each follows YASA's over a night's epochs.
    from sleep_eeg.recording.edf import read_edf, signal_uv

    psg = split["edf"] / read_records(split["eval"])[0]["psg"]
    x, _ = signal_uv(read_edf(psg), "EEG Fpz-Cz")
    ours, our_names = features.scipy_night_features({"eeg": x})
    theirs, their_names = features.yasa_night_features({"eeg": x})
    assert set(their_names) <= set(our_names) and len(ours) == len(theirs)
    for j, name in enumerate(their_names):
        r = np.corrcoef(ours[:, our_names.index(name)], theirs[:, j])[0, 1]
        assert r > 0.9, (name, r)


def test_bandpower_of_a_10_hz_sine_is_alpha():
    fs = 100.0
    t = np.arange(int(90 * fs)) / fs
    f = bands.log_relative_band_power(20 * np.sin(2 * np.pi * 10 * t), fs, [0, 1, 2])
    assert f.shape == (3, 5)
    alpha = list(bands.BANDS).index("alpha")
    assert (f.argmax(axis=1) == alpha).all()
    assert (np.exp(f[:, alpha]) > 0.95).all() and (np.delete(f, alpha, axis=1) < np.log(0.05)).all()


def test_exported_trees_give_sklearns_probabilities_with_missing_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(250, 6))
    y = np.asarray(STAGES)[(x[:, 0] > 0) + 2 * (x[:, 1] > 0.5) + (x[:, 2] > 1.5)]
    x[rng.random(x.shape) < 0.15] = np.nan  # missing values take the learned side of every split
    arrays, clf = classifiers.fit_boosted(x, y)
    test = rng.normal(size=(300, 6))
    test[rng.random(test.shape) < 0.2] = np.nan
    assert np.allclose(classifiers.boosted_proba(arrays, test), clf.predict_proba(test), atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the record, exit status 2, nothing written
# ---------------------------------------------------------------------------------------------
def error_line(capsys, *args) -> str:
    return refused(baselines.main, args, capsys, alone=True)


def test_bad_training_input(split, tmp_path, capsys):
    out = tmp_path / "model"
    train = read_records(split["train"])
    base = ["train", "--edf-dir", split["edf"], "--out", out]

    no_psg = tmp_path / "no_psg.json"
    write_json(no_psg, [train[0], {k: v for k, v in train[1].items() if k != "psg"}] + train[2:])
    err = error_line(capsys, *base, "--records", no_psg)
    assert str(no_psg) in err and train[1]["id"] in err and "psg" in err

    err = error_line(capsys, *base, "--records", split["train"], "--channels", "EEG Cz-Oz")
    assert train[0]["psg"] in err and "'EEG Cz-Oz'" in err and train[0]["id"] in err

    err = error_line(capsys, *base, "--records", split["train"], "--kind", "svm")
    assert "--kind" in err and "svm" in err

    outside = tmp_path / "outside.json"
    write_json(outside, [{**train[0], "epoch": 99999}] + train[1:])
    err = error_line(capsys, *base, "--records", outside)
    assert train[0]["psg"] in err and train[0]["id"] in err and "99999" in err

    empty = tmp_path / "empty_edf"
    empty.mkdir()
    err = error_line(capsys, "train", "--edf-dir", empty, "--out", out, "--records", split["train"])
    assert str(empty / train[0]["psg"]) in err and train[0]["id"] in err
    assert not out.exists()

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "keep.txt").write_text("mine")
    err = error_line(capsys, "train", "--edf-dir", split["edf"], "--out", not_a_model, "--records", split["train"])
    assert "refusing to overwrite" in err and (not_a_model / "keep.txt").read_text() == "mine"


def test_bad_model_and_questions(split, bandpower, tmp_path, capsys):
    model, _ = bandpower
    answers = tmp_path / "answers.jsonl"
    base = ["predict", "--edf-dir", split["edf"], "--answers-file", answers]

    other_kind = tmp_path / "other_kind"
    shutil.copytree(model, other_kind)
    config = json.loads((other_kind / "config.json").read_text())
    write_json(other_kind / "config.json", {**config, "kind": "features"})
    err = error_line(capsys, *base, "--model", other_kind, "--question-file", split["eval"])
    assert str(other_kind) in err and "model.npz" in err

    changed = tmp_path / "changed"
    shutil.copytree(model, changed)
    numbers = json.loads((changed / "model.json").read_text())
    write_json(changed / "model.json", {**numbers, "intercept": [0.0] * len(numbers["intercept"])})
    err = error_line(capsys, *base, "--model", changed, "--question-file", split["eval"])
    assert "sha256" in err and "model.json" in err

    err = error_line(capsys, *base, "--model", split["root"] / "sleep_data", "--question-file", split["eval"])
    assert "not a baseline model" in err

    # Questions of the training subjects are refused unless asked for.
    err = error_line(capsys, *base, "--model", model, "--question-file", split["train"])
    assert "--allow-overlap" in err and str(split["train"]) in err
    assert not answers.exists()
    assert in_process("baseline", *base, "--model", model, "--question-file", split["train"], "--allow-overlap") == 0
    assert len(read_jsonl(answers)) == len(read_records(split["train"]))
    answers.unlink()

    questions = read_records(split["eval"])
    no_psg = tmp_path / "no_psg.jsonl"
    write_jsonl(no_psg, [{k: v for k, v in q.items() if k != "psg"} for q in questions])
    err = error_line(capsys, *base, "--model", model, "--question-file", no_psg)
    assert questions[0]["question_id"] in err and str(no_psg) in err
    assert not answers.exists()


def test_real_sleep_edf_file(shared_data, bandpower, tmp_path, capsys):
    """A real Sleep-EDF PSG (EEG and EOG at 100 Hz beside 1-Hz channels): answered; its 1-Hz EMG is refused."""
    edf_dir = shared_data / "edfio_sleepedf_SC4001"
    questions = tmp_path / "real.jsonl"
    write_jsonl(questions, [{"question_id": f"SC4001E0_{i:04d}", "text": "Stage?", "label": "W", "subject": "SC400",
                             "night": 1, "epoch": i, "psg": "short_psg.edf"} for i in range(10)])
    answers = tmp_path / "answers.jsonl"
    assert baselines.predict(bandpower[0], questions, edf_dir, answers) == 10
    check_answers(answers, questions)
    err = error_line(capsys, "train", "--records", questions, "--edf-dir", edf_dir, "--out", tmp_path / "m",
                     "--channels", "EEG Fpz-Cz,EMG submental")
    assert "short_psg.edf" in err and "'EMG submental'" in err and "1 Hz" in err and "SC4001E0_0000" in err
    assert not (tmp_path / "m").exists()


def test_score_compare_bad_input(split, bandpower, tmp_path, capsys):
    from sleep_eeg.evaluation import score

    out = tmp_path / "scores"
    base = ["--question-file", split["eval"], "--answers-file", bandpower[1], "--out", out, "--no-plots"]
    short = tmp_path / "short.jsonl"
    write_jsonl(short, read_jsonl(bandpower[1])[1:])
    for extra, needle in ((["--compare", "no-equals-sign"], "NAME=ANSWERS.jsonl"),
                          (["--compare", f"x={short}"], str(short))):
        refused(score.main, base + extra, capsys, [needle], watch=[out, tmp_path], alone=True)


def test_a_baseline_is_one_entry_of_the_kinds_table(split, tmp_path, monkeypatch):
    """A kind added to ``KINDS`` alone (its features, an existing classifier) trains, is saved, loads and answers,
    in process as through the API, with the file and the config its classifier names."""
    def amplitude(signals, epochs, extractor=None):
        rows = [[np.ptp(x[e * int(30 * fs):(e + 1) * int(30 * fs)]) for x, fs in signals.values()] for e in epochs]
        return np.log(np.asarray(rows) + 1e-6), [f"{c}: log ptp" for c in signals]

    monkeypatch.setitem(baselines.KINDS, "amplitude", baselines.Kind(amplitude, classifiers.BOOSTED))
    model, answers = tmp_path / "amplitude", tmp_path / "amplitude.jsonl"
    assert in_process("baseline", "train", "--records", split["train"], "--edf-dir", split["edf"],
                      "--kind", "amplitude", "--channels", "EEG Fpz-Cz,EEG Pz-Oz", "--out", model) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["kind"] == "amplitude" and config["extractor"] is None
    assert config["classifier"].startswith("HistGradientBoostingClassifier") and config["model_file"] == "model.npz"
    assert config["feature_names"] == ["EEG Fpz-Cz: log ptp", "EEG Pz-Oz: log ptp"]
    assert in_process("baseline", "predict", "--model", model, "--question-file", split["eval"],
                      "--edf-dir", split["edf"], "--answers-file", answers) == 0
    assert {a["metadata"]["baseline"] for a in check_answers(answers, split["eval"])} == {"amplitude"}
