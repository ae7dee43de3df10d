"""Fit the synthetic nights' figures to real Sleep-EDF sleep-cassette figures (run by hand, not in CI).

    python scripts/fit_synth_calibration.py --shared ../shared/data/sleepedf

Reads ``stats.json`` (figures of all 153 nights) and ``hypnograms_SC400-SC459.json`` (115 expert
hypnograms) and rewrites the *fitted* sections of ``sleep_eeg/sleepedf_calibration.json``; its
*chosen* sections are kept as they are. Only fitted parameters and figures enter the project,
never the hypnograms.

- ``hypnogram_model``: a semi-Markov chain over the sleep period (first to last sleep epoch,
  ``?`` dropped): bout-length histograms per stage and third of the sleep period, transitions between
  bouts per third, the first sleep stage, the sleep-period length (log-normal), the edges of wake,
  and the rates of unscored / movement epochs. Then the transition columns are reweighted, by
  simulation, until stage shares by third match all 153 nights (the 115 fitted hypnograms sleep
  better than the whole set), and each stage's bout-length histogram is tilted until its mean bout
  length matches.
- ``spectra``: the per-stage, per-channel log relative band power figures, as they are.
- ``reference``: the real figures that benchmarks and tests compare against.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from eeg_core.atomic import write_json
from eeg_core.stages import STAGES
from sleep_eeg import synth

CODE = {"W": "W", "1": "N1", "2": "N2", "3": "N3", "R": "REM"}
EDGES = list(range(1, 21)) + [21, 26, 31, 41, 51, 71, 101, 151, 241]


def bin_of(length: int) -> int:
    return min(int(np.searchsorted(EDGES, length, side="right")) - 1, len(EDGES) - 2)


def sleep_period(night: str) -> tuple[int, int]:
    sleep = [i for i, c in enumerate(night) if c in "123R"]
    return sleep[0], sleep[-1] + 1


def fit_model(hypnograms: dict[str, str]) -> dict:
    dur = np.full((len(STAGES), 3, len(EDGES) - 1), 0.1)  # a light prior keeps every bin possible
    trans = np.full((3, len(STAGES), len(STAGES)), 0.1)
    first, spt, trail, unscored = [], [], [], 0
    for raw in hypnograms.values():
        unscored += raw.count("?")
        night = raw.replace("?", "")
        a, b = sleep_period(night)
        n = b - a
        spt.append(n)
        trail.append(len(night) - b)
        first.append(CODE[night[a]])
        pos = 0
        bouts = [(CODE[k], len(list(g))) for k, g in itertools.groupby(night[a:b])]
        for i, (stage, length) in enumerate(bouts):
            dur[STAGES.index(stage), min(2, 3 * pos // n), bin_of(length)] += 1
            pos += length
            if i + 1 < len(bouts):
                trans[min(2, 3 * pos // n), STAGES.index(stage), STAGES.index(bouts[i + 1][0])] += 1
    for t in range(3):
        np.fill_diagonal(trans[t], 0.0)
    trans /= trans.sum(axis=2, keepdims=True)
    dur /= dur.sum(axis=2, keepdims=True)
    n_epochs = sum(len(h) for h in hypnograms.values())
    log_spt = np.log(spt)
    return {
        "source": "fitted: 115 expert hypnograms of Sleep-EDF sleep-cassette subjects 00-59 (PhysioNet, Kemp et al. 2000, ODC-By 1.0), then calibrated to stats.json (all 153 nights) by reweighting the transition columns (stage shares by third) and tilting the bout-length histograms (mean bout lengths)",
        "edge_wake_epochs": 60,
        "trail_full_prob": round(float(np.mean(np.asarray(trail) >= 60)), 4),
        "sleep_period_lognormal": [round(float(log_spt.mean()), 4), round(float(log_spt.std()), 4)],
        "sleep_period_range": [int(min(spt)), int(max(spt))],
        "first_sleep_stage": max(set(first), key=first.count),
        "unscored_rate": round(unscored / n_epochs / 2, 5),
        "movement_rate": round(unscored / n_epochs / 2, 5),
        "duration_bin_edges": EDGES,
        "duration_pmf": {s: [[round(float(p), 5) for p in dur[k, t] / dur[k, t].sum()] for t in range(3)]
                         for k, s in enumerate(STAGES)},
        "transition": trans.round(5).tolist(),
    }


def _normalise(model: dict) -> None:
    for s in STAGES:
        model["duration_pmf"][s] = [list(np.asarray(p) / np.sum(p)) for p in model["duration_pmf"][s]]
    model["transition"] = [list(map(list, np.asarray(t) / np.asarray(t).sum(1, keepdims=True))) for t in model["transition"]]


def simulate(cal: dict, nights: int, seed: int) -> dict:
    """Shares by third of the sleep period, overall shares and mean bout lengths of simulated nights."""
    by_third = np.zeros((3, len(STAGES)))
    total = np.zeros(len(STAGES))
    bouts: dict[str, list[int]] = {s: [] for s in STAGES}
    for i in range(nights):
        seq = [s for s in synth.sample_hypnogram(np.random.default_rng([seed, i]), None, cal) if s in STAGES]
        sleep = [j for j, s in enumerate(seq) if s != "W"]
        a, b = sleep[0], sleep[-1] + 1
        for j in range(a, b):
            by_third[min(2, 3 * (j - a) // (b - a)), STAGES.index(seq[j])] += 1
        for s in seq:
            total[STAGES.index(s)] += 1
        for k, g in itertools.groupby(seq):
            bouts[k].append(len(list(g)))
    return {"by_third": by_third / by_third.sum(1, keepdims=True), "share": total / total.sum(),
            "bout_mean": np.array([np.mean(bouts[s]) for s in STAGES])}


def calibrate(cal: dict, stats: dict, rounds: int, nights: int) -> None:
    want = np.array([[stats["share_by_third_of_sleep_period"][f"third_{t + 1}"][s] for s in STAGES] for t in range(3)])
    bout_want = np.array([stats["bout_length_epochs"][s]["mean"] for s in STAGES])
    model = cal["hypnogram_model"]
    centres = (np.asarray(EDGES[:-1]) + np.asarray(EDGES[1:]) - 1) / 2
    for r in range(rounds):
        got = simulate(cal, nights, seed=r)
        print(f"round {r}: max |share by third - real| = {np.abs(got['by_third'] - want).max():.3f}")
        print("         mean bout length / real: " + " ".join(
            f"{s} {g / m:.2f}" for s, g, m in zip(STAGES, got["bout_mean"], bout_want)))
        # longer or shorter bouts: tilt each stage's length histogram by (bin centre) ** beta
        beta = np.log(bout_want / got["bout_mean"]) * 0.8
        for k, s in enumerate(STAGES):
            model["duration_pmf"][s] = [list(np.asarray(p) * centres ** beta[k]) for p in model["duration_pmf"][s]]
        weights = (want / got["by_third"]) ** 0.7
        model["transition"] = (np.asarray(model["transition"]) * weights[:, None, :]).tolist()
        for t in range(3):
            np.fill_diagonal(trans := np.asarray(model["transition"][t]), 0.0)
            model["transition"][t] = trans.tolist()
        _normalise(model)
    model["transition"] = np.round(model["transition"], 5).tolist()
    for st in STAGES:
        model["duration_pmf"][st] = np.round(model["duration_pmf"][st], 6).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data/sleepedf", help="folder of stats.json and the hypnograms")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--nights", type=int, default=400, help="simulated nights per calibration round")
    args = p.parse_args()
    shared = Path(args.shared)
    stats = json.loads((shared / "stats.json").read_text())
    hypnograms = json.loads((shared / "hypnograms_SC400-SC459.json").read_text())["hypnograms"]
    cal = json.loads(synth.CALIBRATION.read_text())
    cal["hypnogram_model"] = fit_model(hypnograms)
    synth.load_calibration.cache_clear()
    calibrate(cal, stats, args.rounds, args.nights)
    cal["spectra"] = {"source": stats["source"], "what": stats["log_relative_band_power"]["what"],
                      **{ch: stats["log_relative_band_power"][ch] for ch in synth.EEG_CHANNELS}}
    cal["reference"] = {
        "source": stats["source"],
        "share": stats["share"], "share_by_third_of_sleep_period": stats["share_by_third_of_sleep_period"],
        "bout_length_epochs": stats["bout_length_epochs"], "transition_per_epoch": stats["transition_per_epoch"],
        "reference_baseline": stats["reference_baseline"],
    }
    write_json(synth.CALIBRATION, cal)
    got = simulate(cal, args.nights, seed=999)
    print("stage   share sim/real    bout mean sim/real")
    for k, s in enumerate(STAGES):
        print(f"{s:<6}{got['share'][k]:>8.3f}{stats['share'][s]:>8.3f}{got['bout_mean'][k]:>12.2f}"
              f"{stats['bout_length_epochs'][s]['mean']:>8.2f}")


if __name__ == "__main__":
    main()
