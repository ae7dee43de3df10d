"""Sleep-staging scores: the stage parser, metrics checked against hand arithmetic, plots, bad input."""
import json
import os
import subprocess
import sys

import pytest

from eeg_core.answer import UNPARSEABLE, parse_stage
from eeg_core.atomic import write_jsonl
from eeg_core.cli import run
from eeg_core.formats import make_answer, make_question
from sleep_eeg.evaluation.metrics import format_comparison, summary_row
from sleep_eeg.evaluation.score import main, score

from refusal import check_refusal, refused

# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------
PHRASINGS = [
    ("The EEG shows spindles and K-complexes.\nSleep stage: N2", "N2"),
    ("sleep stage: rem", "REM"),
    ("**Sleep stage:** N1", "N1"),
    ("Sleep stage: Wake", "W"),
    ("Sleep stage: W", "W"),
    ("Sleep stage: R", "REM"),
    ("Sleep Stage - N3.", "N3"),
    ("Mentions of N3 and W earlier.\nSleep stage: N1 (light sleep)", "N1"),
    ("Sleep stage: N2\nOn reflection the delta power says otherwise.\nSleep stage: N3", "N3"),
    ("Sleep stage: unsure\nThe low-voltage mixed activity points to stage 1.", "N1"),
    ("R", "REM"),
    ("w.", "W"),
    ("N3", "N3"),
    ("The subject is awake with alpha rhythm.", "W"),
    ("Wakefulness.", "W"),
    ("This looks like stage 2 sleep.", "N2"),
    ("Stage N2", "N2"),
    ("S1", "N1"),
    ("non-REM stage 2", "N2"),
    ("R&K stage 4", "N3"),
    ("Stage II", "N2"),
    ("Stage III", "N3"),
    ("Slow-wave sleep with high-amplitude delta.", "N3"),
    ("SWS", "N3"),
    ("deep sleep", "N3"),
    ("Rapid eye movement sleep: sawtooth waves.", "REM"),
    ("REM sleep", "REM"),
    ("Stage R", "REM"),
    ("Answer: W", "W"),
    ("First I considered W, then N1; the spindles make it N2.", "N2"),
    ("It is N2, not N3.", "N2"),
    ("This is N1 rather than W.", "N1"),
    ("Ruling out REM, the answer is stage 3.", "N3"),
]
NO_STAGE = [
    "",
    "I cannot tell.",
    "NREM sleep of some kind",  # non-REM without a number is not REM
    "non-REM sleep",
    "N23 epochs were reviewed",  # N2 inside N23
    "Roughly 20% delta waves; bursts of theta.",  # no 'R'/'W' picked out of words
    "The recording is reliable.",
    "R&K scoring was used",
    None,
]


@pytest.mark.parametrize("text,stage", PHRASINGS)
def test_parse_stage_phrasings(text, stage):
    assert parse_stage(text) == stage


@pytest.mark.parametrize("text", NO_STAGE)
def test_parse_stage_none(text):
    assert parse_stage(text) is None


# ---------------------------------------------------------------------------------------------
# Metrics on hand-written answers
# ---------------------------------------------------------------------------------------------
# Ten epochs of two subjects: scored labels, and answer texts whose parsed stage is in the comment.
CASES = [
    ("s1", 0, "W", "Alpha rhythm.\nSleep stage: W"),  # W
    ("s1", 1, "W", "The subject is awake."),  # W
    ("s1", 2, "W", "Slowing of alpha.\nSleep stage: N1"),  # N1 (wrong)
    ("s1", 3, "N1", "Vertex waves; stage 1."),  # N1
    ("s1", 4, "N2", "Sleep stage: N2"),  # N2
    ("s1", 5, "N2", "Spindles, so N2 rather than N3."),  # N2
    ("s2", 0, "N2", "Much delta.\nSleep stage: N3"),  # N3 (wrong)
    ("s2", 1, "N3", "Slow-wave sleep."),  # N3
    ("s2", 3, "REM", "Sleep stage: REM"),  # REM (epoch 2 missing: a gap in the night)
    ("s2", 4, "REM", "I am not sure what this is."),  # unparseable (wrong)
]


def write_case(tmp_path, cases=CASES, drop_answers=0):
    qs, ans = [], []
    for i, (subject, epoch, label, text) in enumerate(cases):
        qid = f"{subject}_e{epoch}"
        qs.append(make_question(qid, [f"{qid}.png", f"{qid}.png"], "Which sleep stage?", label,
                                subject=subject, night=1, epoch=epoch))
        ans.append(make_answer(qid, "Which sleep stage?", text, f"a{i}", "tiny", {"label": label}))
    qf, af = tmp_path / "q.jsonl", tmp_path / "answers" / "a.jsonl"
    write_jsonl(qf, qs)
    write_jsonl(af, ans[: len(ans) - drop_answers])
    return qf, af


def test_metrics_match_hand_arithmetic(tmp_path):
    qf, af = write_case(tmp_path)
    m = score(qf, af)
    # true: W W W N1 N2 N2 N2 N3 REM REM ; pred: W W N1 N1 N2 N2 N3 N3 REM ?
    # 7 of 10 right.
    assert m["n"] == 10 and m["unparseable"] == 1 and m["missing"] == 0
    assert m["accuracy"] == pytest.approx(7 / 10)
    # per class (TP, predicted, true): W (2,2,3) N1 (1,2,1) N2 (2,2,3) N3 (1,2,1) REM (1,1,2)
    # F1 = 2 TP / (predicted + true): W 4/5, N1 2/3, N2 4/5, N3 2/3, REM 2/3
    f1 = {"W": 4 / 5, "N1": 2 / 3, "N2": 4 / 5, "N3": 2 / 3, "REM": 2 / 3}
    for s, v in f1.items():
        assert m["per_class"][s]["f1"] == pytest.approx(v)
    assert m["per_class"]["W"]["precision"] == pytest.approx(2 / 2)
    assert m["per_class"]["W"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["REM"]["recall"] == pytest.approx(1 / 2)
    assert [m["per_class"][s]["support"] for s in ("W", "N1", "N2", "N3", "REM")] == [3, 1, 3, 1, 2]
    assert m["macro_f1"] == pytest.approx((4 / 5 + 2 / 3 + 4 / 5 + 2 / 3 + 2 / 3) / 5)  # 0.72
    # kappa: p_o = 0.7; p_e = sum(true_k * pred_k) / n^2 with true counts W3 N1 1 N2 3 N3 1 REM2 ?0,
    # pred counts W2 N1 2 N2 2 N3 2 REM1 ?1: (6 + 2 + 6 + 2 + 2 + 0) / 100 = 0.18
    assert m["kappa"] == pytest.approx((0.7 - 0.18) / (1 - 0.18))
    cm = m["confusion_matrix"]
    assert cm["cols"] == ["W", "N1", "N2", "N3", "REM", UNPARSEABLE]
    assert cm["counts"] == [
        [2, 1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 2, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
    ]
    assert m["unparseable_question_ids"] == ["s2_e4"]
    assert m["per_subject"]["s1"]["accuracy"] == pytest.approx(5 / 6)
    # written beside the answers by default, and equal to what the API returned
    on_disk = json.loads((af.parent / "metrics.json").read_text())
    assert on_disk["accuracy"] == m["accuracy"] and on_disk["kappa"] == m["kappa"]


def test_macro_f1_leaves_out_absent_stages(tmp_path):
    # Only W, N1 and N2 occur. true: W W N2 N2 N2 W ; pred: W W N2 N1 N2 N2
    cases = [("s", 0, "W", "W"), ("s", 1, "W", "W"), ("s", 2, "N2", "N2"), ("s", 3, "N2", "N1"),
             ("s", 4, "N2", "Sleep stage: N2"), ("s", 5, "W", "Sleep stage: N2")]
    qf, af = write_case(tmp_path, cases)
    m = score(qf, af, plots=False)
    # W (2,2,3) 4/5 ; N1 (0,1,0) 0 ; N2 (2,3,3) 2/3
    assert m["macro_f1_stages"] == ["W", "N1", "N2"]
    assert m["macro_f1"] == pytest.approx((4 / 5 + 0 + 2 / 3) / 3)
    assert m["per_class"]["N3"]["f1"] is None and m["per_class"]["N3"]["support"] == 0


# ---------------------------------------------------------------------------------------------
# Plots and the command line
# ---------------------------------------------------------------------------------------------
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_writes_metrics_and_pngs(tmp_path, capsys):
    qf, af = write_case(tmp_path)
    out = tmp_path / "scores"
    with pytest.raises(SystemExit) as e:
        run(main, ["--question-file", str(qf), "--answers-file", str(af), "--out", str(out)])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "accuracy 0.7000" in printed and "macro-F1 0.7200   kappa 0.6341" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_matrix.png", "hypnogram_s1.png", "hypnogram_s2.png", "metrics.json"]
    for name in names[:-1]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert not (af.parent / "metrics.json").exists()


def test_python_dash_m_and_eeg_vlm_entry(tmp_path):
    qf, af = write_case(tmp_path)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    for cmd in ([sys.executable, "-m", "sleep_eeg.evaluation.score"], [sys.executable, "-m", "eeg_vlm.cli", "score"]):
        r = subprocess.run(cmd + ["--question-file", str(qf), "--answers-file", str(af), "--no-plots"],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "macro-F1 0.7200" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sleep_eeg.evaluation.score", "--question-file", str(qf),
                        "--answers-file", str(tmp_path / "nope.jsonl")], capture_output=True, text=True, env=env,
                       timeout=120)
    check_refusal(r.returncode, r.stderr, ["nope.jsonl"], alone=True)


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the record, exit status 2, nothing written
# ---------------------------------------------------------------------------------------------
def cli_error(capsys, qf, af, *extra):
    return refused(main, ["--question-file", qf, "--answers-file", af, *extra], capsys, watch=[af.parent],
                   alone=True)


def rewrite(path, edit):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, edit(rows))


def test_unknown_question_id(tmp_path, capsys):
    qf, af = write_case(tmp_path)
    rewrite(af, lambda rows: rows + [{**rows[0], "question_id": "ghost"}])
    err = cli_error(capsys, qf, af)
    assert str(af) in err and "'ghost'" in err and "answer #11" in err


def test_duplicate_question_ids(tmp_path, capsys):
    qf, af = write_case(tmp_path)
    rewrite(qf, lambda rows: rows + [rows[3]])
    err = cli_error(capsys, qf, af)
    assert str(qf) in err and "duplicate question_id 's1_e3'" in err


def test_duplicate_answers(tmp_path, capsys):
    qf, af = write_case(tmp_path)
    rewrite(af, lambda rows: rows + [rows[2]])
    err = cli_error(capsys, qf, af)
    assert str(af) in err and "answered twice" in err and "'s1_e2'" in err


def test_question_without_label(tmp_path, capsys):
    qf, af = write_case(tmp_path)
    rewrite(qf, lambda rows: [{k: v for k, v in r.items() if not (k == "label" and r["question_id"] == "s1_e4")}
                              for r in rows])
    err = cli_error(capsys, qf, af)
    assert str(qf) in err and "'s1_e4'" in err and "no label" in err


def test_label_outside_stages(tmp_path, capsys):
    qf, af = write_case(tmp_path)
    rewrite(qf, lambda rows: [{**r, "label": "S4"} if r["question_id"] == "s2_e1" else r for r in rows])
    err = cli_error(capsys, qf, af)
    assert str(qf) in err and "'s2_e1'" in err and "'S4'" in err


@pytest.mark.parametrize("which", ["questions", "answers"])
def test_empty_files(tmp_path, capsys, which):
    qf, af = write_case(tmp_path)
    target = qf if which == "questions" else af
    target.write_text("\n")
    err = cli_error(capsys, qf, af)
    assert str(target) in err and "empty" in err


def test_missing_answers_error_or_allowed(tmp_path, capsys):
    qf, af = write_case(tmp_path, drop_answers=2)
    err = cli_error(capsys, qf, af)
    assert "2 of 10 questions" in err and "--allow-missing" in err and "'s2_e3'" in err
    m = score(qf, af, allow_missing=True, plots=False)
    # the first eight cases: pred W W N1 N1 N2 N2 N3 N3 vs true W W W N1 N2 N2 N2 N3 -> 6 of 8 right
    assert m["n"] == 8 and m["missing"] == 2 and m["accuracy"] == pytest.approx(6 / 8)


# ---------------------------------------------------------------------------------------------
# Probabilities: log-loss and calibration
# ---------------------------------------------------------------------------------------------
def test_probabilities_give_log_loss_and_a_calibration_figure(tmp_path):
    import math

    labels = ["W", "N2", "N2", "REM"]
    probs = [{"W": 0.7, "N1": 0.1, "N2": 0.1, "N3": 0.05, "REM": 0.05},   # right, confidence 0.7
             {"W": 0.05, "N1": 0.05, "N2": 0.8, "N3": 0.05, "REM": 0.05},  # right, 0.8
             {"W": 0.05, "N1": 0.05, "N2": 0.25, "N3": 0.6, "REM": 0.05},  # wrong (N3), 0.6
             {"W": 0.1, "N1": 0.1, "N2": 0.1, "N3": 0.1, "REM": 0.6}]      # right, 0.6
    write_jsonl(tmp_path / "q.jsonl", [make_question(f"q{i}", ["a.png"], "?", s) for i, s in enumerate(labels)])
    answers = [make_answer(f"q{i}", "?", f"Sleep stage: {max(p, key=p.get)}", f"a{i}", "m", {"probabilities": p})
               for i, p in enumerate(probs)]
    write_jsonl(tmp_path / "a.jsonl", answers)
    m = score(tmp_path / "q.jsonl", tmp_path / "a.jsonl", tmp_path / "out")
    assert m["log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.8) + math.log(0.25) + math.log(0.6)) / 4)
    bins = {round(b["lo"], 1): b for b in m["calibration"]["bins"] if b["n"]}
    assert (bins[0.6]["n"], bins[0.6]["accuracy"], bins[0.7]["n"], bins[0.8]["n"]) == (2, 0.5, 1, 1)
    # ECE: (2 * |0.6 - 0.5| + 1 * |0.7 - 1| + 1 * |0.8 - 1|) / 4
    assert m["calibration"]["ece"] == pytest.approx((0.2 + 0.3 + 0.2) / 4)
    assert "calibration.png" in m["plots"] and (tmp_path / "out" / "calibration.png").stat().st_size > 0
    # answers without probabilities: no log-loss, no figure
    write_jsonl(tmp_path / "b.jsonl", [dict(a, metadata={}) for a in answers])
    m = score(tmp_path / "q.jsonl", tmp_path / "b.jsonl", tmp_path / "out2")
    assert "log_loss" not in m and "calibration.png" not in m["plots"]


# ---------------------------------------------------------------------------------------------
# YASA's pretrained stager beside the scores (--edf-dir, with the [baselines] extra)
# ---------------------------------------------------------------------------------------------
def _night_questions(tmp_path):
    """A 15-min synthetic night, a question per scored epoch (with its psg and epoch) and answers."""
    from sleep_eeg.synthetic import synth

    edf_dir = tmp_path / "edf"
    psg = synth.synth_nights(edf_dir, nights=1, seed=2, hours=0.25, verbose=False)[0]
    stages = synth.synth_night(2, 0, 1, 0.25)[0]
    qs, ans = [], []
    for epoch, label in enumerate(stages):
        if label not in ("W", "N1", "N2", "N3", "REM"):
            continue
        qid = f"q{epoch}"
        qs.append(make_question(qid, [f"{qid}.png"], "Which sleep stage?", label, subject="SC900", night=1,
                                epoch=epoch, psg=psg.name))
        ans.append(make_answer(qid, "Which sleep stage?", "Sleep stage: N2", f"a{epoch}", "tiny", {}))
    qf, af = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    write_jsonl(qf, qs)
    write_jsonl(af, ans)
    return qf, af, edf_dir


def test_yasa_row_beside_the_scores_when_installed(tmp_path, capsys):
    pytest.importorskip("yasa")
    from sleep_eeg.baselines import yasa_staging

    qf, af, edf_dir = _night_questions(tmp_path)
    assert main(["--question-file", str(qf), "--answers-file", str(af), "--no-plots", "--compare",
                 f"again={af}", "--edf-dir", str(edf_dir)]) == 0
    rows = json.loads((tmp_path / "metrics.json").read_text())["comparison"]
    assert [r["name"] for r in rows[1:]] == [yasa_staging.NAME, "again", "a"]  # after the majority class
    yasa = rows[1]
    assert yasa["answers_file"] is None and yasa["n"] == rows[-1]["n"] and 0 <= yasa["accuracy"] <= 1
    assert yasa_staging.NAME in capsys.readouterr().out


def test_no_yasa_row_without_yasa_or_edf_dir(tmp_path, monkeypatch):
    from sleep_eeg.baselines import yasa_staging

    qf, af, edf_dir = _night_questions(tmp_path)
    metrics = score(qf, af, plots=False, compare=[("again", af)])  # no --edf-dir: no row, YASA or not
    assert [r["name"] for r in metrics["comparison"]][1] == "again"
    monkeypatch.setattr(yasa_staging, "available", lambda: False)
    metrics = score(qf, af, plots=False, compare=[("again", af)], edf_dir=edf_dir)
    assert yasa_staging.NAME not in [r["name"] for r in metrics["comparison"]]


def test_the_comparison_table_is_drawn_from_the_metric_columns():
    """summary_row and format_comparison take their columns (name, key, format) from METRIC_COLUMNS: the table reads
    as it always did."""
    per_class = {s: {"f1": f1} for s, f1 in zip(("W", "N1", "N2", "N3", "REM"), (0.9, 0.123456, 0.8, 0.7, None))}
    m = {"n": 10, "accuracy": 0.5, "macro_f1": 0.25, "kappa": None, "per_class": per_class}
    row = summary_row("a", "x.jsonl", m)
    assert row == {"name": "a", "answers_file": "x.jsonl", "n": 10, "accuracy": 0.5, "macro_f1": 0.25, "kappa": None,
                   "n1_f1": 0.123456, "rem_f1": None}
    assert format_comparison([row]).splitlines() == [
        "        n accuracy macro-F1    kappa    N1 F1   REM F1",
        "a      10   0.5000   0.2500        -   0.1235        -",
    ]
