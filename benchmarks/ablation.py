"""The ablation: each recipe of ``eeg_vlm.demo.RECIPES`` on the same nights and held-out subjects.

    .venv/bin/python benchmarks/ablation.py --workdir ablation_work [--edf-dir DIR] \
        [--rows waveform,spectrogram,...] [--vlm-rows eog-emg,class-balance]

Synthesizes the demo's nights once (10 calibrated nights of 4 h, seed 0) unless ``--edf-dir`` names a folder,
then runs ``eeg-vlm demo --edf-dir ... --recipe R`` per row in ``<workdir>/<R>``: the first row also trains
and runs the baselines (their figures do not depend on the recipe), the others reuse its answers. A row that
differs from an earlier one only in the VLM's fine-tuning (``class_balance``) runs in that row's workdir, so
its vision steps are skipped as current. Rows not in ``--vlm-rows`` stop after the vision module (the VLM's
fine-tuning is most of a row's time on a CPU). Prints
the markdown table for docs/benchmarks.md and writes ``<workdir>/ablation.json``. Rerunning skips every step
whose inputs are unchanged (the demo's stamps).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eeg_vlm.demo import FULL, RECIPES  # noqa: E402
from sleep_eeg.evaluation.metrics import METRIC_COLUMNS  # noqa: E402

HEADERS = " | ".join(c.name for c in METRIC_COLUMNS)


def run(argv: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print("$ " + " ".join(argv), flush=True)
    subprocess.run(argv, cwd=REPO, env=env, check=True)


def cells(row: dict | None) -> str:
    return " | ".join("—" if row is None else c.text(row[c.key]) for c in METRIC_COLUMNS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="ablation_work")
    p.add_argument("--edf-dir", help="nights to use (default: synthesize the demo's)")
    p.add_argument("--rows", default=",".join(RECIPES), help="recipes to run, in order")
    p.add_argument("--vlm-rows", default="", help="recipes whose row also fine-tunes and scores EEG-VLM")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work = Path(args.workdir).resolve()
    rows = [r for r in args.rows.split(",") if r]
    vlm_rows = {r for r in args.vlm_rows.split(",") if r}
    unknown = sorted((set(rows) | vlm_rows) - set(RECIPES))
    if unknown:
        raise SystemExit(f"ablation: unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    edf = Path(args.edf_dir).resolve() if args.edf_dir else work / "edf"
    if not args.edf_dir and not (edf / ".done").is_file():
        run([sys.executable, "-m", "eeg_vlm.cli", "synth", "--out", str(edf), "--nights", str(FULL.nights),
             "--hours", str(FULL.hours), "--seed", str(args.seed)], args.threads)
        (edf / ".done").write_text("")
    results, seconds, folders = {}, {}, {}
    for i, name in enumerate(rows):
        t0 = time.perf_counter()
        vision_recipe = dataclasses.replace(RECIPES[name], about="", class_balance=0.0)
        folder = folders.setdefault(vision_recipe, name)  # the first row with these images and vision module
        argv = [sys.executable, "-m", "eeg_vlm.demo", "--workdir", str(work / folder), "--edf-dir", str(edf),
                "--recipe", name, "--seed", str(args.seed), "--threads", str(args.threads)]
        if i > 0:
            argv += ["--baselines-from", str(work / rows[0])]
        if name not in vlm_rows:
            argv.append("--no-vlm")
        run(argv, args.threads)
        seconds[name] = round(time.perf_counter() - t0, 1)
        results[name] = json.loads((work / folder / "results" / "demo_summary.json").read_text())

    first = results[rows[0]]["table"]
    # every row that does not depend on the recipe: the majority class, YASA pretrained, the trained baselines
    baselines = [r for r in first if not r["name"].startswith(("vision module", "EEG-VLM"))]
    lines = [f"Held-out subjects: {first[0]['n']} epochs. Baselines (the same for every row):", "",
             "| model | " + HEADERS + " |", "|---|" + "---|" * len(METRIC_COLUMNS)]
    lines += [f"| {r['name']} | {cells(r)} |" for r in baselines]
    lines += ["", "| recipe | vision module: " + HEADERS + " | EEG-VLM: " + HEADERS + " |",
              "|---|" + "---|" * (2 * len(METRIC_COLUMNS))]
    for name in rows:
        table = results[name]["table"]
        vision = next(r for r in table if r["name"].startswith("vision module"))
        vlm = next((r for r in table if r["name"].startswith("EEG-VLM")), None)
        lines.append(f"| {RECIPES[name].about} | {cells(vision)} | {cells(vlm)} |")
    print("\n".join(lines))
    out = {"rows": rows, "vlm_rows": sorted(vlm_rows), "edf_dir": str(edf), "seconds": seconds,
           "results": {k: v["table"] for k, v in results.items()}, "step_seconds": {k: v["seconds"] for k, v in results.items()}}
    (work / "ablation.json").write_text(json.dumps(out, indent=2))
    print(f"\nwrote {work / 'ablation.json'}")


if __name__ == "__main__":
    main()
