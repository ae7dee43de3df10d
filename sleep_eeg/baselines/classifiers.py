"""The baselines' classifiers, fitted with scikit-learn and kept as plain numbers, never a pickle.

A :class:`Classifier` says how a model is fitted, how its numbers give class probabilities (checked against the
estimator's own ``predict_proba`` when a model is saved), and how they are written to and read from one file:
``LOGISTIC`` (a standardised logistic regression: scaler, coefficients and intercepts in JSON) and ``BOOSTED``
(gradient-boosted trees: their nodes as arrays in ``.npz``, read with ``allow_pickle=False`` and walked with the
rule scikit-learn uses).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from eeg_core.atomic import write_json
from eeg_core.errors import FormatError


def _probabilities(raw: np.ndarray) -> np.ndarray:
    """scikit-learn's link: one column -> sigmoid (binary), several -> softmax."""
    if raw.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    z = np.exp(raw - raw.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def fit_logistic(x: np.ndarray, y: Sequence[str]) -> tuple[dict, Any]:
    """Standardise, fit a logistic regression; return its numbers and the fitted estimator."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    scaler, lr = pipe[0], pipe[1]
    numbers = {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
               "coef": lr.coef_.tolist(), "intercept": lr.intercept_.tolist()}
    return numbers, pipe


def logistic_proba(numbers: dict, x: np.ndarray) -> np.ndarray:
    z = (x - np.asarray(numbers["mean"])) / np.asarray(numbers["scale"])
    return _probabilities(z @ np.asarray(numbers["coef"]).T + np.asarray(numbers["intercept"]))


def fit_boosted(x: np.ndarray, y: Sequence[str]) -> tuple[dict[str, np.ndarray], Any]:
    """Fit a HistGradientBoostingClassifier (balanced class weights) and export its trees as arrays."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    clf = HistGradientBoostingClassifier(class_weight="balanced", random_state=0).fit(x, y)
    # The fitted trees: clf._predictors[iteration][class] holds a TreePredictor whose ``nodes`` record array
    # is what scikit-learn walks. Exported as plain arrays; ``boosted_proba`` walks them the same way.
    feature, threshold, left, right, missing_left, is_leaf, value, roots, tree_class = ([] for _ in range(9))
    offset = 0
    for per_class in clf._predictors:
        for k, predictor in enumerate(per_class):
            nodes = predictor.nodes
            if nodes["is_categorical"].any():  # never: no categorical features are declared
                raise RuntimeError("categorical splits cannot be exported")
            roots.append(offset)
            tree_class.append(k)
            feature.append(nodes["feature_idx"])
            threshold.append(nodes["num_threshold"])
            left.append(nodes["left"].astype(np.int64) + offset)
            right.append(nodes["right"].astype(np.int64) + offset)
            missing_left.append(nodes["missing_go_to_left"].astype(bool))
            is_leaf.append(nodes["is_leaf"].astype(bool))
            value.append(nodes["value"])
            offset += len(nodes)
    arrays = {
        "feature": np.concatenate(feature).astype(np.int64), "threshold": np.concatenate(threshold).astype(np.float64),
        "left": np.concatenate(left), "right": np.concatenate(right), "missing_left": np.concatenate(missing_left),
        "is_leaf": np.concatenate(is_leaf), "value": np.concatenate(value).astype(np.float64),
        "roots": np.asarray(roots, dtype=np.int64), "tree_class": np.asarray(tree_class, dtype=np.int64),
        "baseline": np.asarray(clf._baseline_prediction, dtype=np.float64).reshape(-1),
    }
    return arrays, clf


def boosted_proba(a: dict[str, np.ndarray], x: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Class probabilities of exported gradient-boosted trees: at a split, NaN goes the learned missing-value
    way, else ``x <= threshold`` goes left (scikit-learn's rule); leaf values add up per class, then the link."""
    x = np.asarray(x, dtype=np.float64)
    raw = np.tile(a["baseline"], (len(x), 1))
    for start in range(0, len(x), chunk):
        xs = x[start : start + chunk]
        rows = np.arange(len(xs))[:, None]
        node = np.broadcast_to(a["roots"], (len(xs), len(a["roots"]))).copy()
        while True:
            inner = ~a["is_leaf"][node]
            if not inner.any():
                break
            v = xs[rows, a["feature"][node]]
            go_left = np.where(np.isnan(v), a["missing_left"][node], v <= a["threshold"][node])
            node = np.where(inner, np.where(go_left, a["left"][node], a["right"][node]), node)
        leaf = a["value"][node]
        for k in range(raw.shape[1]):
            raw[start : start + chunk, k] += leaf[:, a["tree_class"] == k].sum(axis=1)
    return _probabilities(raw)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise FormatError(f"{path}: not a model file of plain numbers ({first[:120]})") from None


class Classifier(NamedTuple):
    """How a kind's model is fitted, kept as plain numbers in one file, read back and applied."""

    description: str  # the config's "classifier"
    model_file: str
    fit: Callable[[np.ndarray, Sequence[str]], tuple[Any, Any]]  # (x, y) -> (numbers, scikit-learn's estimator)
    proba: Callable[[Any, np.ndarray], np.ndarray]  # (numbers, x) -> [n, classes], as the estimator's predict_proba
    write: Callable[[Path, Any], None]
    read: Callable[[Path], Any]


LOGISTIC = Classifier("StandardScaler + LogisticRegression", "model.json", fit_logistic, logistic_proba,
                      write_json, _read_json)
BOOSTED = Classifier("HistGradientBoostingClassifier(class_weight='balanced', random_state=0)", "model.npz",
                     fit_boosted, boosted_proba, _write_npz, _read_npz)
