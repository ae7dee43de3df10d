"""Sleep-staging plots: the confusion matrix, the reliability diagram and scored-vs-predicted hypnograms.

Every PNG is written atomically (matplotlib's Agg backend, no display needed).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from eeg_core.answer import UNPARSEABLE
from eeg_core.atomic import atomic_path
from eeg_core.stages import EPOCH_S, STAGES
from sleep_eeg.evaluation.metrics import HEADLINE, metric_line

# Hypnogram rows, top to bottom (the sleep field's convention).
HYPNOGRAM_ORDER: tuple[str, ...] = ("W", "REM", "N1", "N2", "N3")


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
    ax.set_title(metric_line(metrics, HEADLINE, "  "), fontsize=9)
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
    return np.asarray(xs, dtype=float) * EPOCH_S / 3600.0, np.asarray(ys, dtype=float)


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
