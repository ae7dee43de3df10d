"""How real are the synthetic nights? Their figures beside real Sleep-EDF sleep-cassette ones.

    python benchmarks/realism.py --nights 30 --workers 2

Generates ``--nights`` real-length nights (one subject each) exactly as ``eeg-vlm synth`` does, and
prints, beside the real figures kept in ``sleep_eeg/sleepedf_calibration.json`` (from all 153
sleep-cassette nights):

- the reference baseline: a logistic regression on the five log relative band powers of one epoch,
  trained on 80 % of the subjects and tested on the others (every 5th subject), on EEG Fpz-Cz and on
  all three channels; with the majority class beside it;
- per-stage mean log relative band power of each channel (tolerance 0.15);
- stage shares (tolerance 0.03) and mean bout lengths (tolerance 25 %).

Every row says whether it is inside its tolerance. ``--json PATH`` also writes the figures.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from eeg_core.stages import STAGES
from sleep_eeg import synth
from sleep_eeg.measures import BANDS, log_relative_band_power

TOL_SPECTRUM, TOL_SHARE, TOL_BOUT = 0.15, 0.03, 0.25


def night_figures(args: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """Scored stages of one night and their ``[epoch, channel, band]`` features."""
    seed, index = args
    stages, signals, _, _ = synth.synth_night(seed, index, 1, None)
    feats = np.stack([log_relative_band_power(signals[ch], synth.FS) for ch in synth.EEG_CHANNELS], 1)
    keep = [i for i, s in enumerate(stages) if s in STAGES]
    return [stages[i] for i in keep], feats[keep]


def baseline(nights: list[tuple[list[str], np.ndarray]], channels: list[int]) -> dict:
    """Subject-wise split (every 5th subject held out), standardised logistic regression."""
    test = [i % 5 == 4 for i in range(len(nights))]
    def xy(want: bool):
        rows = [(f[:, channels].reshape(len(f), -1), s) for (s, f), t in zip(nights, test) if t == want]
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
    for stages, _ in nights:
        for k, g in itertools.groupby(stages):
            bouts[k].append(len(list(g)))
    return {s: float(np.mean(v)) for s, v in bouts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nights", type=int, default=30, help="nights (one subject each); 20 or more")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    cal = synth.load_calibration()
    real, spectra = cal["reference"], cal["spectra"]
    t0 = time.perf_counter()
    with mp.Pool(args.workers) as pool:
        nights = pool.map(night_figures, [(args.seed, i) for i in range(args.nights)])
    seconds = time.perf_counter() - t0
    stages = sum((s for s, _ in nights), [])
    feats = np.concatenate([f for _, f in nights])
    ok_all = True

    def mark(ok: bool) -> str:
        nonlocal ok_all
        ok_all &= ok
        return "ok" if ok else "OUT"

    print(f"{args.nights} synthetic nights, {len(stages)} scored epochs, generated in {seconds:.0f} s "
          f"({args.workers} workers)\n")
    out: dict = {"nights": args.nights, "epochs": len(stages), "seconds": round(seconds, 1)}
    print("== reference baseline: logistic regression on 5 log relative band powers, held-out subjects ==")
    print(f"{'channels':<34}{'acc':>7}{'MF1':>7}{'kappa':>7}{'N1 F1':>7}{'REM F1':>8}{'majority':>9}"
          f"{'real acc':>10}{'real MF1':>9}{'real k':>8}")
    out["baseline"] = {}
    for name, chans, key in (("EEG Fpz-Cz", [0], "EEG Fpz-Cz"),
                             ("Fpz-Cz + Pz-Oz + EOG horizontal", [0, 1, 2], "EEG Fpz-Cz + EEG Pz-Oz + EOG horizontal")):
        b = baseline(nights, chans)
        r = real["reference_baseline"][key]
        out["baseline"][name] = b
        flag = mark(0.62 <= b["accuracy"] <= 0.74) if len(chans) == 1 else ""
        print(f"{name:<34}{b['accuracy']:>7.3f}{b['macro_f1']:>7.3f}{b['kappa']:>7.3f}{b['n1_f1']:>7.3f}"
              f"{b['rem_f1']:>8.3f}{b['majority_accuracy']:>9.3f}{r['accuracy']:>10.3f}{r['macro_f1']:>9.3f}"
              f"{r['kappa']:>8.3f}  {flag}")
    print(f"(subjects train/test {b['subjects'][0]}/{b['subjects'][1]}, epochs {b['epochs'][0]}/{b['epochs'][1]}; "
          f"target for Fpz-Cz: accuracy 0.62-0.74)\n")

    print("== stage shares and mean bout lengths (epochs) ==")
    print(f"{'stage':<7}{'share':>8}{'real':>8}{'':>5}{'bout':>8}{'real':>8}")
    bouts = bout_means(nights)
    out["share"], out["bout_mean"] = {}, bouts
    for s in STAGES:
        share = stages.count(s) / len(stages)
        out["share"][s] = share
        rb = real["bout_length_epochs"][s]["mean"]
        print(f"{s:<7}{share:>8.3f}{real['share'][s]:>8.3f}{mark(abs(share - real['share'][s]) <= TOL_SHARE):>5}"
              f"{bouts[s]:>8.2f}{rb:>8.2f}  {mark(abs(bouts[s] / rb - 1) <= TOL_BOUT)}")

    print("\n== per-stage mean log relative band power, synthetic - real (tolerance 0.15) ==")
    print("(in brackets: twice the standard error of the synthetic mean across nights; nights differ by the real\n"
          " between-night spread, so with few nights a mean can stray beyond 0.15 by chance: 'ok~' marks a\n"
          " difference beyond 0.15 that is within two standard errors of it)")
    print(f"{'channel':<16}{'stage':<6}" + "".join(f"{b:>14}" for b in BANDS) + "   max|d|")
    st = np.asarray(stages)
    night_of = np.concatenate([np.full(len(s), i) for i, (s, _) in enumerate(nights)])
    out["spectrum_diff"] = {}
    for c, ch in enumerate(synth.EEG_CHANNELS):
        for s in STAGES:
            real_mean = np.asarray(spectra[ch][s]["mean"])
            d = feats[st == s, c].mean(0) - real_mean
            per_night = np.stack([feats[(st == s) & (night_of == k), c].mean(0) for k in np.unique(night_of[st == s])])
            se2 = 2 * per_night.std(0, ddof=1) / np.sqrt(len(per_night))
            out["spectrum_diff"][f"{ch} {s}"] = {"diff": d.round(3).tolist(), "two_se": se2.round(3).tolist()}
            worst = int(np.abs(d).argmax())
            inside = np.abs(d).max() <= TOL_SPECTRUM
            flag = "ok" if inside else ("ok~" if abs(d[worst]) - se2[worst] <= TOL_SPECTRUM else mark(False))
            print(f"{ch:<16}{s:<6}" + "".join(f"{v:>7.2f} ({e:.2f})" for v, e in zip(d, se2))
                  + f"{np.abs(d).max():>9.2f} {flag}")
    print(f"\nall figures inside their tolerances: {'yes' if ok_all else 'NO'}")
    out["inside_tolerances"] = ok_all
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)


if __name__ == "__main__":
    main()
