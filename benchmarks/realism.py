"""How real are the synthetic nights? Stagers that learnt real sleep, and real figures, beside them.

    pip install -e '.[baselines]'     # YASA, for (b); everything else needs scikit-learn only
    python benchmarks/realism.py --nights 10 --seed 11 --workers 2

Generates ``--nights`` real-length nights (one subject each) exactly as ``eeg-vlm synth`` does, and
prints, on those same nights:

- (a) the reference baseline: a logistic regression on the five log relative band powers of one epoch,
  fitted on the synthetic nights (every 5th subject held out), on EEG Fpz-Cz and on all three channels,
  beside the real Sleep-EDF figures kept in ``sleep_eeg/synthetic/sleepedf_calibration.json``; goals: Fpz-Cz
  0.62-0.74, three channels at most 0.78;
- (b) YASA's pretrained ``SleepStaging`` (never fitted here) on EEG Fpz-Cz + EOG horizontal, when YASA
  is installed; goals: accuracy >= 0.75, kappa >= 0.65, recall >= 0.5 in every stage but N1;
- (c) the real-data judge: a ``HistGradientBoostingClassifier`` (balanced classes) fitted on the 18
  per-epoch features (:mod:`sleep_eeg.synthetic.realism`) of the 20 real nights of ``../shared/data/sleepedf_features``
  (each trimmed to 30 min of wake around sleep): its accuracy on held-out real subjects (two at a
  time) beside its accuracy on the synthetic nights, whose features are computed identically; goal:
  within 0.05;
- (d) per stage, the synthetic-minus-real mean of each of those 18 features; goal: log-variance and
  log delta power within 0.25 on both EEG channels;

then stage shares and bout lengths, and the per-stage log relative band powers, against all 153 real
nights. (c) and (d) need ``--features`` (default ``../shared/data/sleepedf_features``) and are skipped
without it. ``--json PATH`` also writes the figures.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from eeg_core.stages import STAGES
from sleep_eeg.baselines import yasa_staging
from sleep_eeg.signal.bands import BANDS, log_relative_band_power
from sleep_eeg.synthetic import realism, synth

TOL_SPECTRUM, TOL_SHARE, TOL_BOUT = 0.15, 0.03, 0.25


def night_figures(args: tuple[int, int, bool]) -> dict:
    """One night's scored stages, their ``[epoch, channel, band]`` band powers, their ``[epoch, 72]``
    real-data features, and YASA's stages (None without YASA)."""
    seed, index, use_yasa = args
    stages, signals, _, _ = synth.synth_night(seed, index, 1, None)
    feats = np.stack([log_relative_band_power(signals[ch], synth.FS) for ch in synth.EEG_CHANNELS], 1)
    judge = realism.night_features(signals, len(stages), synth.FS)
    yasa = yasa_staging.stage_signals(signals, synth.RATES) if use_yasa else None
    keep = [i for i, s in enumerate(stages) if s in STAGES]
    return {"stages": [stages[i] for i in keep], "bands": feats[keep], "judge": judge[keep],
            "yasa": None if yasa is None else [yasa[i] for i in keep]}


def yasa_installed() -> str:
    from sleep_eeg.baselines.classic.features import yasa_version
    return yasa_version() or "?"


def scores(y_true, y_pred) -> dict:
    recall = recall_score(y_true, y_pred, labels=list(STAGES), average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=list(STAGES), average="macro", zero_division=0)),
            "kappa": float(cohen_kappa_score(y_true, y_pred)), "recall": dict(zip(STAGES, recall.round(3).tolist()))}


def judge(real: list[dict], synthetic_x: np.ndarray, synthetic_y: np.ndarray) -> dict:
    """The real-data judge: held-out real accuracy (two subjects at a time), then fitted on all 20 real
    nights and applied to the synthetic nights."""
    def fit(nights):
        clf = HistGradientBoostingClassifier(class_weight="balanced", random_state=0)
        return clf.fit(np.concatenate([n["X"][:, :18] for n in nights]), np.concatenate([n["y"] for n in nights]))
    subjects = sorted({n["subject"] for n in real})
    truth, pred = [], []
    for k in range(0, len(subjects), 2):
        held = set(subjects[k:k + 2])
        clf = fit([n for n in real if n["subject"] not in held])
        for n in real:
            if n["subject"] in held:
                truth.append(n["y"])
                pred.append(clf.predict(n["X"][:, :18]))
    names = np.asarray(STAGES)
    held_out = scores(names[np.concatenate(truth)], names[np.concatenate(pred)])
    on_synth = scores(names[synthetic_y], names[fit(real).predict(synthetic_x[:, :18])])
    held_out["epochs"], on_synth["epochs"] = int(sum(len(t) for t in truth)), int(len(synthetic_y))
    return {"real_held_out": held_out, "synthetic": on_synth}


def baseline(nights: list[tuple[list[str], np.ndarray]], channels: list[int]) -> dict:
    """Subject-wise split (every 5th subject held out), standardised logistic regression."""
    test = [i % 5 == 4 for i in range(len(nights))]
    def xy(want: bool):
        rows = [(n["bands"][:, channels].reshape(len(n["bands"]), -1), n["stages"]) for n, t in zip(nights, test) if t == want]
        return np.concatenate([r[0] for r in rows]), sum((r[1] for r in rows), [])
    (x_tr, y_tr), (x_te, y_te) = xy(False), xy(True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_tr, y_tr)
    pred = clf.predict(x_te)
    majority = max(set(y_tr), key=y_tr.count)
    per_class = f1_score(y_te, pred, labels=list(STAGES), average=None, zero_division=0)
    return {"accuracy": accuracy_score(y_te, pred), "macro_f1": f1_score(y_te, pred, average="macro"),
            "kappa": cohen_kappa_score(y_te, pred), "n1_f1": per_class[1], "rem_f1": per_class[4],
            "majority_accuracy": float(np.mean(np.asarray(y_te) == majority)),
            "subjects": [sum(not t for t in test), sum(test)], "epochs": [len(y_tr), len(y_te)]}


def bout_means(nights) -> dict[str, float]:
    bouts: dict[str, list[int]] = {s: [] for s in STAGES}
    for night in nights:
        for k, g in itertools.groupby(night["stages"]):
            bouts[k].append(len(list(g)))
    return {s: float(np.mean(v)) for s, v in bouts.items()}


class Marks:
    """``ok`` / ``OUT`` for each figure against its goal; ``all_ok``: whether every figure so far was inside."""

    def __init__(self):
        self.all_ok = True

    def __call__(self, ok: bool) -> str:
        self.all_ok &= ok
        return "ok" if ok else "OUT"


def recall_row(r: dict) -> str:
    return " ".join(f"{s} {r['recall'][s]:.2f}" for s in STAGES)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nights", type=int, default=10, help="nights (one subject each); 10 or more")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--features", default=str(realism.SHARED_FEATURES),
                   help="folder of the 20 real nights' per-epoch features, for (c) and (d)")
    p.add_argument("--no-yasa", action="store_true", help="skip (b) even when YASA is installed")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.nights < 5:
        p.error("--nights: at least 5 (every 5th subject is held out for (a))")
    return args


def generate_nights(args: argparse.Namespace, use_yasa: bool) -> tuple[list[dict], float]:
    """The synthetic nights' figures (``night_figures``, over ``--workers`` processes) and the seconds taken."""
    t0 = time.perf_counter()
    with mp.Pool(args.workers) as pool:
        nights = pool.map(night_figures, [(args.seed, i, use_yasa) for i in range(args.nights)])
    return nights, time.perf_counter() - t0


def print_baselines(nights: list[dict], real: dict, mark: Marks) -> dict:
    """(a): the reference baseline on EEG Fpz-Cz and on all three channels, beside the real figures."""
    print("== (a) reference baseline fitted on the synthetic nights: logistic regression on 5 log relative "
          "band powers, held-out subjects ==")
    print(f"{'channels':<34}{'acc':>7}{'MF1':>7}{'kappa':>7}{'N1 F1':>7}{'REM F1':>8}{'majority':>9}"
          f"{'real acc':>10}{'real MF1':>9}{'real k':>8}")
    figures = {}
    for name, chans, key in (("EEG Fpz-Cz", [0], "EEG Fpz-Cz"),
                             ("Fpz-Cz + Pz-Oz + EOG horizontal", [0, 1, 2], "EEG Fpz-Cz + EEG Pz-Oz + EOG horizontal")):
        b = baseline(nights, chans)
        r = real["reference_baseline"][key]
        figures[name] = b
        flag = mark(0.62 <= b["accuracy"] <= 0.74) if len(chans) == 1 else mark(b["accuracy"] <= 0.78)
        print(f"{name:<34}{b['accuracy']:>7.3f}{b['macro_f1']:>7.3f}{b['kappa']:>7.3f}{b['n1_f1']:>7.3f}"
              f"{b['rem_f1']:>8.3f}{b['majority_accuracy']:>9.3f}{r['accuracy']:>10.3f}{r['macro_f1']:>9.3f}"
              f"{r['kappa']:>8.3f}  {flag}")
    print(f"(subjects train/test {b['subjects'][0]}/{b['subjects'][1]}, epochs {b['epochs'][0]}/{b['epochs'][1]}; "
          f"goals: Fpz-Cz accuracy 0.62-0.74, three channels at most 0.78)\n")
    return figures


def print_yasa(nights: list[dict], stages: list[str], mark: Marks) -> dict:
    """(b): YASA's pretrained stager on the synthetic nights."""
    y = sum((n["yasa"] for n in nights), [])
    yb = scores(stages, y)
    per_night = [accuracy_score(n["stages"], n["yasa"]) for n in nights]
    yb["per_night_accuracy"] = [round(float(a), 3) for a in per_night]
    ok = yb["accuracy"] >= 0.75 and yb["kappa"] >= 0.65 and all(yb["recall"][s] >= 0.5 for s in STAGES if s != "N1")
    print(f"== (b) {yasa_staging.NAME}: YASA {yasa_installed()} SleepStaging on EEG Fpz-Cz + EOG horizontal ==")
    print(f"accuracy {yb['accuracy']:.3f}  macro-F1 {yb['macro_f1']:.3f}  kappa {yb['kappa']:.3f}  {mark(ok)}")
    print(f"recall: {recall_row(yb)}")
    print(f"per night accuracy {min(per_night):.2f}-{max(per_night):.2f}")
    print("(goals: accuracy >= 0.75, kappa >= 0.65, recall >= 0.5 in every stage but N1)\n")
    return yb


def print_judge(real_nights: list[dict], sx: np.ndarray, sy: np.ndarray, mark: Marks) -> dict:
    """(c): the real-data judge's held-out real accuracy beside its accuracy on the synthetic nights."""
    j = judge(real_nights, sx, sy)
    held, syn = j["real_held_out"], j["synthetic"]
    print("== (c) real-data judge: HistGradientBoosting (balanced) on the 18 per-epoch features of 20 real "
          "Sleep-EDF nights ==")
    print(f"{'':<32}{'acc':>7}{'MF1':>7}{'kappa':>7}   recall")
    print(f"{'real, held-out subjects (2 of 10)':<32}{held['accuracy']:>7.3f}{held['macro_f1']:>7.3f}"
          f"{held['kappa']:>7.3f}   {recall_row(held)}")
    print(f"{'synthetic nights':<32}{syn['accuracy']:>7.3f}{syn['macro_f1']:>7.3f}{syn['kappa']:>7.3f}   "
          f"{recall_row(syn)}  {mark(abs(syn['accuracy'] - held['accuracy']) <= 0.05)}")
    print(f"(real {held['epochs']} epochs; goal: synthetic accuracy within 0.05 of the held-out real one)\n")
    return j


def print_feature_diffs(real_nights: list[dict], sx: np.ndarray, sy: np.ndarray, mark: Marks) -> dict:
    """(d): per channel and stage, the synthetic-minus-real mean of the judge's features."""
    rx = np.concatenate([n["X"] for n in real_nights])
    ry = np.concatenate([n["y"] for n in real_nights])
    print("== (d) per-stage mean of the judge's features, synthetic - real (goal: logvar and delta within 0.25) ==")
    names = [f[:7] for f in realism.FEATURE_NAMES]
    print(f"{'channel':<12}{'stage':<6}" + "".join(f"{n:>9}" for n in names) + f"{'real logvar':>13}{'real delta':>11}")
    figures = {}
    for c, ch in enumerate(realism.JUDGE_CHANNELS):
        for k, s in enumerate(STAGES):
            d = sx[sy == k, 9 * c: 9 * c + 9].mean(0) - rx[ry == k, 9 * c: 9 * c + 9].mean(0)
            figures[f"{ch} {s}"] = d.round(4).tolist()
            flag = mark(abs(d[7]) <= 0.25 and abs(d[0]) <= 0.25)
            print(f"{ch[4:]:<12}{s:<6}" + "".join(f"{v:>9.3f}" for v in d)
                  + f"{rx[ry == k, 9 * c + 7].mean():>13.2f}{rx[ry == k, 9 * c].mean():>11.2f}  {flag}")
    print("(band powers are ln(mean Welch PSD in V²/Hz + 1e-10), so they saturate near -23.03 where power is small)\n")
    return figures


def print_shares_and_bouts(nights: list[dict], stages: list[str], real: dict, mark: Marks) -> tuple[dict, dict]:
    """Each stage's share of the epochs and its mean bout length, against all 153 real nights."""
    print("== stage shares and mean bout lengths (epochs), against all 153 real nights ==")
    print(f"{'stage':<7}{'share':>8}{'real':>8}{'':>5}{'bout':>8}{'real':>8}")
    bouts = bout_means(nights)
    shares = {}
    for s in STAGES:
        share = stages.count(s) / len(stages)
        shares[s] = share
        rb = real["bout_length_epochs"][s]["mean"]
        print(f"{s:<7}{share:>8.3f}{real['share'][s]:>8.3f}{mark(abs(share - real['share'][s]) <= TOL_SHARE):>5}"
              f"{bouts[s]:>8.2f}{rb:>8.2f}  {mark(abs(bouts[s] / rb - 1) <= TOL_BOUT)}")
    return shares, bouts


def print_spectra(nights: list[dict], stages: list[str], spectra: dict, mark: Marks) -> dict:
    """Per EEG channel and stage, the synthetic-minus-real mean log relative band powers, with two standard
    errors of the synthetic mean across nights."""
    print("\n== per-stage mean log relative band power, synthetic - real (tolerance 0.15) ==")
    print("(in brackets: twice the standard error of the synthetic mean across nights; nights differ by the real\n"
          " between-night spread, so with few nights a mean can stray beyond 0.15 by chance: 'ok~' marks a\n"
          " difference beyond 0.15 that is within two standard errors of it)")
    print(f"{'channel':<16}{'stage':<6}" + "".join(f"{b:>14}" for b in BANDS) + "   max|d|")
    feats = np.concatenate([n["bands"] for n in nights])
    st = np.asarray(stages)
    night_of = np.concatenate([np.full(len(n["stages"]), i) for i, n in enumerate(nights)])
    figures = {}
    for c, ch in enumerate(synth.EEG_CHANNELS):
        for s in STAGES:
            real_mean = np.asarray(spectra[ch][s]["mean"])
            d = feats[st == s, c].mean(0) - real_mean
            per_night = np.stack([feats[(st == s) & (night_of == k), c].mean(0) for k in np.unique(night_of[st == s])])
            se2 = 2 * per_night.std(0, ddof=1) / np.sqrt(len(per_night))
            figures[f"{ch} {s}"] = {"diff": d.round(3).tolist(), "two_se": se2.round(3).tolist()}
            worst = int(np.abs(d).argmax())
            inside = np.abs(d).max() <= TOL_SPECTRUM
            flag = "ok" if inside else ("ok~" if abs(d[worst]) - se2[worst] <= TOL_SPECTRUM else mark(False))
            print(f"{ch:<16}{s:<6}" + "".join(f"{v:>7.2f} ({e:.2f})" for v, e in zip(d, se2))
                  + f"{np.abs(d).max():>9.2f} {flag}")
    return figures


def main() -> None:
    args = parse_args()
    cal = synth.load_calibration()
    real, spectra = cal["reference"], cal["spectra"]
    use_yasa = yasa_staging.available() and not args.no_yasa
    nights, seconds = generate_nights(args, use_yasa)
    stages = sum((n["stages"] for n in nights), [])
    mark = Marks()
    print(f"{args.nights} synthetic nights (seed {args.seed}), {len(stages)} scored epochs, generated in "
          f"{seconds:.0f} s ({args.workers} workers)\n")
    out: dict = {"nights": args.nights, "seed": args.seed, "epochs": len(stages), "seconds": round(seconds, 1)}
    out["baseline"] = print_baselines(nights, real, mark)
    if use_yasa:
        out["yasa"] = print_yasa(nights, stages, mark)
    else:
        why = "--no-yasa" if args.no_yasa else "YASA is not installed: pip install -c constraints.txt -e '.[baselines]'"
        print(f"== (b) YASA pretrained: skipped ({why}) ==\n")
    real_nights = realism.load_real_features(args.features)
    if real_nights:
        sx = np.concatenate([n["judge"] for n in nights])
        sy = realism.stage_index(stages)
        out["judge"] = print_judge(real_nights, sx, sy, mark)
        out["feature_diff"] = print_feature_diffs(real_nights, sx, sy, mark)
    else:
        print(f"== (c), (d) skipped: no real features in {args.features} ==\n")
    out["share"], out["bout_mean"] = print_shares_and_bouts(nights, stages, real, mark)
    out["spectrum_diff"] = print_spectra(nights, stages, spectra, mark)
    print(f"\nall figures inside their tolerances: {'yes' if mark.all_ok else 'NO'}")
    out["inside_tolerances"] = mark.all_ok
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()
