"""benchmarks/gpu.py cannot rot: its toy-size run goes through every part on the CPU, without DeepSpeed or edfio
(the GPU machine has neither unless they are brought as wheels)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_real_13b_parameter_count_behind_the_projection():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu

    p = gpu.lm_params(5120, 13824, 40, 32000, lora_r=128)
    assert abs(p["layers"] + p["head"] + p["embed"] - 13.0e9) < 0.05e9  # LLaMA-13B / Vicuna-13B: 13.0 B
    assert abs(p["lora"] - 500.7e6) < 1e6  # LoRA r128 on every decoder linear of the 13B


def test_gpu_benchmark_runs_at_toy_size_on_the_cpu(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--tiny", "--without", "deepspeed,edfio",
           "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rep = json.loads(out.read_text())
    assert rep["versions"]["deepspeed"] == "absent" and rep["deepspeed"].startswith("no")

    train = {t["mode"]: t for t in rep["training"]}
    assert sorted(train) == ["add", "token"] and all("error" not in t for t in train.values()), train
    for t in train.values():
        assert t["step_s"] > 0 and t["tokens_per_s"] > 0 and t["tflops_per_step"] > 0
        assert set(t["epoch_h"]) == {"1", "4", "8"}
    # token fills the placeholder with one token instead of CLIP's patches: fewer tokens per step
    patches = (56 // 14) ** 2
    assert train["add"]["tokens_per_step"] - train["token"]["tokens_per_step"] == 4 * (patches - 1)
    assert set(rep["model_level"]) == {"naive", "add", "token"} and all(rep["model_level"].values())

    vqa = [(v["dtype"], v["batch"]) for v in rep["vqa"]]
    assert vqa == [(d, b) for d in ("float16", "bfloat16") for b in (1, 8, 32)]
    assert all(v["questions"] == 8 and v["questions_per_s"] > 0 and v["differ_from_batch1"] >= 0 for v in rep["vqa"])
    assert [v["arch"] for v in rep["vision"]] == ["resnet18"] and rep["vision"][0]["extract_entry_img_s"] > 0
    for header in ("| training (train_mem.py) |", "| model-level step", "| model_vqa |", "| vision module |"):
        assert header in proc.stdout
