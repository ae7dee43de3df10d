"""``eeg-vlm``: one command line for the pipeline, in data-flow order.

    eeg-vlm synth     synthetic Sleep-EDF-style nights (EDF + hypnogram)
    eeg-vlm prepare   EDF nights -> epoch images, train records, eval questions
    eeg-vlm vision    train a specialized vision module / extract its high-level features
    eeg-vlm baseline  classic baselines (band-power logistic regression, YASA-style features + boosting)
    eeg-vlm score     answers -> accuracy, macro-F1, Cohen's kappa, per-class F1, plots
    eeg-vlm stage     stage whole EDF nights: stages.csv, hypnogram, sleep statistics, report.html
    eeg-vlm demo      the whole pipeline on synthetic nights, on the CPU

Training and evaluation keep LLaVA's entry points: ``deepspeed llava/train/train_mem.py`` and
``python llava/eval/model_vqa.py``. Each subcommand is also ``python -m <module>``.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from eeg_core.cli import plain, run

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sleep_eeg.synth", "synthetic Sleep-EDF-style nights (PSG + hypnogram EDF files)"),
    "prepare": ("sleep_eeg.prepare", "EDF nights -> epoch images, train records and eval questions"),
    "vision": ("vision_modules.cli", "specialized vision module: train | extract"),
    "baseline": ("sleep_eeg.baselines", "classic baselines: train | predict, answers scored like any model"),
    "score": ("sleep_eeg.score", "answers -> sleep-staging metrics and plots"),
    "stage": ("eeg_vlm.stage", "stage whole EDF nights: stages.csv, hypnogram, sleep statistics, report.html"),
    "demo": ("eeg_vlm.demo", "the whole pipeline on synthetic nights, on the CPU"),
}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(plain(__doc__.strip()))
        raise SystemExit(0)
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} (eeg-vlm --help)", file=sys.stderr)
        raise SystemExit(2)
    if argv[0] == "vision" and "torch" not in sys.modules:
        # Before torch loads its OpenMP runtime: threads that wait at a barrier sleep instead of spinning. On a
        # shared or oversubscribed CPU a spinning thread holds the core that another thread needs, and training
        # ran several times slower (benchmarks/vision_train_speed.py); the results are the same bits.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    run(module.main, argv[1:])


if __name__ == "__main__":
    main()
