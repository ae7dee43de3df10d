"""Epoch images per second: our numpy/PIL renderer vs a matplotlib figure per epoch of the same pixel size.

    .venv/bin/python benchmarks/render.py [--epochs 240] [--workers N]

Both write one PNG per 30-s epoch of a synthetic night (100 Hz, filtered 0.3-35 Hz). The matplotlib
baseline draws the same trace, at the same size and scale, without axes. One core each; then our renderer
across all cores through the same worker pool ``eeg-vlm prepare`` uses.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sleep_eeg.images.render import RenderConfig, prepare_night, render_epochs, segment
from sleep_eeg.synthetic import synth


def matplotlib_epochs(filtered, fs, epochs, folder: Path, cfg: RenderConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w, h = cfg.size
    dpi = 100
    for e in epochs:
        fig = plt.figure(figsize=(w / dpi, h / dpi), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.plot(np.clip(segment(filtered, fs, e), -cfg.uv, cfg.uv), color="black", linewidth=0.8)
        ax.set_ylim(-cfg.uv, cfg.uv)
        ax.set_xlim(0, 30 * fs - 1)
        ax.axis("off")
        fig.savefig(folder / f"{e:04d}.png", dpi=dpi)
        plt.close(fig)


def rate(fn, n: int, repeats: int = 3) -> float:
    """Best of ``repeats`` runs (the machine may be shared)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=240)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    stages = synth.synth_hypnogram(rng, hours=args.epochs / 120)
    signals, _ = synth.synth_signal(rng, synth.Subject.draw(rng), stages)
    fs = synth.FS
    cfg = RenderConfig()
    night = prepare_night({c: (x, synth.RATES[c]) for c, x in signals.items()}, cfg)
    filtered = night[0][0]
    epochs = list(range(len(stages)))
    n = len(epochs)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [tmp / "ours" / f"{e:04d}.png" for e in epochs]
        ours_1 = rate(lambda: render_epochs(night, epochs, paths, cfg), n)
        spec_cfg = RenderConfig(spectrogram=True, context_s=5)
        ours_spec = rate(lambda: render_epochs(night, epochs, paths, spec_cfg), n)
        with mp.Pool(args.workers) as pool:
            ours_n = rate(lambda: render_epochs(night, epochs, paths, cfg, pool), n)
        (tmp / "mpl").mkdir()
        n_mpl = min(n, 120)
        mpl_1 = rate(lambda: matplotlib_epochs(filtered, fs, epochs[:n_mpl], tmp / "mpl", cfg), n_mpl, repeats=1)
    w, h = cfg.size
    print(f"{n} epochs, {w}x{h} px PNG, 1 core unless noted; load average before: {os.getloadavg()[0]:.1f}")
    print(f"matplotlib figure per epoch: {mpl_1:8.1f} epochs/s")
    print(f"ours (numpy/PIL):            {ours_1:8.1f} epochs/s  ({ours_1 / mpl_1:.0f}x matplotlib)")
    print(f"ours + spectrogram + 5 s context ({spec_cfg.size[0]}x{spec_cfg.size[1]}): {ours_spec:8.1f} epochs/s")
    print(f"ours, {args.workers} workers:           {ours_n:8.1f} epochs/s  ({ours_n / ours_1:.2f}x one core)")


if __name__ == "__main__":
    main()
