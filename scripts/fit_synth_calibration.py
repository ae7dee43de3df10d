"""Fit the synthetic nights' figures to real Sleep-EDF sleep-cassette figures (run by hand, not in CI).

    python scripts/fit_synth_calibration.py --shared ../shared/data/sleepedf

Reads ``stats.json`` (figures of all 153 nights) and ``hypnograms_SC400-SC459.json`` (115 expert
hypnograms) and rewrites the *fitted* sections of ``sleep_eeg/synthetic/sleepedf_calibration.json``; its
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
- ``levels`` (from ``../shared/data/sleepedf_features``, 20 nights of per-epoch features of the real
  signals, trimmed to 30 min of wake around sleep): per stage and EEG channel the natural log of the
  0.5-30 Hz power (µV²) with its within-night spread, its spread between nights, its slow wander across
  the night and its epoch-to-epoch correlation; the 30-50 Hz floor (µV²/Hz) with its spread and its
  correlation with the 13-30 Hz power; the power below 0.5 Hz (the drift). Then, on a few seeded
  simulated nights, each mean is corrected by what the generator's own measure reads on top of what it
  drew (events, leakage), so that the features of the synthetic signals read the real means. EOG
  horizontal has no real absolute figures here: its levels are chosen (see its ``source``).

``--only levels`` refits the levels alone.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from eeg_core.atomic import write_json
from eeg_core.stages import STAGES
from sleep_eeg.synthetic import realism, synth

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


# ---------------------------------------------------------------------------------------------
# Absolute levels, from the real per-epoch features
# ---------------------------------------------------------------------------------------------
_F, _P = np.linspace(0, 50, 129), None  # scipy.signal.welch(x, 100, nperseg=256) frequencies
_DF = _F[1] - _F[0]
_BINS = [int(((_F >= lo) & (_F <= hi)).sum()) for lo, hi in realism.FEATURE_BANDS]


def unsaturate(x: np.ndarray) -> np.ndarray:
    """ln µV²/Hz (or µV²) from a shared feature ``ln(PSD V²/Hz + 1e-10)`` (or ``ln(variance V² + 1e-10)``)."""
    return np.log(np.maximum(np.exp(x) - 1e-10, 1e-30)) + np.log(1e12)


def level_measures(x: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """Per epoch, of channel ``c`` of feature rows ``x`` [epoch, >= 18]: ln 0.5-30 Hz power (µV²),
    ln 13-30 Hz and 30-50 Hz mean PSD (µV²/Hz), ln variance (µV²); all without the features' 1e-10."""
    bands = unsaturate(x[:, 9 * c: 9 * c + 5])
    power = np.log(_DF * (np.exp(bands[:, :4]) * _BINS[:4]).sum(1))
    return {"log_power": power, "beta": bands[:, 3], "gamma": bands[:, 4], "logvar": unsaturate(x[:, 9 * c + 7])}


def fit_levels_from_real(real: list[dict]) -> dict:
    """The real figures of ``levels`` (before the generator's own reading is corrected for)."""
    out: dict = {}
    for c, ch in enumerate(realism.JUDGE_CHANNELS):
        per_stage: dict = {}
        night_means, slow, ar = [], [], []
        for night in real:
            m = level_measures(night["X"], c)
            y = night["y"]
            means = {k: m["log_power"][y == k].mean() for k in range(len(STAGES)) if (y == k).sum() >= 10}
            night_means.append([means.get(k, np.nan) for k in range(len(STAGES))])
            resid = np.array([m["log_power"][i] - means[y[i]] if y[i] in means else 0.0 for i in range(len(y))])
            slow.append(np.std(np.convolve(resid, np.ones(61) / 61, mode="valid")))
            same = (y[1:] == y[:-1]) & np.isin(y[1:], list(means))
            ar.append(np.corrcoef(resid[1:][same], resid[:-1][same])[0, 1])
        night_means = np.asarray(night_means)
        out[ch] = {"between_night_log_sd": round(float(np.nanmean(np.nanstd(night_means, 0))), 3),
                   "slow_log_sd": round(float(np.mean(slow)), 3)}
        out.setdefault("epoch_ar1", []).append(float(np.mean(ar)))
        for k, s in enumerate(STAGES):
            rows = [(level_measures(n["X"][n["y"] == k], c)) for n in real if (n["y"] == k).sum() >= 10]
            pool = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
            within = np.mean([r["log_power"].std() for r in rows])
            inband = np.exp(pool["log_power"]) + 20 * np.exp(pool["gamma"])
            drift = np.log(np.maximum(np.exp(pool["logvar"]) - inband, 1e-3))
            per_stage[s] = {
                "log_power": round(float(pool["log_power"].mean()), 3),
                "log_power_sd": round(float(within), 3),
                "log_gamma_psd": round(float(pool["gamma"].mean()), 3),
                "log_gamma_sd": round(float(np.mean([r["gamma"].std() for r in rows])), 3),
                "gamma_beta_corr": round(float(np.mean([np.corrcoef(r["beta"], r["gamma"])[0, 1] for r in rows])), 3),
                "log_drift": round(float(np.median(drift)), 3),
                "log_drift_sd": round(float(0.6 * np.mean([r["logvar"].std() for r in rows])), 3),
                "real_log_power": round(float(pool["log_power"].mean()), 3),
                "real_log_gamma_psd": round(float(pool["gamma"].mean()), 3),
                "real_logvar": round(float(pool["logvar"].mean()), 3),
            }
        out[ch].update(per_stage)
    out["epoch_ar1"] = round(float(np.mean(out["epoch_ar1"])), 3)
    return out


def correct_levels(cal: dict, rounds: int = 6, nights: int = 6, hours: float = 2.0) -> None:
    """Correct each mean by what the generator's measure reads beyond what it drew, on seeded nights."""
    lv = cal["levels"]
    for r in range(rounds):
        synth.load_calibration.cache_clear()
        rows: dict = {}
        for i in range(nights):
            subject = synth.Subject.draw(np.random.default_rng([9000 + r, 10_000 + i]))
            rng = np.random.default_rng([9000 + r, i])
            stages = synth.synth_hypnogram(rng, hours)
            spectra = synth.sample_spectra(rng, subject, stages)
            levels = synth._levels(rng, subject, stages, spectra)
            eeg = synth.synth_eeg(rng, subject, stages, spectra, levels=levels)
            x = realism.night_features({ch: eeg[c] for c, ch in enumerate(synth.EEG_CHANNELS)}, len(stages))
            st = np.asarray(synth._scored(stages))
            for c, ch in enumerate(realism.JUDGE_CHANNELS):
                m = level_measures(x, c)
                drawn = np.log(levels[:, c])
                # each epoch's own draw of the spreads (night, slow wander, epoch), to compare with the real
                # mean without them
                shift = drawn[0] - np.array([lv[ch][s]["log_power"] for s in st])
                for s in STAGES:
                    sel = st == s
                    acc = rows.setdefault((ch, s), {"power": [], "gamma": [], "var": []})
                    acc["power"].append(m["log_power"][sel] - drawn[0, sel])
                    acc["gamma"].append(m["gamma"][sel] - drawn[1, sel])
                    acc["var"].append(m["logvar"][sel] - shift[sel])
        worst, where = 0.0, ""
        for (ch, s), acc in rows.items():
            d = lv[ch][s]
            bias = {k: float(np.mean(np.concatenate(v))) for k, v in acc.items()}
            # a damped fixed point: the drawn mean plus what the measure reads beyond it is the real mean
            d["log_power"] = round(0.5 * d["log_power"] + 0.5 * (d["real_log_power"] - bias["power"]), 3)
            d["log_gamma_psd"] = round(0.5 * d["log_gamma_psd"] + 0.5 * (d["real_log_gamma_psd"] - bias["gamma"]), 3)
            # the drift below 0.5 Hz makes up what the log-variance lacks (a damped step in its log)
            step = float(np.clip(1.5 * (d["real_logvar"] - bias["var"]), -1.0, 1.0))
            d["log_drift"] = round(max(d["log_drift"] + step, d["log_power"] + np.log(0.01)), 3)
            gap = max(abs(bias["power"]), abs(bias["gamma"]), abs(bias["var"] - d["real_logvar"]))
            if gap > worst:
                worst, where = gap, f"{ch} {s}: power {bias['power']:+.2f} gamma {bias['gamma']:+.2f} logvar {bias['var'] - d['real_logvar']:+.2f}"
        print(f"levels round {r}: largest read-back bias or log-variance gap {worst:.2f} ({where})")
    synth.load_calibration.cache_clear()


def fit_levels(cal: dict, features: Path) -> None:
    real = realism.load_real_features(features)
    if not real:
        raise SystemExit(f"no real features in {features}")
    fitted = fit_levels_from_real(real)
    eog = cal.get("levels", {}).get("EOG horizontal")
    if eog is None:
        raise SystemExit("the chosen EOG horizontal levels are missing from the calibration")
    cal["levels"] = {
        "source": "fitted: per-epoch features of 20 Sleep-EDF sleep-cassette nights (subjects SC400-SC409, "
                  "../shared/data/sleepedf_features; PhysioNet, Kemp et al. 2000, ODC-By 1.0; features published "
                  "by matteo-omizzolo/sleep-EDF, MIT), trimmed to 30 min of wake around sleep; natural logs of "
                  "µV² (0.5-30 Hz power, below-0.5-Hz drift) and µV²/Hz (30-50 Hz floor), then corrected on "
                  "seeded simulated nights for what the generator's events and leakage add",
        "slow_epochs": 60,
        "epoch_ar1": fitted.pop("epoch_ar1"),
        **fitted,
        "EOG horizontal": eog,
    }
    write_json(synth.CALIBRATION, cal)
    correct_levels(cal)
    write_json(synth.CALIBRATION, cal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default="../shared/data/sleepedf", help="folder of stats.json and the hypnograms")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--nights", type=int, default=400, help="simulated nights per calibration round")
    p.add_argument("--features", default="../shared/data/sleepedf_features", help="folder of the real per-epoch features")
    p.add_argument("--only", choices=("all", "levels"), default="all")
    args = p.parse_args()
    if args.only == "levels":
        fit_levels(json.loads(synth.CALIBRATION.read_text()), Path(args.features))
        return
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
    fit_levels(cal, Path(args.features))
    got = simulate(cal, args.nights, seed=999)
    print("stage   share sim/real    bout mean sim/real")
    for k, s in enumerate(STAGES):
        print(f"{s:<6}{got['share'][k]:>8.3f}{stats['share'][s]:>8.3f}{got['bout_mean'][k]:>12.2f}"
              f"{stats['bout_length_epochs'][s]['mean']:>8.2f}")


if __name__ == "__main__":
    main()
