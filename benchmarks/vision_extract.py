"""Speed of the specialized vision modules on the CPU: extraction images/s at batch 32 and the
training step time (forward + backward + AdamW) for resnet18 and convnext_base.

    python benchmarks/vision_extract.py [--threads 2] [--image-size 64 192] [--archs resnet18 convnext_base]

Random input tensors (no decoding), so this measures the model; whole training epochs, images included, are
`benchmarks/vision_train_speed.py`.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from vision_modules import create_vision_module


def timed(fn, repeats: int) -> tuple[float, float]:
    """(fastest, median) seconds per call after one warm-up call (oneDNN picks its kernels then).
    The fastest is the figure to trust on a shared machine; the median shows the noise."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, nargs=2, default=[64, 192], metavar=("H", "W"))
    p.add_argument("--archs", nargs="+", default=["resnet18", "convnext_base"])
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, {platform.processor() or platform.machine()}, "
          f"batch {a.batch_size}, input 3x{a.image_size[0]}x{a.image_size[1]}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'arch':<16}{'params (M)':>11}{'extract img/s best (median)':>29}{'train step s best (median)':>28}{'train img/s':>13}")
    for arch in a.archs:
        model = create_vision_module(arch, image_size=a.image_size).to(memory_format=torch.channels_last)
        x = torch.randn(a.batch_size, 3, *a.image_size).to(memory_format=torch.channels_last)
        y = torch.randint(0, 5, (a.batch_size,))
        model.eval()

        def extract():
            with torch.no_grad():
                model(x).features

        t_extract, m_extract = timed(extract, a.repeats)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            loss = torch.nn.functional.cross_entropy(model(x).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_step, m_step = timed(step, a.repeats)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        extract_col = f"{a.batch_size / t_extract:.1f} ({a.batch_size / m_extract:.1f})"
        step_col = f"{t_step:.3f} ({m_step:.3f})"
        print(f"{arch:<16}{n_params:>11.1f}{extract_col:>29}{step_col:>28}{a.batch_size / t_step:>13.1f}")


if __name__ == "__main__":
    main()
