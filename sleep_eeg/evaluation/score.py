"""Sleep-staging scores: eval questions (with labels) + model answers -> metrics, a table and plots.

    eeg-vlm score --question-file Q --answers-file A [--out DIR] [--allow-missing] [--compare NAME=ANSWERS.jsonl ...]
    python -m sleep_eeg.evaluation.score ...

The stage of each answer is parsed from its final ``Sleep stage: X`` line, else from the last stage the
text states (``parse_stage``); a hedge ("stage 2 or stage 3", "REM?") is unparseable. Question ids are
compared as text (``7`` and ``"7"`` are one id; a question file holding both is refused). Unparseable answers are counted and scored as wrong: they get the separate
prediction ``unparseable``, which is never a true label. Metrics (scikit-learn): accuracy, macro-F1 (the
unweighted mean of the per-stage F1 over the AASM stages that occur in the labels or the parsed
predictions, listed in ``macro_f1_stages``: the usual five-stage macro-F1 whenever every stage is scored
or predicted, as on any whole night), Cohen's kappa, per-class precision / recall / F1 / support, the
confusion matrix (rows: scored stage, columns: predicted stage plus ``unparseable``).

Every question must have an answer: a missing answer is an error naming how many are missing, because a
score over a silently smaller set is not comparable. ``--allow-missing`` scores the answered subset and
records the missing count in ``metrics.json``.

``--compare NAME=ANSWERS.jsonl`` (repeatable) scores other answers files on the same questions and prints one
table: the majority class (the most common label of the questions), each named file, these answers; columns
n, accuracy, macro-F1, kappa, N1 F1, REM F1; also ``"comparison"`` in ``metrics.json``. With ``--edf-dir DIR``
(the questions' PSG files, as ``eeg-vlm prepare`` names them in ``psg``) and YASA installed (the ``[baselines]``
extra), the table also holds "YASA, pretrained (no training)": YASA's ``SleepStaging`` with the classifier it
ships, on EEG Fpz-Cz + EOG horizontal of each whole night, never fitted here. Without YASA the row is absent.

When every answer carries its five stage probabilities (``metadata["probabilities"]``: ``model_vqa.py
--answer-mode choices``, ``eeg-vlm vision predict``, the baselines), ``metrics.json`` also holds ``log_loss`` and
``calibration`` (the reliability of the top probability in ten bins, and the expected calibration error), and
``calibration.png`` draws it.

Writes into ``--out`` (default: the answers file's folder): ``metrics.json``, ``confusion_matrix.png``
and, when questions carry ``subject`` and ``epoch``, ``hypnogram_<subject>.png`` (scored vs predicted).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from eeg_core.answer import UNPARSEABLE, parse_stage
from eeg_core.atomic import write_json
from eeg_core.errors import FormatError
from eeg_core.options import add_options, option, options_from_args
from eeg_core.outputs import check_output
from eeg_core.formats import (
    answer_keys,
    question_keys,
    read_jsonl,
    read_records,
    record_id,
)
from eeg_core.stages import STAGES
from sleep_eeg.evaluation.metrics import (
    MAJORITY,
    answer_probabilities,
    compute_metrics,
    format_comparison,
    format_table,
    per_subject_metrics,
    probability_metrics,
    summary_row,
)
from sleep_eeg.evaluation.plots import plot_calibration, plot_confusion_matrix, plot_hypnograms


# ---------------------------------------------------------------------------------------------
# Reading and matching
# ---------------------------------------------------------------------------------------------
def load_labels(question_file: str | Path) -> tuple[dict[str, dict], list[str]]:
    """Questions by id (in file order) with their checked labels."""
    path = Path(question_file)
    questions: dict[str, dict] = {}
    order: list[str] = []
    records = read_records(path)
    for i, (q, key) in enumerate(zip(records, question_keys(records, path))):
        qid = record_id(q)
        if "label" not in q or q["label"] is None:
            raise FormatError(f"{path}: question {qid!r} (record #{i}) has no label; scoring needs labelled questions")
        if q["label"] not in STAGES:
            raise FormatError(
                f"{path}: question {qid!r} (record #{i}): label {q['label']!r} is not one of {' '.join(STAGES)}"
            )
        questions[key] = q
        order.append(key)
    return questions, order


def load_answers(answers_file: str | Path, questions: dict[str, dict]) -> dict[str, dict]:
    """Answers by question id; each must answer a known question, once, with a text."""
    path = Path(answers_file)
    if not path.is_file():
        raise FormatError(f"{path}: answers file not found")
    rows = read_jsonl(path)
    if not rows:
        raise FormatError(f"{path}: answers file is empty")
    answers: dict[str, dict] = {}
    first_model = rows[0].get("model_sha256") if isinstance(rows[0], dict) else None
    for lineno, (key, a) in enumerate(zip(answer_keys(rows, path, questions, "the question file"), rows), 1):
        if not isinstance(a.get("text"), str):
            raise FormatError(f"{path}: answer #{lineno} (question_id {a['question_id']!r}) has no 'text' string")
        if a.get("model_sha256") != first_model:
            raise FormatError(f"{path}: answer #{lineno} (question_id {a['question_id']!r}) comes from another model "
                              f"(model_sha256 {str(a.get('model_sha256'))[:12]}) than answer #1 "
                              f"({str(first_model)[:12]}); score the answers of one model")
        check_probabilities(a, f"{path}: answer #{lineno} (question_id {a['question_id']!r})")
        answers[key] = a
    return answers


def check_probabilities(answer: dict, where: str) -> None:
    """``metadata["probabilities"]``, when an answer carries it, must be the five stages' probabilities: finite,
    not negative, not all 0. Anything else is refused (it would drop the log-loss and calibration of the whole
    file)."""
    metadata = answer.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise FormatError(f"{where}: 'metadata' must be a JSON object, got {type(metadata).__name__}")
    if metadata is None or metadata.get("probabilities") is None:
        return
    probs = metadata["probabilities"]
    if not isinstance(probs, dict) or set(probs) != set(STAGES):
        raise FormatError(f"{where}: metadata.probabilities must map the five stages {' '.join(STAGES)} to "
                          f"probabilities, got {str(probs)[:80]}")
    for stage in STAGES:
        value = probs[stage]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if not ok:
            raise FormatError(f"{where}: metadata.probabilities[{stage!r}] = {value!r} is not a probability "
                              "(a finite number, 0 or more)")
    if sum(probs.values()) <= 0:
        raise FormatError(f"{where}: metadata.probabilities are all 0")


# ---------------------------------------------------------------------------------------------
# Scores side by side (--compare)
# ---------------------------------------------------------------------------------------------
def compare_rows(question_file: str | Path, named: Sequence[tuple[str, str | Path]], main: dict,
                 main_name: str, allow_missing: bool = False, edf_dir: str | Path | None = None,
                 role_names: dict | None = None) -> list[dict]:
    """One summary row each for the majority class, YASA pretrained (with ``edf_dir``, when YASA is
    installed; ``role_names``: the ``{"eeg", "eog"}`` channels it reads), every ``(name, answers file)`` and
    the main answers.

    The majority class predicts the most common label of the questions themselves (the training labels
    are not known here), so its accuracy is that label's share and its kappa 0.
    """
    questions, order = load_labels(question_file)
    labels = [questions[k]["label"] for k in order]
    counts = {s: labels.count(s) for s in STAGES}
    top = max(STAGES, key=lambda s: counts[s])
    rows = [summary_row(f"{MAJORITY} ({top})", None, compute_metrics(labels, [top] * len(labels)))]
    from sleep_eeg.baselines import yasa_staging  # YASA itself is imported only to stage a night

    if edf_dir is not None and yasa_staging.available():
        pred = yasa_staging.answer_questions(questions, order, edf_dir, role_names)
        rows.append(summary_row(yasa_staging.NAME, None, compute_metrics(labels, [pred[k] for k in order])))
    for name, path in named:
        answers = load_answers(path, questions)
        done = [k for k in order if k in answers]
        if len(done) < len(order) and not allow_missing:
            raise FormatError(f"{path} (--compare {name}): {len(order) - len(done)} of {len(order)} questions of "
                              f"{question_file} have no answer; pass --allow-missing to score the answered {len(done)}")
        pred = [parse_stage(answers[k]["text"]) or UNPARSEABLE for k in done]
        rows.append(summary_row(name, str(path), compute_metrics([questions[k]["label"] for k in done], pred)))
    rows.append(summary_row(main_name, main.get("answers_file"), main))
    return rows


def parse_compare(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``NAME=ANSWERS.jsonl`` strings -> ``(name, path)``; names must be distinct and non-empty."""
    named = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise FormatError(f"--compare {spec!r}: expected NAME=ANSWERS.jsonl")
        if name.strip() in [n for n, _ in named]:
            raise FormatError(f"--compare: the name {name.strip()!r} is given twice")
        named.append((name.strip(), path.strip()))
    return named


# ---------------------------------------------------------------------------------------------
# The API and the command
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreOptions:
    """``eeg-vlm score``'s options besides the questions, the answers and the output folder."""

    allow_missing: bool = option(False, "score the answered subset when some questions have no answer (default: "
                                        "error)")
    plots: bool = option(True, "write metrics.json only", flag="--no-plots")
    compare: Sequence[tuple[str, str | Path]] = option(
        (), "also score these answers on the same questions and print one table beside the majority class and the "
            "main answers (repeatable)", action="append", metavar="NAME=ANSWERS.jsonl")
    edf_dir: str | Path | None = option(
        None, "the questions' PSG folder (or pairing CSV): with --compare, adds a row for YASA's pretrained stager (no "
              "training; EEG Fpz-Cz + EOG horizontal) when YASA is installed (the [baselines] extra)")
    eeg_name: str | None = option(None, "with --edf-dir: the EEG channel YASA reads (e.g. C4-M1)")
    eog_name: str | None = option(None, "with --edf-dir: the EOG channel YASA reads (e.g. E1-M2)")


def score(question_file: str | Path, answers_file: str | Path, out_dir: str | Path | None = None,
          options: ScoreOptions | None = None, **overrides) -> dict:
    """Score answers against labelled questions; write ``metrics.json`` (and the PNGs, unless ``plots`` is off) into
    ``out_dir`` (default: the answers file's folder) and return the metrics. ``options``: :class:`ScoreOptions`, with
    ``overrides`` by keyword applied. With ``compare`` (``(name, answers file)`` pairs) ``metrics["comparison"]``
    puts the majority class, each of them and these answers side by side; with ``edf_dir`` (the questions' PSG
    folder or pairing CSV) and YASA installed, YASA's pretrained stager too, on the channels ``eeg_name`` and
    ``eog_name`` (default EEG Fpz-Cz and EOG horizontal)."""
    opts = replace(options or ScoreOptions(), **overrides)
    allow_missing = opts.allow_missing
    questions, order = load_labels(question_file)
    answers = load_answers(answers_file, questions)
    missing = [k for k in order if k not in answers]
    if missing and not allow_missing:
        raise FormatError(
            f"{answers_file}: {len(missing)} of {len(order)} questions of {question_file} have no answer "
            f"(first: {questions[missing[0]]['question_id']!r}); rerun model_vqa.py to complete them, "
            f"or pass --allow-missing to score the answered {len(order) - len(missing)}"
        )
    rows = []
    for k in order:
        if k not in answers:
            continue
        q = questions[k]
        pred = parse_stage(answers[k]["text"])
        rows.append({**{f: q[f] for f in ("subject", "night", "epoch") if f in q},
                     "question_id": q["question_id"], "label": q["label"], "pred": pred or UNPARSEABLE,
                     "probabilities": answer_probabilities(answers[k])})

    metrics = compute_metrics([r["label"] for r in rows], [r["pred"] for r in rows])
    with_probs = rows and all(r["probabilities"] is not None for r in rows)
    n_probs = sum(r["probabilities"] is not None for r in rows)
    if 0 < n_probs < len(rows):
        print(f"warning: {answers_file}: {len(rows) - n_probs} of {len(rows)} answers carry no stage probabilities; "
              "no log-loss or calibration is computed", file=sys.stderr)
    if with_probs:  # every answer carries its five probabilities
        metrics.update(probability_metrics([r["label"] for r in rows], np.stack([r["probabilities"] for r in rows])))
    metrics["missing"] = len(missing)
    metrics["unparseable_question_ids"] = [r["question_id"] for r in rows if r["pred"] == UNPARSEABLE][:50]
    if any("subject" in r for r in rows):
        metrics["per_subject"] = per_subject_metrics(rows)
    metrics["question_file"] = str(question_file)
    metrics["answers_file"] = str(answers_file)
    if opts.compare:
        metrics["comparison"] = compare_rows(question_file, opts.compare, metrics, Path(answers_file).stem,
                                             allow_missing, opts.edf_dir, {"eeg": opts.eeg_name, "eog": opts.eog_name})

    out = Path(out_dir) if out_dir is not None else Path(answers_file).parent
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if opts.plots:
        files.append(plot_confusion_matrix(metrics, out / "confusion_matrix.png"))
        if with_probs:
            files.append(plot_calibration(metrics, out / "calibration.png"))
        timed = [r for r in rows if "subject" in r and isinstance(r.get("epoch"), (int, np.integer))]
        if timed:
            files += plot_hypnograms(timed, out)
    metrics["plots"] = [p.name for p in files]
    write_json(out / "metrics.json", metrics)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    """``eeg-vlm score``'s command line: the files, the output folder and :class:`ScoreOptions`."""
    p = argparse.ArgumentParser(prog="eeg-vlm score", description=__doc__.split("\n\n")[0])
    p.add_argument("--question-file", required=True, help="eval questions (JSONL) with labels")
    p.add_argument("--answers-file", required=True, help="model_vqa.py answers (JSONL)")
    p.add_argument("--out", default=None, help="output folder (default: the answers file's folder)")
    add_options(p, ScoreOptions)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_output(args.out if args.out else Path(args.answers_file).parent, "--out", folder=True)
    named = parse_compare(args.compare or [])
    metrics = score(args.question_file, args.answers_file, args.out,
                    options_from_args(ScoreOptions, args, compare=named))
    print(format_table(metrics))
    if named:
        print("\n" + format_comparison(metrics["comparison"]))
    out = Path(args.out) if args.out else Path(args.answers_file).parent
    print(f"\nwrote {out / 'metrics.json'}" + "".join(f", {p}" for p in metrics["plots"]))
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
