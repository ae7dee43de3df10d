"""Sleep-staging scores: eval questions (with labels) + model answers -> metrics, a table and plots.

    eeg-vlm score --question-file Q --answers-file A [--out DIR] [--allow-missing] [--compare NAME=ANSWERS.jsonl ...]
    python -m sleep_eeg.score ...

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
n, accuracy, macro-F1, kappa, N1 F1, REM F1; also ``"comparison"`` in ``metrics.json``.

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
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eeg_vlm.formats import (
    STAGES,
    FormatError,
    atomic_path,
    question_key,
    question_keys,
    read_jsonl,
    read_records,
    record_id,
    write_json,
)

UNPARSEABLE = "unparseable"
EPOCH_SECONDS = 30.0
# Hypnogram rows, top to bottom (the sleep field's convention).
HYPNOGRAM_ORDER: tuple[str, ...] = ("W", "REM", "N1", "N2", "N3")

# ---------------------------------------------------------------------------------------------
# Stage parsing
# ---------------------------------------------------------------------------------------------
_SEP = r"[\s:=\-*\"'`]*"
_NUMBERED = (  # stage 2, stage N2, N2, S2, NREM 2, non-REM stage 2 -> by the digit (3 and 4 are N3)
    r"\b(?:(?:sleep\s+)?stage" + _SEP + r"(?:N\s*)?|N|S|(?:N|non[- ]?)REM\s*(?:stage\s*)?)(?P<num>[1-4])(?!\d)"
)
_ROMAN = r"\bstage\s+(?P<roman>IV|III|II|I)\b"  # R&K: stage I..IV
_BARE = (  # a lone W or R counts only right after a word that announces a stage
    r"\b(?:stage|answer|prediction|label|class|classification)\s*(?:is\s*)?" + _SEP + r"(?P<bare>W|R)\b(?!&)"
)
_WORDS = {
    "W": r"\b(?:wake(?:fulness)?|awake)\b",
    "N3": r"\b(?:slow[- ]?wave\s+(?:sleep|stage)|SWS|deep\s+sleep)\b",
    "REM": r"(?<!non-)(?<!non\s)\b(?:rapid[- ]eye[- ]movements?(?:\s+sleep)?|REM)\b",
}
_MENTION = re.compile(
    "|".join([_NUMBERED, _ROMAN, _BARE] + [f"(?P<{s}>{p})" for s, p in _WORDS.items()]), re.IGNORECASE
)
_NEGATED = re.compile(
    r"(?:\bnot|\bno|\bnor|\bthan|\binstead\s+of|\brul(?:e|es|ed|ing)\s+out|\bexclud(?:e|es|ed|ing)|\bunlike)"
    r"[\s,]*$",
    re.IGNORECASE,
)
# ANSWER_STAGE_PREFIX ("Sleep stage:"), tolerant of case, spacing and markdown bold.
_FINAL_LINE = re.compile(r"sleep\s*stage[*\s]*[:=\-]", re.IGNORECASE)
_NUM_STAGE = {"1": "N1", "2": "N2", "3": "N3", "4": "N3"}
_ROMAN_STAGE = {"I": "N1", "II": "N2", "III": "N3", "IV": "N3"}


def _mention_spans(text: str) -> list[tuple[str, int, int]]:
    """``(stage, start, end)`` of every stage the text states, in order; mentions after a negation ("not N3",
    "rather than W") are skipped."""
    found = []
    for m in _MENTION.finditer(text):
        if _NEGATED.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        if m.group("num"):
            stage = _NUM_STAGE[m.group("num")]
        elif m.group("roman"):
            stage = _ROMAN_STAGE[m.group("roman").upper()]
        elif m.group("bare"):
            stage = "W" if m.group("bare").upper() == "W" else "REM"
        else:
            stage = next(s for s in _WORDS if m.group(s))
        found.append((stage, m.start(), m.end()))
    return found


def _mentions(text: str) -> list[str]:
    return [stage for stage, _, _ in _mention_spans(text)]


# A hedge: two stages offered as alternatives ("stage 2 or stage 3", "N2/N3"), or a stage put as a question ("REM?").
_ALTERNATIVE = re.compile(r"[\s,]*(?:or|and/or|/|vs\.?|versus)[\s,]*(?:possibly|maybe|perhaps)?[\s,]*",
                          re.IGNORECASE)
_QUESTIONED = re.compile(r"[\s*\"'`)]*\?")


def _hedged(text: str, spans: list[tuple[str, int, int]], k: int) -> bool:
    """Whether mention ``k`` is offered as one of two alternatives or as a question."""
    stage, start, end = spans[k]
    if _QUESTIONED.match(text, end):
        return True
    for j in (k - 1, k + 1):
        if 0 <= j < len(spans) and spans[j][0] != stage:
            a, b = sorted((spans[j], spans[k]), key=lambda x: x[1])
            if _ALTERNATIVE.fullmatch(text[a[2] : b[1]]):
                return True
    return False


def parse_stage(text: Any) -> str | None:
    """The stage an answer gives, one of ``STAGES``, or None when it states none or hedges.

    The last ``Sleep stage: X`` line decides. When that line names no stage ("Sleep stage: unclear"), only the
    text after it can still give one: a stage stated before it is not read as the answer. Without such a line
    the last stage the text states does. A hedge is unparseable, never guessed: the deciding stage offered
    with another as alternatives ("stage 2 or stage 3", "N2/N3") or as a question ("REM?"). A whole answer of
    a single token (``"R"``, ``"w."``) is read as that stage.
    """
    if not isinstance(text, str):
        return None
    whole = re.fullmatch(r"[\s*\"'`(]*(W|R)[\s.*\"'`)]*", text, re.IGNORECASE)
    if whole:
        return "W" if whole.group(1).upper() == "W" else "REM"
    finals = list(_FINAL_LINE.finditer(text))
    if finals:
        start = finals[-1].start()
        line = text[start:].split("\n", 1)[0]
        spans = _mention_spans(line)
        if spans:
            return None if _hedged(line, spans, 0) else spans[0][0]
        text = text[start + len(line):]  # the line names no stage: only what follows it may
    spans = _mention_spans(text)
    if not spans:
        return None
    return None if _hedged(text, spans, len(spans) - 1) else spans[-1][0]


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
    for i, a in enumerate(rows):
        if not isinstance(a, dict) or a.get("question_id") is None:
            raise FormatError(f"{path}: answer #{i} has no question_id")
        qid = a["question_id"]
        key = question_key(qid, f"{path}: answer #{i}")
        if key not in questions:
            raise FormatError(f"{path}: answer #{i} is for question_id {qid!r}, which the question file does not hold")
        if key in answers:
            raise FormatError(f"{path}: duplicate answer for question_id {qid!r} (answer #{i})")
        if not isinstance(a.get("text"), str):
            raise FormatError(f"{path}: answer #{i} (question_id {qid!r}) has no 'text' string")
        answers[key] = a
    return answers


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Accuracy, macro-F1, Cohen's kappa, per-class scores and the confusion matrix.

    ``y_pred`` may hold ``UNPARSEABLE``; it is never right. Macro-F1 averages over the stages that occur
    in the labels or the (parsed) predictions; a stage in neither has no F1 and is left out.
    """
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = list(y_true), list(y_pred)
    present = [s for s in STAGES if s in y_true or s in y_pred]
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(STAGES), zero_division=0
    )
    per_class = {}
    for i, s in enumerate(STAGES):
        defined = s in present
        per_class[s] = {
            "precision": float(prec[i]) if defined else None,
            "recall": float(rec[i]) if defined else None,
            "f1": float(f1[i]) if defined else None,
            "support": int(support[i]),
        }
    cm = confusion_matrix(y_true, y_pred, labels=list(STAGES) + [UNPARSEABLE])[: len(STAGES)]
    kappa = cohen_kappa_score(y_true, y_pred) if len(set(y_true) | set(y_pred)) > 1 else float("nan")
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(np.mean([f1[STAGES.index(s)] for s in present])),
        "macro_f1_stages": present,
        "kappa": _num(kappa),
        "unparseable": sum(p == UNPARSEABLE for p in y_pred),
        "per_class": per_class,
        "confusion_matrix": {"rows": list(STAGES), "cols": list(STAGES) + [UNPARSEABLE], "counts": cm.tolist()},
    }


def format_table(metrics: dict) -> str:
    """A readable summary: headline scores, per-class table, confusion matrix."""
    kappa = metrics["kappa"]
    lines = [
        f"n={metrics['n']}  unparseable={metrics['unparseable']}  missing={metrics.get('missing', 0)}",
        f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
        f"Cohen's kappa {'n/a' if kappa is None else f'{kappa:.4f}'}"
        + (f"   log-loss {metrics['log_loss']:.4f}   ECE {metrics['calibration']['ece']:.4f}"
           if "log_loss" in metrics else ""),
        "",
        f"{'stage':<6}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}",
    ]
    fmt = lambda x: f"{'-':>10}" if x is None else f"{x:>10.4f}"  # noqa: E731
    for s, c in metrics["per_class"].items():
        lines.append(f"{s:<6}{fmt(c['precision'])}{fmt(c['recall'])}{fmt(c['f1'])}{c['support']:>9}")
    cm = metrics["confusion_matrix"]
    lines += ["", "confusion matrix (rows: scored, columns: predicted)",
              f"{'':<6}" + "".join(f"{'?' if c == UNPARSEABLE else c:>6}" for c in cm["cols"])]
    for r, counts in zip(cm["rows"], cm["counts"]):
        lines.append(f"{r:<6}" + "".join(f"{v:>6}" for v in counts))
    return "\n".join(lines)


def answer_probabilities(answer: dict) -> np.ndarray | None:
    """The five stage probabilities an answer carries in ``metadata["probabilities"]`` (``choices`` answers, the
    vision module's and the baselines'), in ``STAGES`` order and summing to 1; None when it carries none."""
    probs = (answer.get("metadata") or {}).get("probabilities")
    if not isinstance(probs, dict) or set(probs) != set(STAGES):
        return None
    row = np.asarray([float(probs[s]) for s in STAGES])
    if not np.isfinite(row).all() or (row < 0).any() or row.sum() <= 0:
        return None
    return row / row.sum()


def probability_metrics(y_true: Sequence[str], probs: np.ndarray, bins: int = 10) -> dict:
    """Log-loss of the five probabilities and the reliability of the confidence (the top probability).

    ``log_loss``: the mean negative natural log of the probability given to the scored stage (scikit-learn's,
    probabilities clipped away from 0). ``calibration``: the confidences in ``bins`` equal-width bins over 0..1,
    each with its mean confidence, its accuracy (the share whose top stage is the scored one) and its count, and
    ``ece``, the expected calibration error (the count-weighted mean gap between the two).
    """
    from sklearn.metrics import log_loss

    probs = np.asarray(probs, dtype=float)
    truth = np.asarray([STAGES.index(s) for s in y_true])
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        in_bin = which == b
        n = int(in_bin.sum())
        table.append({"lo": b / bins, "hi": (b + 1) / bins, "n": n,
                      "confidence": float(confidence[in_bin].mean()) if n else None,
                      "accuracy": float(correct[in_bin].mean()) if n else None})
    ece = sum(r["n"] * abs(r["confidence"] - r["accuracy"]) for r in table if r["n"]) / max(len(truth), 1)
    return {"log_loss": float(log_loss(truth, np.clip(probs, 1e-12, 1), labels=list(range(len(STAGES))))),
            "calibration": {"ece": float(ece), "bins": table}}


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------
def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_confusion_matrix(metrics: dict, path: str | Path) -> Path:
    """Counts in each cell, coloured by the row fraction (recall on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"]["counts"], dtype=float)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    cols = ["?" if c == UNPARSEABLE else c for c in metrics["confusion_matrix"]["cols"]]
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(STAGES)), STAGES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("scored")
    kappa = metrics["kappa"]
    ax.set_title(f"acc {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  "
                 f"kappa {'n/a' if kappa is None else f'{kappa:.3f}'}", fontsize=9)
    fig.colorbar(im, ax=ax, label="fraction of scored stage")
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_calibration(metrics: dict, path: str | Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration), and how
    many answers fall in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = metrics["calibration"]["bins"]
    centres = np.asarray([(r["lo"] + r["hi"]) / 2 for r in table])
    width = table[0]["hi"] - table[0]["lo"]
    acc = np.asarray([np.nan if r["accuracy"] is None else r["accuracy"] for r in table])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, height_ratios=(3, 1), layout="constrained")
    top.bar(centres, np.nan_to_num(acc), width=width * 0.9, color="tab:blue", label="accuracy")
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"log-loss {metrics['log_loss']:.3f}  ECE {metrics['calibration']['ece']:.3f}", fontsize=9)
    bottom.bar(centres, [r["n"] for r in table], width=width * 0.9, color="grey")
    bottom.set_xlabel("confidence (probability of the predicted stage)")
    bottom.set_ylabel("answers")
    bottom.set_xlim(0, 1)
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def _steps(epochs: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x in hours and y levels for a step plot; gaps in the epoch sequence break the line."""
    xs, ys = [], []
    for k, (e, y) in enumerate(zip(epochs, levels)):
        if k and e != epochs[k - 1] + 1:
            xs.append(epochs[k - 1] + 1)
            ys.append(np.nan)
        xs.append(e)
        ys.append(y)
    xs.append(epochs[-1] + 1)
    ys.append(levels[-1])
    return np.asarray(xs, dtype=float) * EPOCH_SECONDS / 3600.0, np.asarray(ys, dtype=float)


def plot_hypnograms(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """One PNG per subject: scored and predicted hypnograms, one pair of panels per night.

    ``rows`` hold ``subject``, ``epoch`` (index within the night), optional ``night``, ``label``, ``pred``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = {s: len(HYPNOGRAM_ORDER) - 1 - i for i, s in enumerate(HYPNOGRAM_ORDER)}  # W highest
    level[UNPARSEABLE] = len(HYPNOGRAM_ORDER)
    by_subject: dict[Any, dict[Any, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_subject[r["subject"]][r.get("night")].append(r)
    written = []
    for subject, nights in by_subject.items():
        fig, axes = plt.subplots(2 * len(nights), 1, figsize=(10, 2.6 * len(nights) + 0.6), sharex=True,
                                 squeeze=False, layout="constrained")
        for n, (night, night_rows) in enumerate(sorted(nights.items(), key=lambda kv: str(kv[0]))):
            night_rows = sorted(night_rows, key=lambda r: r["epoch"])
            epochs = np.asarray([int(r["epoch"]) for r in night_rows])
            agree = np.mean([r["label"] == r["pred"] for r in night_rows])
            for k, (field, colour, name) in enumerate((("label", "black", "scored"), ("pred", "tab:red", "predicted"))):
                ax = axes[2 * n + k, 0]
                x, y = _steps(epochs, np.asarray([level[r[field]] for r in night_rows]))
                ax.plot(x, y, drawstyle="steps-post", color=colour, lw=1)
                ticks = list(HYPNOGRAM_ORDER)
                if np.any(y == level[UNPARSEABLE]):
                    ticks.append(UNPARSEABLE)
                ax.set_yticks([level[s] for s in ticks], ["?" if s == UNPARSEABLE else s for s in ticks])
                ax.set_ylim(-0.5, max(level[s] for s in ticks) + 0.5)
                ax.set_ylabel(name)
                if k == 0:
                    night_name = f"night {night}, " if night is not None else ""
                    ax.set_title(f"{night_name}{len(night_rows)} epochs, agreement {agree:.3f}", fontsize=9)
        axes[-1, 0].set_xlabel("time (h from epoch 0, 30-s epochs)")
        fig.suptitle(f"subject {subject}: scored vs predicted")
        path = Path(out_dir) / f"hypnogram_{re.sub(r'[^A-Za-z0-9._-]', '_', str(subject))}.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# Scores side by side (--compare)
# ---------------------------------------------------------------------------------------------
MAJORITY = "majority class"


def _summary(name: str, answers_file: Any, m: dict) -> dict:
    f1 = lambda s: m["per_class"][s]["f1"]  # noqa: E731
    return {"name": name, "answers_file": answers_file, "n": m["n"], "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "kappa": m["kappa"], "n1_f1": f1("N1"), "rem_f1": f1("REM")}


def compare_rows(question_file: str | Path, named: Sequence[tuple[str, str | Path]], main: dict,
                 main_name: str, allow_missing: bool = False) -> list[dict]:
    """One summary row each for the majority class, every ``(name, answers file)`` and the main answers.

    The majority class predicts the most common label of the questions themselves (the training labels
    are not known here), so its accuracy is that label's share and its kappa 0.
    """
    questions, order = load_labels(question_file)
    labels = [questions[k]["label"] for k in order]
    counts = {s: labels.count(s) for s in STAGES}
    top = max(STAGES, key=lambda s: counts[s])
    rows = [_summary(f"{MAJORITY} ({top})", None, compute_metrics(labels, [top] * len(labels)))]
    for name, path in named:
        answers = load_answers(path, questions)
        done = [k for k in order if k in answers]
        if len(done) < len(order) and not allow_missing:
            raise FormatError(f"{path} (--compare {name}): {len(order) - len(done)} of {len(order)} questions of "
                              f"{question_file} have no answer; pass --allow-missing to score the answered {len(done)}")
        pred = [parse_stage(answers[k]["text"]) or UNPARSEABLE for k in done]
        rows.append(_summary(name, str(path), compute_metrics([questions[k]["label"] for k in done], pred)))
    rows.append(_summary(main_name, main.get("answers_file"), main))
    return rows


def format_comparison(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows) + 2
    fmt = lambda x: f"{'-':>9}" if x is None else f"{x:>9.4f}"  # noqa: E731
    lines = [f"{'':<{width}}{'n':>6}{'accuracy':>9}{'macro-F1':>9}{'kappa':>9}{'N1 F1':>9}{'REM F1':>9}"]
    for r in rows:
        lines.append(f"{r['name']:<{width}}{r['n']:>6}" + "".join(
            fmt(r[k]) for k in ("accuracy", "macro_f1", "kappa", "n1_f1", "rem_f1")))
    return "\n".join(lines)


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
def score(
    question_file: str | Path,
    answers_file: str | Path,
    out_dir: str | Path | None = None,
    allow_missing: bool = False,
    plots: bool = True,
    compare: Sequence[tuple[str, str | Path]] = (),
) -> dict:
    """Score answers against labelled questions; write ``metrics.json`` (and the PNGs) into ``out_dir``
    (default: the answers file's folder) and return the metrics. With ``compare`` (``(name, answers file)``
    pairs) ``metrics["comparison"]`` puts the majority class, each of them and these answers side by side."""
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
    if with_probs:  # every answer carries its five probabilities
        metrics.update(probability_metrics([r["label"] for r in rows], np.stack([r["probabilities"] for r in rows])))
    metrics["missing"] = len(missing)
    metrics["unparseable_question_ids"] = [r["question_id"] for r in rows if r["pred"] == UNPARSEABLE][:50]
    per_subject = defaultdict(list)
    for r in rows:
        if "subject" in r:
            per_subject[str(r["subject"])].append(r)
    if per_subject:
        from sklearn.metrics import cohen_kappa_score

        metrics["per_subject"] = {}
        for s, rs in per_subject.items():
            t, p = [r["label"] for r in rs], [r["pred"] for r in rs]
            metrics["per_subject"][s] = {
                "n": len(rs),
                "accuracy": float(np.mean([a == b for a, b in zip(t, p)])),
                "kappa": _num(cohen_kappa_score(t, p)) if len(set(t) | set(p)) > 1 else None,
            }
    metrics["question_file"] = str(question_file)
    metrics["answers_file"] = str(answers_file)
    if compare:
        metrics["comparison"] = compare_rows(question_file, compare, metrics, Path(answers_file).stem, allow_missing)

    out = Path(out_dir) if out_dir is not None else Path(answers_file).parent
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if plots:
        files.append(plot_confusion_matrix(metrics, out / "confusion_matrix.png"))
        if with_probs:
            files.append(plot_calibration(metrics, out / "calibration.png"))
        timed = [r for r in rows if "subject" in r and isinstance(r.get("epoch"), (int, np.integer))]
        if timed:
            files += plot_hypnograms(timed, out)
    metrics["plots"] = [p.name for p in files]
    write_json(out / "metrics.json", metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eeg-vlm score", description=__doc__.split("\n\n")[0])
    p.add_argument("--question-file", required=True, help="eval questions (JSONL) with labels")
    p.add_argument("--answers-file", required=True, help="model_vqa.py answers (JSONL)")
    p.add_argument("--out", default=None, help="output folder (default: the answers file's folder)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score the answered subset when some questions have no answer (default: error)")
    p.add_argument("--no-plots", action="store_true", help="write metrics.json only")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=ANSWERS.jsonl",
                   help="also score these answers on the same questions and print one table beside the majority "
                        "class and the main answers (repeatable)")
    args = p.parse_args(argv)
    named = parse_compare(args.compare)
    metrics = score(args.question_file, args.answers_file, args.out, args.allow_missing, plots=not args.no_plots,
                    compare=named)
    print(format_table(metrics))
    if named:
        print("\n" + format_comparison(metrics["comparison"]))
    out = Path(args.out) if args.out else Path(args.answers_file).parent
    print(f"\nwrote {out / 'metrics.json'}" + "".join(f", {p}" for p in metrics["plots"]))
    return 0


if __name__ == "__main__":
    from eeg_vlm.cli import run

    run(main)
