"""A staged night's figure and its self-contained HTML report (``eeg-vlm stage``).

The figure: the staged hypnogram (and the scored one, when there is a hypnogram) above the hypnodensity, the
five stage probabilities stacked over the night. The report: one HTML file with that figure embedded as base64,
the AASM statistics (``sleep_eeg.evaluation.statistics``), the agreement with the scored night and the stages table.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from eeg_core.answer import UNPARSEABLE
from eeg_core.atomic import atomic_path
from eeg_core.stages import STAGES
from sleep_eeg.evaluation.metrics import HEADLINE, metric_line
from sleep_eeg.evaluation.plots import HYPNOGRAM_ORDER

# One colour per stage, in the hypnodensity and the hypnogram's ticks.
STAGE_COLOURS = {"W": "#f2c14e", "N1": "#8fd3f4", "N2": "#3a86c8", "N3": "#1d3557", "REM": "#e4572e"}


def night_figure(night):
    """Hypnogram(s) above the hypnodensity of a ``StagedNight``, x in hours from the recording's start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = {s: len(HYPNOGRAM_ORDER) - 1 - i for i, s in enumerate(HYPNOGRAM_ORDER)}  # W on top
    hours = np.arange(len(night.stages) + 1) * night.epoch_s / 3600.0
    rows = [("staged", night.stages, "tab:red")]
    if night.scored is not None:
        rows.insert(0, ("scored", night.scored, "black"))
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(11, 1.7 * len(rows) + 2.2), sharex=True,
                             height_ratios=[1] * len(rows) + [1.3], layout="constrained")
    for ax, (name, stages, colour) in zip(axes, rows):
        y = np.asarray([np.nan if s is None else level[s] for s in stages] + [np.nan], dtype=float)
        y[-1] = y[-2]
        ax.step(hours, y, where="post", color=colour, lw=1)
        ax.set_yticks([level[s] for s in HYPNOGRAM_ORDER], HYPNOGRAM_ORDER)
        ax.set_ylim(-0.5, len(HYPNOGRAM_ORDER) - 0.5)
        ax.set_ylabel(name)
    density = axes[-1]
    probs = np.concatenate([night.probabilities, night.probabilities[-1:]])  # the last epoch drawn to its end
    density.stackplot(hours, probs.T, labels=STAGES, colors=[STAGE_COLOURS[s] for s in STAGES], step="post")
    density.set_ylim(0, 1)
    density.set_ylabel("probability")
    density.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    start = night.clock(0)
    density.set_xlabel(f"hours from the recording's start{f' ({start})' if start else ''}")
    axes[0].set_title(f"{night.name}: {len(night.stages)} epochs of {night.epoch_s:g} s", fontsize=10)
    return fig


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def save_png(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(figure_png(fig))
    return Path(path)


def _number(value) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def statistics_table(statistics: dict, scored: dict | None = None) -> str:
    from sleep_eeg.evaluation.statistics import LABELS

    header = ["", "staged"] + (["scored"] if scored is not None else []) + ["unit"]
    rows = [[name, _number(statistics[key])] + ([_number(scored[key])] if scored is not None else []) + [unit]
            for key, (name, unit) in LABELS.items()]
    return _table(header, rows)


def agreement_section(agreement: dict) -> str:
    lines = f"<p>{agreement['n']} scored epochs: {html.escape(metric_line(agreement, HEADLINE, ', '))}.</p>"
    cm = agreement["confusion_matrix"]
    cols = [c for c in cm["cols"] if c != UNPARSEABLE]
    rows = [[r, *counts[: len(cols)]] for r, counts in zip(cm["rows"], cm["counts"])]
    return lines + "<p>Confusion matrix (rows: scored, columns: staged)</p>" + _table(["", *cols], rows, "cm")


def report_html(night, png: bytes, statistics: dict, agreement: dict | None) -> str:
    """The whole report as one HTML document (no external files)."""
    models = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in night.models.items() if v)
    start = night.clock(0) or "unknown (anonymised)"
    rows = [[i, night.clock(o), f"{o:g}", s, *(f"{p:.3f}" for p in probs)]
            + ([night.scored[i] or ""] if night.scored is not None else [])
            + ([night.reasoning[i]] if night.reasoning is not None else [])
            for i, (o, s, probs) in enumerate(zip(night.onsets, night.stages, night.probabilities))]
    header = (["epoch", "clock", "onset (s)", "stage", *(f"P({s})" for s in STAGES)]
              + (["scored"] if night.scored is not None else []) + (["reasoning"] if night.reasoning is not None else []))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sleep report: {html.escape(night.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>Sleep report: {html.escape(night.name)}</h1>",
        f"<p>Recording {html.escape(str(night.psg))}, started {html.escape(start)}; {len(night.stages)} epochs of "
        f"{night.epoch_s:g} s. Staged by:</p><ul>{models}</ul>",
        f'<img alt="hypnogram and hypnodensity" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
        "<h2>Sleep statistics (AASM)</h2>",
        "<p>Lights off to lights on: the whole recording.</p>",
        statistics_table(statistics, agreement["scored_statistics"] if agreement else None),
    ]
    if agreement is not None:
        parts += ["<h2>Agreement with the scored night</h2>", agreement_section(agreement)]
    parts += ["<h2>Stages</h2>", "<details><summary>one row per epoch</summary>", _table(header, rows), "</details>",
              "</body></html>"]
    return "\n".join(parts) + "\n"
