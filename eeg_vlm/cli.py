"""``eeg-vlm``: one command line for the pipeline. ``COMMANDS`` is the command table, in data-flow order;
``eeg-vlm --help`` lists it (``help_text``). Each subcommand is also ``python -m <module>``.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from eeg_core.cli import run

# name -> (module with main(argv), what it does): the one list of the commands, in data-flow order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sleep_eeg.synthetic.synth", "synthetic Sleep-EDF-style nights (PSG + hypnogram EDF files)"),
    "prepare": ("sleep_eeg.images.prepare", "EDF nights -> epoch images, train records and eval questions"),
    "vision": ("vision_modules.cli", "specialized vision module: train | extract | predict"),
    "baseline": ("sleep_eeg.baselines.classic", "classic baselines: train | predict, answers scored like any model"),
    "score": ("sleep_eeg.evaluation.score", "answers -> sleep-staging metrics and plots"),
    "stage": ("eeg_vlm.stage", "stage whole EDF nights: stages.csv, hypnogram, sleep statistics, report.html"),
    "demo": ("eeg_vlm.demo", "the whole pipeline on synthetic nights, on the CPU"),
}


def help_text() -> str:
    """``eeg-vlm --help``: every command of ``COMMANDS`` with what it does, and LLaVA's own entry points."""
    width = max(map(len, COMMANDS))
    lines = [f"    eeg-vlm {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return "\n".join([
        "eeg-vlm: one command line for the pipeline, in data-flow order.", "", *lines, "",
        "eeg-vlm COMMAND --help shows a command's options; each command is also python -m <its module>.",
        "Training and evaluation keep LLaVA's entry points: deepspeed llava/train/train_mem.py and",
        "python llava/eval/model_vqa.py.",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
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
