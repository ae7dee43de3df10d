"""Training step time on the CPU in float32 against bfloat16: the documented command (DeepSpeed ZeRO-3, LoRA r128,
one rank) on the tiny random LLaVA, once with ``--bf16 False`` and once with ``--bf16 True`` (kept on the CPU, as
on a GPU), alternated so that both see the same machine load.

    python benchmarks/train_dtype.py [--steps 20] [--rounds 2] [--records 64] [--batch 4]

Prints seconds per step for each dtype (the Trainer's ``train_runtime`` over the steps, so loading is not
counted) and the ratio bfloat16 / float32 measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from eeg_core import formats  # noqa: E402
from eeg_core.answer import stage_line  # noqa: E402
from eeg_core.atomic import write_json  # noqa: E402
from eeg_core.layout import FEATURES_TRAIN_NAME  # noqa: E402
from eeg_core.stages import STAGES  # noqa: E402
from eeg_vlm.commands import train_argv  # noqa: E402


def make_data(root: Path, n: int) -> Path:
    """``n`` records with noise images (the size ``eeg-vlm prepare`` draws by default) and random features."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (224, 448, 3), dtype=np.uint8)).save(root / "images" / f"e{i}.png")
        records.append(formats.make_train_record(f"r{i}", [f"e{i}.png"] * 2, "What is the sleep stage?",
                                                 stage_line(STAGES[i % len(STAGES)]), label=STAGES[i % len(STAGES)]))
    write_json(root / "eeg_ft.json", records)
    formats.save_features(root / FEATURES_TRAIN_NAME, rng.standard_normal((n, 1, formats.FEATURE_DIM)).astype(np.float32))
    return root


def run(tiny: Path, data: Path, out: Path, bf16: bool, steps: int, batch: int) -> float:
    """One run of the documented command; returns seconds per step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = train_argv(model=tiny, data_path=data / "eeg_ft.json", image_folder=data / "images", output_dir=out,
                      bf16=bf16, max_steps=steps, save_strategy="no", report_to="none", dataloader_num_workers=0,
                      per_device_train_batch_size=batch, warmup_ratio=0, logging_steps=steps)
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--master_port", str(port), "--num_gpus", "1",
           "llava/train/train_mem.py", *argv]
    env = dict(os.environ, DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", WANDB_MODE="disabled")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit((proc.stdout + proc.stderr)[-3000:])
    state = json.loads((out / "trainer_state.json").read_text())
    runtime = next(e["train_runtime"] for e in state["log_history"] if "train_runtime" in e)
    return runtime / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    from eeg_vlm.tiny import build_tiny_llava

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tiny_llava(root / "tiny", seed=0)
        data = make_data(root / "data", args.records)
        times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        for r in range(args.rounds):
            for name in ("float32", "bfloat16"):
                times[name].append(run(root / "tiny", data, root / f"run_{name}_{r}", name == "bfloat16",
                                       args.steps, args.batch))
                print(f"round {r}: {name} {times[name][-1]:.3f} s/step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n| dtype | s/step (median of {args.rounds}) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} |")
    print(f"bfloat16 / float32: {med['bfloat16'] / med['float32']:.2f}x "
          f"({args.steps} steps, batch {args.batch}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
