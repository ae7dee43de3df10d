"""Vision training images/s: PNG decoded at every epoch (the old path) against images decoded once into a
uint8 tensor (what ``eeg-vlm vision train`` does), each under the OpenMP wait policies, in one run.

    python benchmarks/vision_train_speed.py [--images 256] [--batch-size 64] [--rounds 1]

It draws ``--images`` epoch images of the demo's default recipe (Fpz-Cz + spectrogram, EOG, EMG; 8 px/s,
240x232 px) from noise into a temporary folder, then alternates child processes, one per OpenMP wait policy
(libgomp's default, and ``OMP_WAIT_POLICY=PASSIVE``, which ``eeg-vlm vision`` sets unless you set it). Each
child trains resnet18 at the demo's input (116x120, batch 64, AdamW, class-weighted loss) for one epoch per path,
in the order old, new, new, old, each epoch from the same seeded module and the same shuffled order, so that
every path sees the same load. Reported: images/s of the epochs (steps and loading; the decoding up front is
timed apart), and a hash of the weights after each epoch: every path and policy must give the same weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POLICIES = {"default": None, "passive": "PASSIVE"}


def draw_images(folder: Path, n: int) -> list[dict]:
    """``n`` epoch images of the demo recipe drawn from noise, and their records (labels cycle W..REM)."""
    import numpy as np

    from eeg_core.stages import STAGES
    from sleep_eeg.images.render import RenderConfig, png_bytes, render_night

    cfg = RenderConfig(channels=("EEG Fpz-Cz", "EOG horizontal", "EMG submental"), px_per_s=8.0, height=96,
                       spectrogram=True)
    rng = np.random.default_rng(0)
    signals = {c: (rng.normal(0, 40, size=100 * 30 * (n + 2)), 100.0) for c in cfg.channels}
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, im in enumerate(render_night(signals, list(range(n)), cfg)):
        (folder / f"{i}.png").write_bytes(png_bytes(im, cfg.compress_level))
        records.append({"id": str(i), "image": [f"{i}.png", f"{i}.png"], "label": STAGES[i % len(STAGES)]})
    return records


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def child(folder: Path, batch_size: int, size: list[int]) -> None:
    """One process: the old and the new path alternated (old, new, new, old); one JSON line per epoch."""
    import numpy as np
    import torch

    from eeg_core.formats import read_records
    from vision_modules import create_vision_module
    from vision_modules.data import (
        CachedImageDataset,
        EEGImageDataset,
        decode_record_images,
        record_image_paths,
        record_labels,
    )
    from vision_modules.modules import memory_format
    from vision_modules.train import VisionTrainConfig, TrainingData, class_weighted_loss, make_loaders, make_optimizer, train_one_epoch

    records = read_records(folder / "records.json")
    labels = record_labels(records, "bench")
    idx = list(range(len(records)))

    def model():
        torch.manual_seed(0)
        return create_vision_module("resnet18", image_size=size).to(memory_format=torch.channels_last)

    t0 = time.perf_counter()
    paths = record_image_paths(records, folder, "bench", progress=False)  # the old up-front check
    setup = {"old": time.perf_counter() - t0}
    m = model()
    t0 = time.perf_counter()
    images = decode_record_images(paths, records, "bench", m.input_size, progress=False)  # check + decode, once
    setup["new"] = time.perf_counter() - t0
    datasets = {"old": EEGImageDataset(paths, labels, m.input_size, m.mean, m.std),
                "new": CachedImageDataset(images, labels, m.mean, m.std)}
    opts = VisionTrainConfig(epochs=1, batch_size=batch_size, lr=2e-3, seed=0, val_fraction=0)
    data = TrainingData(records, labels, None, None, paths, idx, [], "none")
    criterion = class_weighted_loss(np.asarray(labels), torch.device("cpu"))
    x = torch.randn(8, 3, *size).to(memory_format=torch.channels_last)  # warm-up: oneDNN picks its kernels
    torch.nn.functional.cross_entropy(m(x).logits, torch.zeros(8, dtype=torch.long)).backward()
    for path in ("old", "new", "new", "old"):
        m = model()
        loader, _, _ = make_loaders(datasets[path], data, opts)
        optimizer, scheduler = make_optimizer(m, opts, len(loader))
        t0 = time.perf_counter()
        train_one_epoch(m, loader, criterion, optimizer, scheduler, torch.device("cpu"))
        seconds = time.perf_counter() - t0
        seen = len(loader) * batch_size
        print(json.dumps({"path": path, "img_s": seen / seconds, "seconds": seconds, "setup_s": setup[path],
                          "weights": weights_hash(m), "threads": torch.get_num_threads(),
                          "memory_format": str(memory_format(m))}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, nargs=2, default=[116, 120], metavar=("H", "W"))
    p.add_argument("--rounds", type=int, default=1, help="how many times each policy's child runs (alternated)")
    p.add_argument("--child", metavar="FOLDER", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(Path(a.child), a.batch_size, a.image_size)
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the start; {a.images} images, batch {a.batch_size}, "
          f"input 3x{a.image_size[0]}x{a.image_size[1]}")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vision-train-speed-") as tmp:
        folder = Path(tmp)
        sys.path.insert(0, str(REPO))
        from eeg_core.atomic import write_json

        write_json(folder / "records.json", draw_images(folder, a.images))
        for _ in range(a.rounds):
            for policy, value in POLICIES.items():
                env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
                if value:
                    env["OMP_WAIT_POLICY"] = value
                out = subprocess.run([sys.executable, __file__, "--child", str(folder), "--batch-size",
                                      str(a.batch_size), "--image-size", *map(str, a.image_size)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                for line in out.splitlines():
                    row = json.loads(line)
                    results.setdefault((policy, row["path"]), []).append(row)
                    print(f"  {policy:<8} {row['path']:<4} {row['img_s']:7.1f} img/s  ({row['seconds']:.1f} s)  "
                          f"weights {row['weights']}", flush=True)
    base = statistics.median(r["img_s"] for r in results[("default", "old")])
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"{'wait policy':<12}{'path':<34}{'img/s (median)':>15}{'x today':>9}{'decode up front s':>19}")
    names = {"old": "PNG decoded every epoch", "new": "decoded once (uint8 tensor)"}
    for (policy, path), rows in results.items():
        ips = statistics.median(r["img_s"] for r in rows)
        setup = statistics.median(r["setup_s"] for r in rows)
        print(f"{policy:<12}{names[path]:<34}{ips:>15.1f}{ips / base:>9.2f}{setup:>19.2f}")
    hashes = {r["weights"] for rows in results.values() for r in rows}
    print(f"weights after the epoch: {'identical on every path and policy' if len(hashes) == 1 else 'DIFFER: ' + ', '.join(sorted(hashes))}")


if __name__ == "__main__":
    main()
