"""The GPU benchmark: LLaVA-1.5-13B's width, few layers, through the project's own entry points; one table.

    python benchmarks/gpu.py                              # on a GPU machine: about 8 minutes
    python benchmarks/gpu.py --device cpu --tiny          # toy sizes, same code path (CI)

What it does, in order (each part skips, saying so, when the time budget ``--budget-s`` is spent):

1. Builds a random LLaVA-1.5 in the original layout (``config.json`` + safetensors + sentencepiece tokenizer +
   a CLIP tower folder) with LLaVA-1.5-13B's width: Llama hidden 5120, 40 heads, intermediate 13824, vocab
   32000, ``--layers`` (4) layers; CLIP ViT-L/14-336-shaped: hidden 1024, 24 layers, 16 heads, 336 px, 576
   patches. A layer then costs what one of the real model's 40 does; time scales with the layer count.
2. Trains it with the README's command (LoRA r128, bf16, gradient checkpointing, batch 16, ZeRO-3 under the
   ``deepspeed`` launcher when DeepSpeed is installed, else the plain Trainer) through
   ``llava/train/train_mem.py``, one process group per fusion mode, on records of the real size: two images per
   record (a 30-s epoch drawn as ``eeg-vlm prepare`` draws it, the second the placeholder) and the stage-wise
   chain-of-thought answer. Modes: ``add`` and ``token``. The training entry has no ``naive`` mode (placeholder
   through CLIP, as the paper's code); naive is timed beside add and token at the model level (one forward +
   backward + AdamW step of the same LoRA model on the same batch, Image2 passed to CLIP as a real image), so
   the three compare on equal terms. Reports step time, tokens/s, peak memory, MFU and the projected epoch time
   of the real 13B on Sleep-EDF-20-sized data (42k records). A run that outlives the budget is stopped with its
   whole process group (the launcher and the workers it started), so no worker is left holding the GPU.
3. Answers with ``llava/eval/model_vqa.py`` (its ``run``) in float16 and bfloat16, in both answer modes,
   ``generate`` (greedy decoding) and ``choices`` (the five stages scored by likelihood, ``llava.eval.choices``),
   at batch 1, 8 and 32: questions/s, peak memory, and whether the answers are identical across batch sizes
   (how many differ, where they do). Each model is loaded once (float16 through ``answering.load_model``, as
   ``model_vqa`` loads it on a GPU) and handed to ``run(..., loaded=...)``; only the answering is timed
   (``model_vqa.answer_work``: prompts, images, the model, the answers file), not the loading, the question
   checks or the checkpoint's fingerprint (hashing). The float16 model is freed before the bfloat16 one is
   loaded (checked: ``models_freed``). On random weights the model never writes ``Sleep stage:`` first, so
   ``choices`` takes its chain-of-thought path: greedy text up to ``--max-new-tokens`` (as ``generate``), then
   the five stages scored after it; a trained stage-only checkpoint skips the decoding.
4. Trains (one epoch) and extracts resnet18 and convnext_base with the project's ``vision_modules`` on the
   device (img/s), and times the bare models at batch 64 in float32 vs bf16 autocast, channels_last.

MFU (model FLOPs utilisation) follows LoRA's arithmetic. FLOPs per training step:
    2 * N_lm * T                 forward through the language model (LoRA's adapters included)
  + 2 * N_lm * T                 backward, activation gradients: the frozen weights need no weight gradient
  + 2 * N_lora * T               backward, weight gradients of LoRA's own parameters only
  + 6 * N_proj * T_proj          the projector, trained in full (forward, activation and weight gradients)
  + 12 * L * d * sum_i(s_i^2)    attention scores and values, forward and backward (no causal halving)
  + 2 * N_clip * T_clip          CLIP, frozen: forward only
N_lm = Llama parameters without the input embedding, LoRA's included (the LM head counts: it runs on every
token); N_lora = LoRA's parameters (r on every decoder linear); T = real (unpadded) tokens in the step's
sequences after the multimodal splice; N_proj, T_proj = the projector's parameters and the tokens it maps (CLIP
patches and features); L, d = layers and hidden size; s_i = length of sequence i; N_clip, T_clip = CLIP's
parameters and tokens. A full fine-tune would count 6 * N_lm * T; LoRA's is about 4 * N_lm * T. Gradient
checkpointing's recomputation (one more forward) is not counted: the convention for "model FLOPs", so MFU
compares across recomputation settings. MFU = FLOPs per step / step time / the device's dense bf16 peak (a
table by device name, or ``--peak-tflops``).
Projection to the real 13B: step time x FLOPs(40 layers) / FLOPs(L layers) (same MFU), steps per epoch =
42000 / (16 x GPUs), ideal scaling over GPUs; memory by the formula printed with it.

Peak memory: ``torch.cuda.max_memory_allocated`` (weights included) for each training run and each
(dtype, answer mode, batch) run, the counter reset before each; answering rows also give what the answering
added to the weights (KV cache, activations). On the CPU torch keeps no such counter: "n/a".

Packages: torch, transformers, peft, accelerate, timm, sentencepiece, safetensors, scipy, PIL, and DeepSpeed
(the project's install; without it training falls back to the plain Trainer and there are no ZeRO-3 figures);
edfio is never imported. To bring DeepSpeed to a machine without it: ``pip wheel --no-deps -w wheels
deepspeed==0.19.8`` where the registry is reachable, carry ``wheels/``, then ``pip install --no-deps
wheels/*.whl`` (its Python deps: hjson, ninja, py-cpuinfo, msgpack, pydantic, psutil, einops).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = {
    "13b": dict(hidden=5120, heads=40, intermediate=13824, vocab=32000, layers=4, clip_hidden=1024,
                clip_layers=24, clip_heads=16, clip_intermediate=4096, image_size=336, patch=14),
    "tiny": dict(hidden=64, heads=4, intermediate=128, vocab=1000, layers=2, clip_hidden=1024,
                 clip_layers=2, clip_heads=8, clip_intermediate=256, image_size=56, patch=14),
}
REAL_13B_LAYERS = 40
EPOCH_RECORDS = 42_000
# Dense bf16 tensor-core peak, TFLOPs (vendor datasheets), matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0),
                    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("A6000", 155.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("4090", 165.0)]


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------
def run_process_group(cmd: list[str], *, timeout: float, log: Path, grace_s: float = 10.0, **popen) -> int:
    """Run ``cmd`` in a session (and process group) of its own, stdout and stderr into ``log``; its exit status.

    On a timeout (``subprocess.TimeoutExpired``, re-raised) or any other interruption (Ctrl-C), the whole group
    is stopped: SIGTERM (the ``deepspeed`` launcher then stops its workers), ``grace_s`` seconds, then SIGKILL for
    whatever is left. Killing the launcher alone would leave its workers running, holding the GPU. Whatever of the
    group outlives a normal exit is killed too."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        try:
            return proc.wait(timeout=timeout)
        except BaseException:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
            raise
        finally:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # nothing of the group is left
        pass


def free_model(ref: weakref.ref) -> bool:
    """Collect garbage (and the GPU's cached blocks); whether the object behind ``ref`` (a model) is gone."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return ref() is None


def peak_memory_gib(device: str):
    """``torch.cuda.max_memory_allocated`` in GiB since the last reset; "n/a" on the CPU (no such counter)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else "n/a"


def versions() -> dict[str, str]:
    import importlib

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "timm", "deepspeed", "flash_attn"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # absent, or fails to import
            out[name] = "absent"
    return out


def device_info(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        return {"name": torch.cuda.get_device_name(0), "memory_gib": round(p.total_memory / 2**30, 1),
                "capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda}
    return {"name": platform.processor() or platform.machine(), "cpus": os.cpu_count()}


def peak_tflops(device: str, override: float | None) -> float | None:
    if override:
        return override
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(0)
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# --------------------------------------------------------------------------------------------------------
# 1. the model and the data
# --------------------------------------------------------------------------------------------------------
def build_model(out: Path, size: dict, device: str) -> Path:
    """A random LLaVA-1.5 of ``size`` in the original layout (as eeg_vlm.tiny builds the tiny one)."""
    import random
    import string

    import torch

    from eeg_vlm.tiny import LLAVA_V15_MM_KEYS, build_tiny_clip, tokenizer_corpus
    from llava.model.config import LlavaConfig
    from llava.model.llava_llama import LlavaLlamaForCausalLM
    from llava.tokenizer import load_tokenizer, train_sentencepiece

    out.mkdir(parents=True, exist_ok=True)
    texts = tokenizer_corpus()
    if size["vocab"] > 1000:  # enough distinct words for a real-sized vocabulary (generated ids must decode)
        rng = random.Random(0)
        texts += [" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
                           for _ in range(12)) for _ in range(40_000)]
    train_sentencepiece(texts, out, vocab_size=size["vocab"], seed=0, model_max_length=4096)
    tokenizer = load_tokenizer(out)
    build_tiny_clip(out / "clip", 0, size["image_size"], size["patch"], size["clip_layers"], size["clip_hidden"],
                    size["clip_intermediate"], size["clip_heads"])
    config = LlavaConfig(
        vocab_size=len(tokenizer), hidden_size=size["hidden"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["heads"], intermediate_size=size["intermediate"],
        max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        architectures=["LlavaLlamaForCausalLM"], mm_vision_tower="clip", mm_hidden_size=size["clip_hidden"],
        tokenizer_model_max_length=4096, tokenizer_padding_side="right", mm_hl_fusion="add",
        mm_hl_projector="shared", **LLAVA_V15_MM_KEYS)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # random init on the GPU: seconds, not minutes
            model = LlavaLlamaForCausalLM(config)
        for p in model.parameters():  # scaled like a trained model's: keeps bf16 activations finite
            if p.ndim == 2:
                p.data.normal_(0.0, 0.02)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def make_data(root: Path, n_records: int, n_questions: int, dim: int) -> dict:
    """Records and questions of the real shape: [Image1, Image2] (Image2 the placeholder), a 30-s epoch drawn as
    ``eeg-vlm prepare`` draws it, the stage-wise chain-of-thought answer; features [N, 1, dim]."""
    import numpy as np

    from eeg_core import formats
    from eeg_core.atomic import write_json, write_jsonl
    from eeg_core.layout import FEATURES_TRAIN_NAME
    from eeg_core.stages import STAGES
    from sleep_eeg.images.cot import QUESTIONS, build_answer
    from sleep_eeg.images.render import RenderConfig, render_epoch

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cfg, fs = RenderConfig(), 100.0
    t = np.arange(int(30 * fs)) / fs
    names = []
    for i in range(16):  # 16 distinct epochs, reused
        f = [1.0, 6.0, 10.0, 13.0][i % 4]
        x = 60 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) + rng.normal(0, 15, t.size)
        render_epoch([x], [fs], cfg).save(root / "images" / f"e{i}.png")
        names.append(f"e{i}.png")
    records, questions = [], []
    for i in range(n_records):
        stage, name = STAGES[i % len(STAGES)], names[i % len(names)]
        records.append(formats.make_train_record(f"r{i}", [name, name], QUESTIONS[i % len(QUESTIONS)],
                                                 build_answer(stage, "stage"), label=stage))
    for i in range(n_questions):
        stage, name = STAGES[i % len(STAGES)], names[i % len(names)]
        questions.append(formats.make_question(f"q{i}", [name, name], QUESTIONS[i % len(QUESTIONS)], stage))
    write_json(root / "eeg_ft.json", records)
    formats.save_features(root / FEATURES_TRAIN_NAME,
                          rng.standard_normal((n_records, 1, dim)).astype(np.float32))
    write_jsonl(root / "eeg_eval.jsonl", questions)
    formats.save_features(root / "eval_high_level_features.npy",
                          rng.standard_normal((n_questions, 1, dim)).astype(np.float32))
    return {"root": root, "records": root / "eeg_ft.json", "questions": root / "eeg_eval.jsonl",
            "images": root / "images"}


# --------------------------------------------------------------------------------------------------------
# 2. training through llava/train/train_mem.py (one process per mode), and the model-level naive step
# --------------------------------------------------------------------------------------------------------
def documented_train_argv(model: Path, data: dict, out: Path, fusion: str, batch: int, steps: int,
                          use_deepspeed: bool) -> list[str]:
    """The README's training command with its paths pointed here; ``--max_steps``, no saves, no wandb."""
    from eeg_vlm.commands import train_argv

    return train_argv(model=model, data_path=data["records"], image_folder=data["images"], output_dir=out,
                      deepspeed=REPO / "scripts" / "zero3.json" if use_deepspeed else None, report_to="none",
                      per_device_train_batch_size=batch, hl_fusion=fusion, max_steps=steps, save_strategy="no",
                      warmup_ratio=0)


def train_worker(argv: list[str]) -> None:
    """``gpu.py --worker train <result.json> <train argv>``: llava/train/train_mem.py with a timing callback.

    Per step: wall time (synchronised), tokens after the multimodal splice (real and padded), the sequence
    lengths (for attention FLOPs), the sequences and CLIP's images; at the end the peak memory (GPU)."""
    import torch
    from transformers import TrainerCallback

    import llava.train.trainer as trainer_mod
    from llava.model.multimodal import LlavaMetaForCausalLM

    result_path, train_argv = Path(argv[0]), argv[1:]
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    current = {"tokens": 0, "padded": 0, "sq": 0, "images": 0, "sequences": 0}
    splice = LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal

    def counting_splice(self, input_ids, position_ids, attention_mask, past_key_values, labels, images, *a, **kw):
        out = splice(self, input_ids, position_ids, attention_mask, past_key_values, labels, images, *a, **kw)
        mask, embeds = out[2], out[4]
        if self.training and mask is not None and embeds is not None:
            lengths = mask.sum(1)
            current["tokens"] += int(lengths.sum())
            current["padded"] += int(embeds.shape[0] * embeds.shape[1])
            current["sq"] += int((lengths.double() ** 2).sum())
            current["sequences"] += int(mask.shape[0])
            current["images"] += 0 if images is None else int(sum(1 for _ in images) if isinstance(images, list)
                                                              else images.shape[0])
        return out

    LlavaMetaForCausalLM.prepare_inputs_labels_for_multimodal = counting_splice
    steps: list[dict] = []

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync()
            current.update(tokens=0, padded=0, sq=0, images=0, sequences=0, t0=time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            sync()
            steps.append({**current, "seconds": time.perf_counter() - current["t0"]})

    original_init = trainer_mod.LLaVATrainer.__init__

    def init(self, *a, **kw):
        original_init(self, *a, **kw)
        self.add_callback(Timing())

    trainer_mod.LLaVATrainer.__init__ = init
    from llava.train.train_mem import main

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    main(train_argv)
    if int(os.environ.get("RANK", "0")) == 0:
        peak = {"peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30} if cuda else \
            {"peak_allocated_gib": "n/a"}
        result_path.write_text(json.dumps({"steps": steps, **peak}))


def run_training(mode: str, model: Path, data: dict, work: Path, args, use_deepspeed: bool, budget: Budget) -> dict:
    out = work / f"train_{mode}"
    result = work / f"train_{mode}.json"
    argv = documented_train_argv(model, data, out, mode, args.batch, args.warmup_steps + args.steps, use_deepspeed)
    worker = [str(Path(__file__).resolve()), "--worker", "train", "--", str(result), *argv]
    if use_deepspeed:
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port", str(free_port()),
               *worker]
    else:
        cmd = [sys.executable, *worker]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if not args.device.startswith("cuda"):
        env.update(CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    log = work / f"train_{mode}.log"
    t0 = time.perf_counter()
    try:
        code = run_process_group(cmd, timeout=max(30, budget.left()), log=log, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"training ({mode}) stopped after {e.timeout:.0f} s (time budget), its process group "
                           f"killed:\n{log.read_text(errors='replace')[-3000:]}") from None
    text = log.read_text(errors="replace")
    if code != 0 or not result.is_file():
        raise RuntimeError(f"training ({mode}) failed (exit {code}):\n{text[-3000:]}")
    r = json.loads(result.read_text())
    r["wall_s"] = time.perf_counter() - t0
    r["log_tail"] = "\n".join(line for line in text.splitlines() if "llava.train" in line)[-1500:]
    return r


def lm_params(hidden: int, intermediate: int, layers: int, vocab: int, lora_r: int) -> dict:
    """Llama parameter counts (no biases; RMSNorm weights), LoRA r on every decoder linear."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    lora_per_layer = lora_r * (4 * 2 * hidden + 3 * (hidden + intermediate))
    return {"layers": layers * per_layer, "head": vocab * hidden + hidden, "embed": vocab * hidden,
            "lora": layers * lora_per_layer}


def step_flops(size: dict, layers: int, tokens: float, sq: float, clip_tokens: float, proj_tokens: float,
               lora_r: int) -> dict:
    """FLOPs of one LoRA training step by term (the module docstring's formula) and their ``total``."""
    p = lm_params(size["hidden"], size["intermediate"], layers, size["vocab"], lora_r)
    n_lm = p["layers"] + p["head"] + p["lora"]
    h, d = size["clip_hidden"], size["hidden"]
    n_clip = size["clip_layers"] * (4 * h * h + 2 * h * size["clip_intermediate"])
    n_proj = h * d + d + d * d + d  # mlp2x_gelu: Linear(h, d), GELU, Linear(d, d)
    terms = {"lm_forward": 2 * n_lm * tokens, "lm_activation_grads": 2 * n_lm * tokens,
             "lora_weight_grads": 2 * p["lora"] * tokens, "projector": 6 * n_proj * proj_tokens,
             "attention": 12 * layers * d * sq, "clip_forward": 2 * n_clip * clip_tokens}
    return {**terms, "total": sum(terms.values())}


def summarise_training(mode: str, r: dict, size: dict, args, peak: float | None) -> dict:
    measured = r["steps"][args.warmup_steps:] or r["steps"]
    best = min(measured, key=lambda s: s["seconds"])
    seconds = sorted(s["seconds"] for s in measured)[len(measured) // 2]  # median
    patches = (size["image_size"] // size["patch"]) ** 2  # CLIP adds its class token; the projector maps patches
    mean = lambda key: sum(s[key] for s in measured) / len(measured)  # noqa: E731
    tokens, sq, images, sequences = mean("tokens"), mean("sq"), mean("images"), mean("sequences")
    counts = dict(tokens=tokens, sq=sq, clip_tokens=images * (patches + 1),
                  proj_tokens=images * patches + sequences, lora_r=args.lora_r)  # one feature per record
    terms = step_flops(size, size["layers"], **counts)
    flops = terms["total"]
    real_step = seconds * step_flops(size, REAL_13B_LAYERS, **counts)["total"] / flops
    out = {"mode": mode, "step_s": seconds, "best_step_s": best["seconds"], "tokens_per_step": tokens,
           "padded_tokens_per_step": sum(s["padded"] for s in measured) / len(measured),
           "tokens_per_s": tokens / seconds, "tflops_per_step": flops / 1e12,
           "mfu": (flops / seconds / (peak * 1e12)) if peak else None,
           "tflops_by_term": {k: v / 1e12 for k, v in terms.items() if k != "total"},
           "real13b_step_s": real_step,
           "epoch_h": {g: math.ceil(EPOCH_RECORDS / (args.batch * g)) * real_step / 3600 for g in (1, 4, 8)}}
    out.update({k: v for k, v in r.items() if k.startswith("peak_")})
    return out


def memory_projection(size: dict, measured_peak_gib: float | None, layers: int, batch: int, seq: float,
                      lora_r: int) -> dict:
    """ZeRO-3 per-GPU memory of the real 13B, GiB, by terms:
    bf16 weights / G + LoRA (bf16 weight + bf16 grad + fp32 master, Adam m, v = 16 B/param) / G
    + checkpointed layer inputs 40 x B x s x d x 2 B + the rest of the measured peak (logits, one layer's
    recomputed activations, CLIP, buffers: what the L-layer run used beyond its weights, LoRA state and
    L checkpointed layer inputs)."""
    gib = 2**30
    real = lm_params(size["hidden"], size["intermediate"], REAL_13B_LAYERS, size["vocab"], lora_r)
    small = lm_params(size["hidden"], size["intermediate"], layers, size["vocab"], lora_r)
    h = size["clip_hidden"]
    clip = size["clip_layers"] * (4 * h * h + 2 * h * size["clip_intermediate"])
    weights = lambda p: (p["layers"] + p["head"] + p["embed"] + clip) * 2  # noqa: E731
    lora = lambda p: p["lora"] * 16  # noqa: E731
    ckpt = lambda n: n * batch * seq * size["hidden"] * 2  # noqa: E731
    rest = None
    if measured_peak_gib is not None:
        rest = max(0.0, measured_peak_gib * gib - weights(small) - lora(small) - ckpt(layers))
    out = {}
    for g in (1, 4, 8):
        fixed = weights(real) / g + lora(real) / g + ckpt(REAL_13B_LAYERS)
        out[g] = None if rest is None else (fixed + rest) / gib
    return out


def model_level_steps(model_dir: Path, data: dict, args, budget: Budget, freed: list[dict]) -> dict:
    """naive vs add vs token: one forward + backward + AdamW step of the same LoRA model on the same batch
    (as benchmarks/train_step.py, on the device, in bf16 with gradient checkpointing on a GPU)."""
    import torch
    from train_step import (
        lora_training_model,  # benchmarks/ is on sys.path: this script's own folder
    )

    from eeg_core import formats
    from eeg_core.layout import FEATURES_TRAIN_NAME
    from llava.model.builder import load_pretrained_model
    from llava.train.dataset import DataCollatorForSupervisedDataset, SupervisedDataset

    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer, model, processor, _ = load_pretrained_model(str(model_dir), None, Path(model_dir).name,
                                                           device=args.device, torch_dtype=dtype)
    model, optimizer = lora_training_model(model, args.lora_r, gradient_checkpointing=True)
    base = model.get_base_model()
    all_records = formats.read_records(data["records"])  # the features file is bound to the whole records file
    feats = formats.load_features(data["root"] / FEATURES_TRAIN_NAME, all_records,
                                  dim=base.config.mm_hidden_size)[: args.batch]
    records = all_records[: args.batch]
    ds = SupervisedDataset(records, tokenizer, "v1", str(data["images"]), processor, "pad", feats)
    batch = DataCollatorForSupervisedDataset(tokenizer)([ds[i] for i in range(len(ds))])
    def to_device(v):  # high_level_features is a list of [1, D] tensors (None for records without one)
        if torch.is_tensor(v):
            return v.to(args.device)
        return [to_device(x) for x in v] if isinstance(v, (list, tuple)) else v

    batch = {k: to_device(v) for k, v in batch.items()}
    batch["images"] = batch["images"].to(dtype)
    naive = {k: v for k, v in batch.items() if k != "high_level_features"}
    naive["images"] = batch["images"].repeat_interleave(2, dim=0)  # Image2 through CLIP as a real image
    settings = {"naive": ("add", naive), "add": ("add", batch), "token": ("token", batch)}
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step(inputs) -> float:
        sync()
        t0 = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in settings}
    for rep in range(1 + args.model_level_repeats):  # round-robin; the first round warms up
        for name, (fusion, inputs) in settings.items():
            if budget.left() < 0:
                break
            base.config.mm_hl_fusion = fusion
            dt = step(inputs)
            if rep:
                times[name].append(dt)
    ref = weakref.ref(base)
    model = base = optimizer = None  # frees the memory (the closure above sees None)
    freed.append({"model": "model-level LoRA step", "freed": free_model(ref)})
    return {name: (min(t) if t else None) for name, t in times.items()}


# --------------------------------------------------------------------------------------------------------
# 3. model_vqa in float16 / bfloat16, generate and choices, at batch 1, 8, 32
# --------------------------------------------------------------------------------------------------------
ANSWER_MODES = ("generate", "choices")


def load_answering_model(model_dir: Path, device: str, dtype_name: str):
    """``(tokenizer, model, image_processor)``: ``answering.load_model`` where it gives ``dtype_name`` (float16 on
    a GPU: what ``model_vqa`` runs), else LLaVA's loader with load_model's arguments and that dtype."""
    import torch

    from llava.eval import answering
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    if dtype_name == ("float16" if device.startswith("cuda") else "float32"):
        return answering.load_model(str(model_dir), None, device)
    tokenizer, model, processor, _ = load_pretrained_model(
        str(model_dir), None, get_model_name_from_path(str(model_dir)), device_map=None, device=device,
        torch_dtype=getattr(torch, dtype_name))
    return tokenizer, model, processor


class AnsweringTimer:
    """Times ``model_vqa.answer_work`` (the batch loop: prompts, images, the model, the answers file) inside
    ``model_vqa.run``; run's checks of the questions and the checkpoint's fingerprint stay outside."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.seconds: list[float] = []

    def __enter__(self):
        from llava.eval import model_vqa

        self.module, self.original = model_vqa, model_vqa.answer_work

        def timed(*a, **kw):
            self.sync()
            t0 = time.perf_counter()
            try:
                return self.original(*a, **kw)
            finally:
                self.sync()
                self.seconds.append(time.perf_counter() - t0)

        model_vqa.answer_work = timed
        return self

    def __exit__(self, *exc):
        self.module.answer_work = self.original


def vqa_rows(loaded, dtype_name: str, model_dir: Path, data: dict, work: Path, args, budget: Budget) -> list[dict]:
    """One loaded model's rows: each answer mode at each batch size (the first run of each mode warms up)."""
    import torch

    from eeg_core import formats
    from llava.eval import model_vqa

    tokenizer = loaded[0]
    cuda = args.device.startswith("cuda")
    common = dict(model_path=str(model_dir), question_file=str(data["questions"]), image_folder=str(data["images"]),
                  device=args.device, loaded=loaded, max_new_tokens=args.max_new_tokens, progress=False)
    rows = []
    for mode in ANSWER_MODES:
        if budget.left() < 15:
            rows.append({"dtype": dtype_name, "mode": mode, "skipped": "time budget"})
            continue
        for old in work.glob(f"vqa_{dtype_name}_{mode}_*.jsonl"):  # model_vqa resumes: start from none answered
            old.unlink()
        # first kernels, allocator, the fingerprint's hashes (remembered for large files): not timed
        model_vqa.run(answers_file=str(work / f"vqa_{dtype_name}_{mode}_warmup.jsonl"),
                      batch_size=max(args.vqa_batches), answer_mode=mode, **common)
        answers = {}
        for bs in args.vqa_batches:
            path = work / f"vqa_{dtype_name}_{mode}_b{bs}.jsonl"
            before = torch.cuda.memory_allocated() / 2**30 if cuda else None
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with AnsweringTimer(args.device) as timer:
                result = model_vqa.run(answers_file=str(path), batch_size=bs, answer_mode=mode, **common)
            seconds = sum(timer.seconds)
            peak = peak_memory_gib(args.device)
            got = {r["question_id"]: r["text"] for r in formats.read_jsonl(path)}
            answers[bs] = got
            n_tokens = sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in got.values())
            ref = answers[args.vqa_batches[0]]
            differ = [q for q in ref if got.get(q) != ref[q]]
            rows.append({"dtype": dtype_name, "mode": mode, "batch": bs, "questions": len(got), "seconds": seconds,
                         "run_s": result["seconds"], "questions_per_s": len(got) / seconds,
                         "new_tokens_per_s": n_tokens / seconds, "peak_allocated_gib": peak,
                         "answering_gib": (peak - before) if cuda else "n/a",
                         "differ_from_batch1": len(differ),
                         "first_divergence": first_divergence(ref, got, differ[:1], tokenizer)})
    return rows


def run_vqa(model_dir: Path, data: dict, work: Path, args, budget: Budget, freed: list[dict]) -> list[dict]:
    """float16, then bfloat16: each model loaded once, answered with, and freed (checked, into ``freed``) before
    the next is loaded."""
    rows = []
    for dtype_name in ("float16", "bfloat16"):
        if budget.left() < 30:
            rows.append({"dtype": dtype_name, "skipped": "time budget"})
            continue
        loaded = load_answering_model(model_dir, args.device, dtype_name)
        ref = weakref.ref(loaded[1])
        try:
            rows += vqa_rows(loaded, dtype_name, model_dir, data, work, args, budget)
        finally:
            del loaded
            freed.append({"model": f"model_vqa {dtype_name}", "freed": free_model(ref)})
    return rows


def first_divergence(ref: dict, got: dict, ids: list, tokenizer) -> str | None:
    """Where the first differing answer leaves the batch-1 answer (token index), to tell near-tie flips apart."""
    if not ids:
        return None
    a = tokenizer(ref[ids[0]], add_special_tokens=False).input_ids
    b = tokenizer(got[ids[0]], add_special_tokens=False).input_ids
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{ids[0]} at token {k} of {len(a)}"


# --------------------------------------------------------------------------------------------------------
# 4. the specialized vision modules
# --------------------------------------------------------------------------------------------------------
def bare_model_rates(arch: str, args) -> tuple[list[int], dict]:
    """The bare module at batch ``args.vision_batch``, float32 vs bf16 autocast, channels_last, at the module's own
    input size (or ``args.vision_size``): its input size, and training and extraction images/s."""
    import torch

    from vision_modules import create_vision_module

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    kw = {"image_size": args.vision_size} if args.vision_size else {}
    model = create_vision_module(arch, **kw).to(args.device, memory_format=torch.channels_last)
    x = torch.randn(args.vision_batch, *model.input_size, device=args.device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (args.vision_batch,), device=args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bare = {}
    for amp in (False, True):
        def fwd_bwd():
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x).logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def fwd():
            with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                model(x)

        for name, fn in (("train", fwd_bwd), ("extract", fwd)):
            fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(args.vision_repeats):
                fn()
            sync()
            bare[f"{name}_{'bf16' if amp else 'fp32'}_img_s"] = args.vision_batch * args.vision_repeats / (
                time.perf_counter() - t0)
    return list(model.input_size), bare


def run_vision(data: dict, work: Path, args, budget: Budget) -> list[dict]:
    import torch

    from eeg_core import formats
    from eeg_core.atomic import write_json
    from vision_modules.extract import extract_features
    from vision_modules.train import train_vision_module

    records = formats.read_records(data["records"])[: args.vision_images]
    path = work / "vision_records.json"
    write_json(path, records)
    rows = []
    for arch in args.archs:
        if budget.left() < 20:
            rows.append({"arch": arch, "skipped": "time budget"})
            continue
        out = work / f"vision_{arch}"
        t0 = time.perf_counter()
        train_vision_module(arch, path, data["images"], out, epochs=1, batch_size=args.vision_batch,
                            device=args.device, val_fraction=0.0, progress=False, image_size=args.vision_size)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        extract_features(out, path, data["images"], batch_size=args.vision_batch, device=args.device, progress=False)
        extract_s = time.perf_counter() - t0
        input_size, bare = bare_model_rates(arch, args)
        rows.append({"arch": arch, "images": len(records), "input": input_size,
                     "train_entry_img_s": len(records) / train_s, "extract_entry_img_s": len(records) / extract_s,
                     **bare})
        if args.device.startswith("cuda"):  # the bare model is gone: its memory back before the next module
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------------
def fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def gib(x) -> str:
    """A memory figure in GiB, or what stands in for it ("n/a" on the CPU)."""
    return format(x, ".1f") if isinstance(x, (int, float)) else str(x or "-")


def print_training(rep: dict) -> None:
    """The training table, the model-level step's and the projected ZeRO-3 memory of the real 13B."""
    print("| training (train_mem.py) | step s | tokens/step | tokens/s | TFLOP/step | MFU | peak mem GiB "
          "| real 13B step s | epoch h, 1 / 4 / 8 GPUs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in rep["training"]:
        if "error" in t or "skipped" in t:
            print(f"| {t['mode']} | {t.get('error') or t.get('skipped')} |||||||")
            continue
        mem = t.get("peak_allocated_gib")
        print(f"| {t['mode']} | {t['step_s']:.3f} | {t['tokens_per_step']:.0f} | {t['tokens_per_s']:.0f} | "
              f"{t['tflops_per_step']:.2f} | {fmt(t['mfu'], '.1%')} | {gib(mem)} | {t['real13b_step_s']:.2f} | "
              + " / ".join(f"{h:.1f}" for h in t["epoch_h"].values()) + " |")
    ml = rep.get("model_level") or {}
    if ml:
        print()
        print("| model-level step (same batch) | naive | add | token | add / naive | token / naive |")
        print("|---|---|---|---|---|---|")
        n, a, k = ml.get("naive"), ml.get("add"), ml.get("token")
        ratio = lambda x: fmt(x / n if (x and n) else None)  # noqa: E731
        print(f"| seconds | {fmt(n, '.3f')} | {fmt(a, '.3f')} | {fmt(k, '.3f')} | {ratio(a)} | {ratio(k)} |")
    mp = rep.get("memory_projection") or {}
    if mp:
        print()
        print("ZeRO-3 per-GPU memory of the real 13B (projected, GiB; see memory_projection): " +
              ", ".join(f"{g} GPU{'s' if g > 1 else ''}: {fmt(v, '.0f')}" for g, v in mp.items()))


def print_vqa(rep: dict) -> None:
    """The answering table, and whether each model was freed before the next was built."""
    print("| model_vqa (answering only) | batch | questions/s | new tokens/s | peak mem GiB | answering GiB "
          "| answers differing from batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for v in rep["vqa"]:
        name = f"{v['dtype']} {v.get('mode', '')}".strip()
        if "skipped" in v or "error" in v:
            print(f"| {name} | {v.get('skipped') or v.get('error')} ||||||")
            continue
        where = f" ({v['first_divergence']})" if v["first_divergence"] else ""
        print(f"| {name} | {v['batch']} | {v['questions_per_s']:.2f} | {v['new_tokens_per_s']:.1f} | "
              f"{gib(v['peak_allocated_gib'])} | {gib(v['answering_gib'])} | "
              f"{v['differ_from_batch1']} of {v['questions']}{where} |")
    if rep.get("models_freed"):
        print()
        print("models freed before the next was built: " +
              ", ".join(f"{m['model']}: {'yes' if m['freed'] else 'NO'}" for m in rep["models_freed"]))


def print_vision(rep: dict) -> None:
    print("| vision module | train entry img/s | extract entry img/s | bare train fp32 / bf16 img/s "
          "| bare extract fp32 / bf16 img/s |")
    print("|---|---|---|---|---|")
    for v in rep["vision"]:
        if "skipped" in v or "error" in v:
            print(f"| {v['arch']} | {v.get('skipped') or v.get('error')} ||||")
            continue
        print(f"| {v['arch']} {v['input'][1]}x{v['input'][2]} | {v['train_entry_img_s']:.0f} | "
              f"{v['extract_entry_img_s']:.0f} | {v['train_fp32_img_s']:.0f} / {v['train_bf16_img_s']:.0f} | "
              f"{v['extract_fp32_img_s']:.0f} / {v['extract_bf16_img_s']:.0f} |")


def print_report(rep: dict) -> None:
    print()
    print(f"# GPU benchmark: {rep['device']['name']} ({rep['args']['device']}), size {rep['size_name']}, "
          f"{rep['size']['layers']} Llama layers, DeepSpeed ZeRO-3: {rep['deepspeed']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()))
    print(f"peak bf16 TFLOPs used for MFU: {fmt(rep['peak_tflops'], '.0f')}")
    print()
    print_training(rep)
    print()
    print_vqa(rep)
    print()
    print_vision(rep)
    print()
    print(f"total {rep['total_s']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in rep.get("part_s", {}).items())
          + ")")


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="toy sizes (the CPU smoke test): same code path")
    p.add_argument("--layers", type=int, default=None, help="Llama layers (default 4; tiny 2)")
    p.add_argument("--deepspeed", choices=("auto", "on", "off"), default="auto",
                   help="train under the deepspeed launcher with ZeRO-3 (auto: when DeepSpeed is installed; "
                   "on the CPU with its CPU accelerator)")
    p.add_argument("--budget-s", type=float, default=480.0, help="parts that do not fit are skipped")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--parts", default="train,model,vqa,vision", help="comma list of train,model,vqa,vision")
    return p.parse_args(argv)


def size_settings(a: argparse.Namespace) -> tuple[dict, int]:
    """The run's settings for its size (``--tiny`` or the 13B's width), set on ``a``; returns the model size and
    the number of questions."""
    tiny = a.tiny
    size = dict(SIZES["tiny" if tiny else "13b"])
    size["layers"] = a.layers or size["layers"]
    a.batch = 4 if tiny else 16
    a.lora_r = 128
    a.warmup_steps, a.steps = (1, 2) if tiny else (2, 5)
    a.model_level_repeats = 2 if tiny else 3
    a.vqa_batches = [1, 8] if tiny else [1, 8, 32]  # tiny: 8 questions, one at a time and all at once
    a.max_new_tokens = 6 if tiny else 48
    a.vision_images = 16 if tiny else 512
    a.vision_batch = 8 if tiny else 64
    a.vision_repeats = 1 if tiny else 10
    a.vision_size = (32, 96) if tiny else None  # None: the modules' own input size
    a.archs = ["resnet18"] if tiny else ["resnet18", "convnext_base"]  # same code path; convnext is slow on a CPU
    return size, 8 if tiny else 32


def run_training_part(rep: dict, model_dir: Path, data: dict, work: Path, a, use_ds: bool, budget: Budget) -> None:
    """Part 2: each fusion mode through train_mem.py (an error is reported in its row), then the projected
    memory of the real 13B from the first that trained."""
    size = rep["size"]
    for mode in ("add", "token"):
        if budget.left() < 60:
            rep["training"].append({"mode": mode, "skipped": "time budget"})
            continue
        try:
            r = run_training(mode, model_dir, data, work, a, use_ds, budget)
            rep["training"].append(summarise_training(mode, r, size, a, rep["peak_tflops"]))
        except Exception as e:  # noqa: BLE001 - reported in the table, the other parts still run
            rep["training"].append({"mode": mode, "error": str(e).splitlines()[0][:200],
                                    "detail": str(e)[-3000:]})
        print(f"trained {mode}: {json.dumps({k: v for k, v in rep['training'][-1].items() if k != 'detail'})}",
              flush=True)
    ok = [t for t in rep["training"] if "step_s" in t]
    if ok:
        t = ok[0]
        mem = t.get("peak_allocated_gib") if a.device.startswith("cuda") else None
        rep["memory_projection"] = memory_projection(size, mem, size["layers"], a.batch,
                                                     t["tokens_per_step"] / a.batch, a.lora_r)


def run_parts(rep: dict, work: Path, a, n_questions: int, use_ds: bool, budget: Budget) -> None:
    """Build the model and the data, then each part asked for in ``--parts``, timed into ``rep["part_s"]``."""
    parts = set(a.parts.split(","))
    size = rep["size"]
    t0 = time.perf_counter()
    model_dir = build_model(work / "model", size, a.device)
    rep["part_s"] = {"build": time.perf_counter() - t0}
    data = make_data(work / "data", max(a.batch * (a.warmup_steps + a.steps), a.vision_images), n_questions,
                     size["clip_hidden"])
    print(f"model built in {rep['part_s']['build']:.0f} s: {model_dir}", flush=True)
    t0 = time.perf_counter()
    if "train" in parts:
        run_training_part(rep, model_dir, data, work, a, use_ds, budget)
    rep["part_s"]["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "model" in parts and budget.left() > 30:
        rep["model_level"] = model_level_steps(model_dir, data, a, budget, rep["models_freed"])
    rep["part_s"]["model_level"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "vqa" in parts:
        rep["vqa"] = run_vqa(model_dir, data, work, a, budget, rep["models_freed"])
    rep["part_s"]["vqa"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "vision" in parts:
        rep["vision"] = run_vision(data, work, a, budget)
    rep["part_s"]["vision"] = time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if not a.startswith("--local_rank")]  # added by the deepspeed launcher
    if argv[:2] == ["--worker", "train"]:
        rest = argv[2:]
        train_worker(rest[1:] if rest[:1] == ["--"] else rest)
        return 0

    a = parse_args(argv)
    size, n_questions = size_settings(a)

    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no GPU here (torch.cuda.is_available() is False); for the CPU smoke run: "
              "python benchmarks/gpu.py --device cpu --tiny", file=sys.stderr)
        return 2
    budget = Budget(a.budget_s)
    started = time.perf_counter()
    has_ds = versions()["deepspeed"] != "absent"
    use_ds = a.deepspeed == "on" or (a.deepspeed == "auto" and has_ds)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    rep: dict = {"args": {k: v for k, v in vars(a).items() if k != "archs"}, "size_name": "tiny" if a.tiny else "13b",
                 "size": size, "versions": versions(), "device": device_info(a.device),
                 "deepspeed": "yes" if use_ds else f"no ({'not installed' if not has_ds else 'off'})",
                 "peak_tflops": peak_tflops(a.device, a.peak_tflops), "training": [], "vqa": [], "vision": [],
                 "models_freed": []}
    try:
        run_parts(rep, work, a, n_questions, use_ds, budget)
    finally:
        rep["total_s"] = time.perf_counter() - started
        if a.json:
            Path(a.json).write_text(json.dumps(rep, indent=1, default=str))
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print_report(rep)
    return 0 if all("error" not in t for t in rep["training"]) else 1


if __name__ == "__main__":
    sys.exit(main())
