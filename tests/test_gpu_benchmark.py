"""benchmarks/gpu.py cannot rot: its toy-size run goes through every part on the CPU with the project's install
(DeepSpeed included: training runs under the deepspeed launcher with ZeRO-3, as on a GPU); its helpers do what
the GPU run relies on (the process group of a run that times out is stopped, the FLOPs follow LoRA)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import load_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    """benchmarks/gpu.py as a module, for its helpers."""
    return load_benchmark("gpu")


def test_real_13b_parameter_count_behind_the_projection(gpu):
    p = gpu.lm_params(5120, 13824, 40, 32000, lora_r=128)
    assert abs(p["layers"] + p["head"] + p["embed"] - 13.0e9) < 0.05e9  # LLaMA-13B / Vicuna-13B: 13.0 B
    assert abs(p["lora"] - 500.7e6) < 1e6  # LoRA r128 on every decoder linear of the 13B


def test_flops_count_weight_gradients_for_lora_only(gpu):
    """Forward 2NT + activation gradients 2NT + LoRA's weight gradients 2 N_lora T: well under a full
    fine-tune's 6NT; the projector, attention and CLIP terms come on top."""
    size = gpu.SIZES["13b"]
    p = gpu.lm_params(size["hidden"], size["intermediate"], 40, size["vocab"], lora_r=128)
    n_lm = p["layers"] + p["head"] + p["lora"]
    lm_only = gpu.step_flops(size, 40, tokens=1000, sq=0, clip_tokens=0, proj_tokens=0, lora_r=128)
    assert lm_only["total"] == 4 * n_lm * 1000 + 2 * p["lora"] * 1000
    assert lm_only["total"] < 0.7 * 6 * n_lm * 1000
    full = gpu.step_flops(size, 40, tokens=1000, sq=1000**2, clip_tokens=577, proj_tokens=577, lora_r=128)
    assert full["attention"] == 12 * 40 * 5120 * 1000**2 and full["clip_forward"] > 0 and full["projector"] > 0
    assert full["total"] == sum(v for k, v in full.items() if k != "total")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_timeout_stops_the_whole_process_group(gpu, tmp_path):
    """As the deepspeed launcher does, the child starts a worker of its own; on the timeout both are stopped
    (killing the launcher alone would leave the worker holding the GPU)."""
    pids = tmp_path / "pids"
    script = f"sleep 600 & echo $$ $! > {pids}; wait"
    with pytest.raises(subprocess.TimeoutExpired):
        gpu.run_process_group(["bash", "-c", script], timeout=3, log=tmp_path / "log", grace_s=2)
    launcher, worker = map(int, pids.read_text().split())
    deadline = time.monotonic() + 30  # the kernel finishes the SIGKILLed worker's exit asynchronously
    while (_alive(launcher) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(launcher) and not _alive(worker)


def test_a_normal_exit_returns_its_status_and_leaves_nothing_behind(gpu, tmp_path):
    pids = tmp_path / "pids"
    script = f"(trap '' TERM; sleep 600) & echo $! > {pids}; echo done; exit 3"
    assert gpu.run_process_group(["bash", "-c", script], timeout=60, log=tmp_path / "log") == 3
    assert (tmp_path / "log").read_text().strip() == "done"
    straggler = int(pids.read_text())
    deadline = time.monotonic() + 30
    while _alive(straggler) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(straggler)


def test_gpu_benchmark_runs_at_toy_size_on_the_cpu(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--tiny", "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rep = json.loads(out.read_text())
    if importlib.util.find_spec("deepspeed") is not None:  # the project's install: trains as on a GPU
        assert rep["deepspeed"] == "yes" and rep["versions"]["deepspeed"] != "absent"

    train = {t["mode"]: t for t in rep["training"]}
    assert sorted(train) == ["add", "token"] and all("error" not in t for t in train.values()), train
    for t in train.values():
        assert t["step_s"] > 0 and t["tokens_per_s"] > 0 and t["tflops_per_step"] > 0
        assert t["mfu"] is None and t["peak_allocated_gib"] == "n/a"  # no device peak, no allocator counter
        assert set(t["tflops_by_term"]) == {"lm_forward", "lm_activation_grads", "lora_weight_grads", "projector",
                                            "attention", "clip_forward"}
        assert set(t["epoch_h"]) == {"1", "4", "8"}
    # token fills the placeholder with one token instead of CLIP's patches: fewer tokens per step
    patches = (56 // 14) ** 2
    assert train["add"]["tokens_per_step"] - train["token"]["tokens_per_step"] == 4 * (patches - 1)
    assert set(rep["model_level"]) == {"naive", "add", "token"} and all(rep["model_level"].values())

    rows = [(v["dtype"], v["mode"], v["batch"]) for v in rep["vqa"]]
    assert rows == [(d, m, b) for d in ("float16", "bfloat16") for m in ("generate", "choices") for b in (1, 8)]
    for v in rep["vqa"]:
        assert v["questions"] == 8 and v["questions_per_s"] > 0 and v["seconds"] <= v["run_s"]
        assert v["peak_allocated_gib"] == "n/a" and v["answering_gib"] == "n/a"
    # every model freed before the next was built: the model-level one, then float16, then bfloat16
    assert [m["model"] for m in rep["models_freed"]] == ["model-level LoRA step", "model_vqa float16",
                                                       "model_vqa bfloat16"]
    assert all(m["freed"] for m in rep["models_freed"])
    assert [v["arch"] for v in rep["vision"]] == ["resnet18"] and rep["vision"][0]["extract_entry_img_s"] > 0
    for header in ("| training (train_mem.py) |", "| model-level step", "| model_vqa (answering only) |",
                   "| vision module |"):
        assert header in proc.stdout
