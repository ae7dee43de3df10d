"""``eeg-vlm demo``: the whole EEG-VLM pipeline on synthetic nights, on the CPU, one command per step.

    synth (nights calibrated to real Sleep-EDF) -> prepare -> vision train -> vision extract (train, eval)
    -> vision predict -> the two baselines (train, predict) -> tiny LLaVA base
    -> deepspeed llava/train/train_mem.py -> llava/eval/model_vqa.py -> eeg-vlm score --compare ...

It ends with one table on the same held-out epochs: the majority class, the band-power baseline, the
feature baseline, the vision module and EEG-VLM (accuracy, macro-F1, kappa, N1 F1, REM F1).

Each step runs the command a user would run, printed before it runs, from inside ``--workdir`` (so the
paths read as in the README: ``sleep_data/eeg_ft.json`` ...). A step whose command, inputs and upstream
steps are unchanged and whose outputs exist is skipped: its stamp ``<workdir>/.demo/<step>.json`` holds
a hash of all of them. ``--quick`` runs the same pipeline at a toy size (for CI).

The recipe (see docs/benchmarks.md, "Demo"): the documented LoRA command (``--lora_r 128 --lora_alpha 256``,
ZeRO-3) on a random tiny LLaVA, with the feature given its own projector and its own token
(``--hl_projector separate --hl_fusion token``) and a projector learning rate of 1e-3 instead of the
paper's 2e-5: a random base learns the paper's shared projector too slowly for a demo on two cores.
Answers are the stage alone (``--cot none``); ``--cot stage`` keeps the paper's stage-wise chain of
thought, which the tiny model learns more slowly (the N1 / REM decision comes after three shared sentences).
"""
from __future__ import annotations

import argparse
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
from typing import Sequence

from eeg_vlm.formats import FormatError, file_sha256, write_json

REPO = Path(__file__).resolve().parents[1]
STAMPS = ".demo"

# Folders and files inside the workdir (the seed's sleep_data/ layout).
EDF = "edf"
DATA = "sleep_data"
TRAIN_RECORDS = f"{DATA}/eeg_ft.json"
EVAL_RECORDS = f"{DATA}/eeg_eval.jsonl"
TRAIN_IMAGES = f"{DATA}/eeg_images_ft"
EVAL_IMAGES = f"{DATA}/eeg_images_eval"
TRAIN_FEATURES = f"{DATA}/train_high_level_features.npy"
EVAL_FEATURES = f"{DATA}/eval_high_level_features.npy"
ANSWERS = f"{DATA}/answers/eeg_answers.jsonl"
VISION = "checkpoints/vision/resnet18"
VISION_ANSWERS = f"{DATA}/answers/vision_answers.jsonl"
BASELINES = {"bandpower": "band-power baseline", "features": "feature baseline"}  # kind -> row name
TINY = "checkpoints/tiny-llava"
RUN = "checkpoints/eeg-vlm-tiny-lora"
SCORES = "results/vlm"


@dataclass(frozen=True)
class Size:
    """How big the demo is: the full run (default) or ``--quick`` (CI)."""

    nights: int = 10  # one subject per night; 20 % held out for evaluation
    hours: float = 4.0  # 480 epochs per night
    vision_epochs: int = 5
    vision_image_size: tuple[int, int] = (32, 96)
    tiny_hidden: int = 256
    tiny_layers: int = 4
    train_steps: int = 240  # batch 16: one pass over the ~3,800 train records
    max_new_tokens: int = 16  # answers 'Sleep stage: X' (--cot none)
    max_new_tokens_cot: int = 128  # stage-wise chain of thought: up to ~70 tokens


FULL = Size()
QUICK = Size(nights=3, hours=0.25, vision_epochs=1, tiny_hidden=64, tiny_layers=1, train_steps=3,
             max_new_tokens=12, max_new_tokens_cot=12)


@dataclass
class Step:
    name: str
    argv: list[str]  # as printed; argv[0] is eeg-vlm | python | deepspeed
    outputs: list[str]  # removed before the step runs; must all exist for the step to be current
    # (a folder and the files inside it that prove the folder complete)
    inputs: list[str] = field(default_factory=list)  # files whose bytes are part of the stamp
    after: list[str] = field(default_factory=list)  # steps whose stamps are part of this one's


def pipeline(size: Size, seed: int, cot: str = "none") -> list[Step]:
    train_mem = str(REPO / "llava" / "train" / "train_mem.py")
    model_vqa = str(REPO / "llava" / "eval" / "model_vqa.py")
    zero3 = str(REPO / "scripts" / "zero3.json")
    h, w = size.vision_image_size
    # The documented training command with its paths pointed at the tiny base, and the demo's recipe.
    train = [
        "deepspeed", train_mem, "--lora_enable", "True", "--lora_r", "128", "--lora_alpha", "256",
        "--mm_projector_lr", "1e-3", "--deepspeed", zero3, "--model_name_or_path", TINY, "--version", "v1",
        "--data_path", TRAIN_RECORDS, "--image_folder", TRAIN_IMAGES, "--vision_tower", f"{TINY}/clip",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--group_by_modality_length", "True",
        "--bf16", "True", "--output_dir", RUN, "--num_train_epochs", "1", "--max_steps", str(size.train_steps),
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "4",
        "--gradient_accumulation_steps", "1", "--evaluation_strategy", "no", "--save_strategy", "steps",
        "--save_steps", "50000", "--save_total_limit", "1", "--learning_rate", "5e-4", "--weight_decay", "0.",
        "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine", "--logging_steps", "10", "--tf32", "True",
        "--model_max_length", "4096", "--gradient_checkpointing", "True", "--dataloader_num_workers", "1",
        "--lazy_preprocess", "True", "--report_to", "none", "--seed", str(seed),
        "--hl_fusion", "token", "--hl_projector", "separate",
    ]
    compare = [arg for kind, name in BASELINES.items() for arg in ("--compare", f"{name}={baseline_answers(kind)}")]
    compare += ["--compare", f"vision module (resnet18)={VISION_ANSWERS}"]
    return [
        Step("synth", ["eeg-vlm", "synth", "--out", EDF, "--nights", str(size.nights), "--hours", str(size.hours),
                       "--seed", str(seed)], outputs=[EDF]),
        Step("prepare", ["eeg-vlm", "prepare", "--edf-dir", EDF, "--out", DATA, "--cot", cot,
                         "--eval-fraction", "0.2", "--seed", str(seed), "--workers", "2"],
             outputs=[TRAIN_IMAGES, EVAL_IMAGES, TRAIN_RECORDS, EVAL_RECORDS], after=["synth"]),
        Step("vision-train", ["eeg-vlm", "vision", "train", "--arch", "resnet18", "--records", TRAIN_RECORDS,
                              "--image-folder", TRAIN_IMAGES, "--out", VISION, "--epochs", str(size.vision_epochs),
                              "--batch-size", "64", "--lr", "2e-3", "--image-size", str(h), str(w),
                              "--seed", str(seed)],
             outputs=[VISION, f"{VISION}/config.json", f"{VISION}/model.safetensors"], inputs=[TRAIN_RECORDS],
             after=["prepare"]),
        Step("vision-extract-train", ["eeg-vlm", "vision", "extract", "--checkpoint", VISION, "--records",
                                      TRAIN_RECORDS, "--image-folder", TRAIN_IMAGES, "--out", TRAIN_FEATURES,
                                      "--batch-size", "128"],
             outputs=[TRAIN_FEATURES, TRAIN_FEATURES + ".json"], inputs=[TRAIN_RECORDS], after=["vision-train"]),
        Step("vision-extract-eval", ["eeg-vlm", "vision", "extract", "--checkpoint", VISION, "--records",
                                     EVAL_RECORDS, "--image-folder", EVAL_IMAGES, "--out", EVAL_FEATURES,
                                     "--batch-size", "128"],
             outputs=[EVAL_FEATURES, EVAL_FEATURES + ".json"], inputs=[EVAL_RECORDS], after=["vision-train"]),
        Step("vision-predict", ["eeg-vlm", "vision", "predict", "--checkpoint", VISION, "--question-file",
                                EVAL_RECORDS, "--image-folder", EVAL_IMAGES, "--answers-file", VISION_ANSWERS],
             outputs=[VISION_ANSWERS], inputs=[EVAL_RECORDS], after=["vision-train"]),
        *baseline_steps(),
        Step("tiny-llava", ["python", "-m", "llava.model.tiny", "--out", TINY, "--seed", str(seed),
                            "--hidden-size", str(size.tiny_hidden), "--num-layers", str(size.tiny_layers)],
             outputs=[TINY, f"{TINY}/config.json", f"{TINY}/tokenizer.model"]),
        Step("train", train, outputs=[RUN, f"{RUN}/config.json", f"{RUN}/non_lora_trainables.bin"],
             inputs=[TRAIN_RECORDS, TRAIN_FEATURES],
             after=["prepare", "vision-extract-train", "tiny-llava"]),
        Step("eval", ["python", model_vqa, "--model-path", RUN, "--model-base", TINY, "--question-file", EVAL_RECORDS,
                      "--image-folder", EVAL_IMAGES, "--answers-file", ANSWERS, "--batch-size", "32",
                      "--max-new-tokens", str(size.max_new_tokens if cot == "none" else size.max_new_tokens_cot)],
             outputs=[ANSWERS], inputs=[EVAL_RECORDS, EVAL_FEATURES], after=["train", "vision-extract-eval"]),
        Step("score", ["eeg-vlm", "score", "--question-file", EVAL_RECORDS, "--answers-file", ANSWERS,
                       "--out", SCORES, *compare],
             outputs=[SCORES, f"{SCORES}/metrics.json"], inputs=[EVAL_RECORDS, ANSWERS, VISION_ANSWERS],
             after=["eval", "vision-predict", *(f"baseline-{k}-predict" for k in BASELINES)]),
    ]


def baseline_answers(kind: str) -> str:
    return f"{DATA}/answers/baseline_{kind}_answers.jsonl"


def baseline_steps() -> list[Step]:
    """Train each baseline on the training records' nights, answer the held-out questions."""
    steps = []
    for kind in BASELINES:
        model = f"checkpoints/baseline-{kind}"
        steps += [
            Step(f"baseline-{kind}-train", ["eeg-vlm", "baseline", "train", "--kind", kind, "--records", TRAIN_RECORDS,
                                            "--edf-dir", EDF, "--out", model],
                 outputs=[model, f"{model}/config.json"], inputs=[TRAIN_RECORDS], after=["prepare"]),
            Step(f"baseline-{kind}-predict", ["eeg-vlm", "baseline", "predict", "--model", model, "--question-file",
                                              EVAL_RECORDS, "--edf-dir", EDF, "--answers-file", baseline_answers(kind)],
                 outputs=[baseline_answers(kind)], inputs=[EVAL_RECORDS], after=[f"baseline-{kind}-train"]),
        ]
    return steps


# ---------------------------------------------------------------------------------------------
# Running the steps
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def summary(workdir: Path, timings: dict[str, tuple[float, bool]]) -> dict:
    """The comparison table of the score step (same held-out epochs for every row) and the step times."""
    from sleep_eeg.score import format_comparison

    vlm = json.loads((workdir / SCORES / "metrics.json").read_text())
    rows = vlm["comparison"]
    rows[-1]["name"] = "EEG-VLM (tiny LLaVA)"
    print(f"\n== held-out subjects ({rows[-1]['n']} epochs): every score beside its baselines ==")
    print(format_comparison(rows))
    best = max(rows[1:-1], key=lambda r: r["macro_f1"])
    if rows[-1]["macro_f1"] < best["macro_f1"]:
        print(f"note: EEG-VLM's macro-F1 {rows[-1]['macro_f1']:.3f} is below the {best['name']}'s "
              f"{best['macro_f1']:.3f} on these epochs")
    plots = [str(Path(SCORES) / p) for p in vlm.get("plots", [])]
    print(f"\nscores: {workdir / SCORES / 'metrics.json'}")
    print(f"plots:  {workdir / SCORES}/ ({', '.join(Path(p).name for p in plots[:4])}"
          f"{', ...' if len(plots) > 4 else ''})")
    print("\n== time per step ==")
    for name, (seconds, ran) in timings.items():
        print(f"{name:<28}{seconds:>8.1f} s{'' if ran else '  (skipped; its last run)'}")
    total = sum(s for s, ran in timings.values() if ran)
    print(f"{'this run':<28}{total:>8.1f} s")
    result = {"table": rows, "vlm": {k: vlm[k] for k in ("n", "accuracy", "macro_f1", "kappa", "unparseable")},
              "seconds": {k: v[0] for k, v in timings.items()}, "ran": [k for k, v in timings.items() if v[1]]}
    write_json(workdir / "results" / "demo_summary.json", result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eeg-vlm demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="demo_work", help="everything the demo writes goes here")
    p.add_argument("--quick", action="store_true", help="a toy size (3 short nights, 3 training steps) for CI")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cot", default="none", choices=("none", "stage", "measured"),
                   help="answers: the stage alone (default: the tiny model learns it in time) or a chain of thought")
    p.add_argument("--force", action="store_true", help="rerun every step even when its outputs are current")
    args = p.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    size = QUICK if args.quick else FULL
    steps = pipeline(size, args.seed, args.cot)
    env = subprocess_env(args.threads)
    keys: dict[str, str] = {}
    timings: dict[str, tuple[float, bool]] = {}
    print(f"EEG-VLM demo in {workdir} ({'quick' if args.quick else 'full'} size, {args.threads} threads)")
    for i, step in enumerate(steps, 1):
        key = stamp_key(step, workdir, keys)
        keys[step.name] = key
        stamp = workdir / STAMPS / f"{step.name}.json"
        if not args.force and is_current(step, workdir, key):
            seconds = json.loads(stamp.read_text()).get("seconds", 0.0)
            timings[step.name] = (seconds, False)
            print(f"[{i}/{len(steps)}] {step.name}: current, skipped", flush=True)
            continue
        print(f"\n[{i}/{len(steps)}] {step.name}", flush=True)
        if stamp.exists():
            stamp.unlink()
        seconds = run_step(step, workdir, env)
        write_json(stamp, {"key": key, "argv": step.argv, "seconds": round(seconds, 1)})
        timings[step.name] = (seconds, True)
        print(f"[{i}/{len(steps)}] {step.name}: done in {seconds:.1f} s", flush=True)
    summary(workdir, timings)
    return 0


if __name__ == "__main__":
    from eeg_vlm.cli import run

    run(main)
