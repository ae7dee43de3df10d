"""Seconds to stage a whole synthetic night with ``eeg-vlm stage``, from the EDF to the report.

    .venv/bin/python benchmarks/stage_night.py [--hours 8] [--threads 2] [--channels "EEG Fpz-Cz"]

One ``eeg-vlm synth`` night (8 h = 960 epochs) is staged twice through ``eeg_vlm.stage``: by the vision module
alone, and with the tiny LLaVA (``eeg_vlm.tiny``, the tests' size) in choices mode, made a stage-only
checkpoint first (``train_stage_only``, as the demo's VLM answers the stage alone; a random one would write up
to ``--max-new-tokens`` of reasoning per epoch). The vision module is a resnet18 at the default input size with
random weights (``vision_modules.checkpoint.random_checkpoint``; its speed does not depend on them); the render
settings are ``RenderConfig`` defaults. Timed: ``Stager.stage`` (reading the EDF, drawing every epoch in memory,
features, VLM) plus ``StagedNight.save`` (CSV, figure, statistics, report), with the models loaded beforehand; the
model loading is reported on its own.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--channels", default="EEG Fpz-Cz", help="comma-separated channels drawn (one panel each)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_throughput import cpu_name

    from eeg_core.formats import FEATURE_DIM
    from eeg_core.stages import STAGES
    from eeg_vlm.stage import Stager
    from eeg_vlm.tiny import build_tiny_llava, train_stage_only
    from sleep_eeg.images.render import RenderConfig, render_night
    from sleep_eeg.synthetic.synth import synth_nights
    from vision_modules.checkpoint import random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        psg = synth_nights(tmp / "edf", nights=1, seed=0, hours=args.hours, verbose=False)[0]
        render = RenderConfig(channels=tuple(c.strip() for c in args.channels.split(",")))
        vision = random_checkpoint(tmp / "vision", render.to_dict())
        images = render_night({c: (np.zeros(3000), 100.0) for c in render.channels}, range(5), render)
        vlm = train_stage_only(build_tiny_llava(tmp / "tiny", seed=0), tmp / "stage_only", images,
                               np.zeros((len(STAGES), 1, FEATURE_DIM), np.float32), list(STAGES))
        print(f"machine: {cpu_name()}, torch threads {torch.get_num_threads()}; {psg.name}, {args.hours:g} h, "
              f"channels {', '.join(render.channels)}, images {render.size[0]}x{render.size[1]} px")
        results = {}
        for name, vlm in (("vision module only", None), ("with the tiny VLM (choices)", vlm)):
            t0 = time.perf_counter()
            stager = Stager(vision, vlm, device="cpu", batch_size=args.batch_size)
            loading = time.perf_counter() - t0
            t0 = time.perf_counter()
            night = stager.stage(psg, explain=vlm is not None)
            staged = time.perf_counter() - t0
            night.save(tmp / "out" / name.split()[0])
            total = time.perf_counter() - t0
            results[name] = total
            print(f"{name:<28} {len(night.stages)} epochs: {total:6.1f} s ({staged:.1f} s staging, "
                  f"{total - staged:.1f} s writing the outputs; models loaded in {loading:.1f} s)")
            if night.reasoning is not None:
                print(f"  epochs where the VLM reasoned before its stage line: {sum(bool(r) for r in night.reasoning)}")
        a, b = results.values()
        print(f"the VLM costs x{b / a:.2f} the vision module alone")


if __name__ == "__main__":
    main()
