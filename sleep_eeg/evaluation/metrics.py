"""Sleep-staging metrics (scikit-learn): accuracy, macro-F1, Cohen's kappa, per-class scores, the confusion
matrix, per-subject scores, log-loss and calibration of stage probabilities, and the side-by-side table.

Predictions may hold ``UNPARSEABLE`` (an answer that gives no stage): it is never right. ``METRIC_COLUMNS`` is
the one list of the scores shown beside each other, each with its name, key and format: the comparison table,
the score summary, the confusion-matrix plot and the stage report all show them from it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from eeg_core.answer import UNPARSEABLE
from eeg_core.stages import STAGES


@dataclass(frozen=True)
class MetricColumn:
    """One score as the tables, plots and reports show it: its ``name`` (the header), its ``key`` in a
    comparison row (``summary_row``) and in ``metrics.json``, and the ``fmt`` its value is written with. A
    per-stage F1 names its ``stage`` (its value is ``per_class[stage]["f1"]`` of the metrics)."""

    name: str
    key: str
    fmt: str = ".4f"
    stage: str | None = None

    def value(self, metrics: dict) -> float | None:
        """The score of ``compute_metrics`` output (or of a comparison row, which holds it under ``key``)."""
        if self.key in metrics or self.stage is None:
            return metrics[self.key]
        return metrics["per_class"][self.stage]["f1"]

    def text(self, value: float | None, width: int = 0, missing: str = "n/a") -> str:
        """``value`` in ``fmt``, right-aligned to ``width``; ``missing`` when it is undefined (None)."""
        align = f">{width}" if width else ""
        return format(missing, align) if value is None else format(value, align + self.fmt)


# The scores compared side by side, in order. The first three are the headline of one model's scores.
METRIC_COLUMNS: tuple[MetricColumn, ...] = (
    MetricColumn("accuracy", "accuracy"),
    MetricColumn("macro-F1", "macro_f1"),
    MetricColumn("kappa", "kappa"),
    MetricColumn("N1 F1", "n1_f1", stage="N1"),
    MetricColumn("REM F1", "rem_f1", stage="REM"),
)
HEADLINE = METRIC_COLUMNS[:3]


def metric_line(metrics: dict, columns: Sequence[MetricColumn] = HEADLINE, sep: str = "   ") -> str:
    """``accuracy 0.7000   macro-F1 0.7200   kappa 0.6341``: each column's name and value, joined by ``sep``."""
    return sep.join(f"{c.name} {c.text(c.value(metrics))}" for c in columns)


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Accuracy, macro-F1, Cohen's kappa, per-class scores and the confusion matrix.

    ``y_pred`` may hold ``UNPARSEABLE``; it is never right. Macro-F1 averages over the stages that occur
    in the labels or the (parsed) predictions; a stage in neither has no F1 and is left out.
    """
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

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
    lines = [
        f"n={metrics['n']}  unparseable={metrics['unparseable']}  missing={metrics.get('missing', 0)}",
        metric_line(metrics)
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


def per_subject_metrics(rows: Sequence[dict]) -> dict:
    """Accuracy and kappa per subject of ``rows`` (``subject``, ``label``, ``pred``); rows without a subject are
    left out."""
    from sklearn.metrics import cohen_kappa_score

    by_subject = defaultdict(list)
    for r in rows:
        if "subject" in r:
            by_subject[str(r["subject"])].append(r)
    out = {}
    for subject, rs in by_subject.items():
        t, p = [r["label"] for r in rs], [r["pred"] for r in rs]
        out[subject] = {
            "n": len(rs),
            "accuracy": float(np.mean([a == b for a, b in zip(t, p)])),
            "kappa": _num(cohen_kappa_score(t, p)) if len(set(t) | set(p)) > 1 else None,
        }
    return out


MAJORITY = "majority class"


def summary_row(name: str, answers_file: Any, m: dict) -> dict:
    """One row of the comparison: the model's name, its answers file, ``n`` and every ``METRIC_COLUMNS`` score."""
    return {"name": name, "answers_file": answers_file, "n": m["n"], **{c.key: c.value(m) for c in METRIC_COLUMNS}}


def format_comparison(rows: list[dict]) -> str:
    """The comparison table: one line per row, ``n`` and the ``METRIC_COLUMNS`` (``-`` where undefined)."""
    width = max(len(r["name"]) for r in rows) + 2
    lines = [f"{'':<{width}}{'n':>6}" + "".join(f"{c.name:>9}" for c in METRIC_COLUMNS)]
    for r in rows:
        lines.append(f"{r['name']:<{width}}{r['n']:>6}" + "".join(c.text(r[c.key], 9, "-") for c in METRIC_COLUMNS))
    return "\n".join(lines)
