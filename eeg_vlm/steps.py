"""A small build system for the demo: each step is a command run in a work folder, skipped when it is current.

A step is current when its outputs exist and its stamp ``<workdir>/.demo/<step>.json`` holds the hash of its
command, the bytes of its inputs and the stamps of the steps it comes after. Outputs are removed before a step
runs, so nothing stale or half-written leaks into the next one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from eeg_core.atomic import file_sha256, write_json
from eeg_core.errors import FormatError

STAMPS = ".demo"


@dataclass
class Step:
    name: str
    argv: list[str]  # as printed; argv[0] is eeg-vlm | python | deepspeed
    outputs: list[str]  # removed before the step runs; must all exist for the step to be current
    # (a folder and the files inside it that prove the folder complete)
    inputs: list[str] = field(default_factory=list)  # files whose bytes are part of the stamp
    after: list[str] = field(default_factory=list)  # steps whose stamps are part of this one's


def _executable(argv: list[str], env: dict) -> list[str]:
    """argv as it is run: the venv's own eeg-vlm / python / deepspeed."""
    bindir = Path(sys.executable).parent
    prog, rest = argv[0], argv[1:]
    if prog == "python":
        return [sys.executable, *rest]
    if prog == "eeg-vlm":
        exe = bindir / "eeg-vlm"
        return [str(exe), *rest] if exe.exists() else [sys.executable, "-m", "eeg_vlm.cli", *rest]
    if prog == "deepspeed":
        exe = bindir / "deepspeed"
        if not exe.exists():
            raise FormatError(f"{exe}: the deepspeed launcher is not installed in this environment "
                              f"(pip install -e '.[train]')")
        return [str(exe), *rest]
    raise ValueError(prog)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamp_key(step: Step, workdir: Path, keys: dict[str, str]) -> str:
    inputs = {p: file_sha256(workdir / p) if (workdir / p).is_file() else None for p in step.inputs}
    blob = json.dumps({"argv": step.argv, "inputs": inputs, "after": {a: keys.get(a) for a in step.after}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_current(step: Step, workdir: Path, key: str) -> bool:
    stamp = workdir / STAMPS / f"{step.name}.json"
    if not stamp.is_file() or not all((workdir / p).exists() for p in step.outputs):
        return False
    try:
        return json.loads(stamp.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def run_step(step: Step, workdir: Path, env: dict) -> float:
    for p in step.outputs:  # a stale or half-written output must not leak into this run
        target = workdir / p
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    t0 = time.perf_counter()
    argv = list(step.argv)
    if argv[0] == "deepspeed":  # a free port: another deepspeed job may hold the default 29500
        argv[1:1] = ["--master_port", str(_free_port())]
    print("$ " + shlex.join(argv), flush=True)
    proc = subprocess.run(_executable(argv, env), cwd=workdir, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"demo: step {step.name!r} failed (exit {proc.returncode}); see its output above")
    return time.perf_counter() - t0


def subprocess_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "",  # the demo is the CPU path
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
    })
    return env


def run_steps(steps: list[Step], workdir: Path, env: dict, force: bool = False) -> dict[str, tuple[float, bool]]:
    """Run the steps in order, skipping the current ones (all of them with ``force``); returns each step's
    ``(seconds, ran)``, the seconds of a skipped step being those of its last run."""
    keys: dict[str, str] = {}
    timings: dict[str, tuple[float, bool]] = {}
    for i, step in enumerate(steps, 1):
        key = stamp_key(step, workdir, keys)
        keys[step.name] = key
        stamp = workdir / STAMPS / f"{step.name}.json"
        if not force and is_current(step, workdir, key):
            timings[step.name] = (json.loads(stamp.read_text()).get("seconds", 0.0), False)
            print(f"[{i}/{len(steps)}] {step.name}: current, skipped", flush=True)
            continue
        print(f"\n[{i}/{len(steps)}] {step.name}", flush=True)
        if stamp.exists():
            stamp.unlink()
        seconds = run_step(step, workdir, env)
        write_json(stamp, {"key": key, "argv": step.argv, "seconds": round(seconds, 1)})
        timings[step.name] = (seconds, True)
        print(f"[{i}/{len(steps)}] {step.name}: done in {seconds:.1f} s", flush=True)
    return timings
