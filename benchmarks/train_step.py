"""Time one training step (forward + backward + AdamW step) of LoRA fine-tuning, three ways, same model and records:

- ``naive``: as the paper's released code, the placeholder Image2 is run through CLIP too (here: passed as a real
  image, so CLIP sees 2 images per record; each slot takes its own CLIP output);
- ``add``: CLIP once per record; the Image2 slot reuses Image1's CLIP output + P(h) (our default);
- ``token``: CLIP once; the Image2 slot is the single token P(h).

    python benchmarks/train_step.py [--model DIR] [--batch 16] [--repeats 5] [--image-size 56 --clip-layers 2]

Without ``--model`` a tiny random LLaVA is built in a temporary folder (``eeg_vlm.tiny``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eeg_core import formats
from eeg_core.answer import stage_line
from eeg_core.stages import STAGES
from llava.model.builder import load_pretrained_model
from llava.train.dataset import DataCollatorForSupervisedDataset, SupervisedDataset
from llava.train.train import lm_linear_names


def make_records(root: Path, n: int, dim: int) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = f"e{i}.png"
        Image.fromarray(rng.integers(0, 255, (224, 448, 3), dtype=np.uint8)).save(root / "images" / name)
        stage = STAGES[i % len(STAGES)]
        records.append(formats.make_train_record(f"r{i}", [name, name], "What is the sleep stage of this EEG epoch?",
                                                 stage_line(stage)))
    return records, rng.standard_normal((n, 1, dim)).astype(np.float32)


def lora_training_model(model, r: int, gradient_checkpointing: bool = False):
    """The training setup both step benchmarks time: CLIP frozen, LoRA (rank ``r``, alpha ``2 r``) on the language
    model's linear layers, the projector trained; returns the PEFT model in train mode and its AdamW."""
    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    model.get_model().get_vision_tower().requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=lm_linear_names(model),
                                             task_type="CAUSAL_LM"))
    model.get_base_model().get_model().mm_projector.requires_grad_(True)
    model.train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="base LLaVA checkpoint folder (default: build a tiny one)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=56, help="tiny CLIP image size (without --model)")
    ap.add_argument("--clip-layers", type=int, default=2, help="tiny CLIP depth (without --model)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="train_step_"))
    model_dir = args.model
    if model_dir is None:
        from eeg_vlm.tiny import TinyLlavaConfig, build_tiny_llava

        model_dir = build_tiny_llava(tmp / "tiny", seed=0,
                                     config=TinyLlavaConfig(image_size=args.image_size, clip_layers=args.clip_layers))

    tokenizer, model, processor, _ = load_pretrained_model(str(model_dir), None, "tiny", device="cpu",
                                                           torch_dtype=torch.float32)
    model, optimizer = lora_training_model(model, args.lora_r)
    base = model.get_base_model()

    records, feats = make_records(tmp / "data", args.batch, base.config.mm_hidden_size)
    ds = SupervisedDataset(records, tokenizer, "v1", str(tmp / "data" / "images"), processor, "pad", feats)
    batch = DataCollatorForSupervisedDataset(tokenizer)([ds[i] for i in range(len(ds))])
    naive = {k: v for k, v in batch.items() if k != "high_level_features"}
    naive["images"] = batch["images"].repeat_interleave(2, dim=0)  # Image2 through CLIP as a real image
    settings = {"naive": ("add", naive), "add": ("add", batch), "token": ("token", batch)}

    def step(inputs) -> None:
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tower = base.get_model().get_vision_tower()
    print(f"model {model_dir}: hidden {base.config.hidden_size}, layers {base.config.num_hidden_layers}, "
          f"CLIP {tower.num_patches} patches, LoRA r{args.lora_r}, batch {args.batch}, "
          f"threads {torch.get_num_threads()}")
    runs: dict[str, list[float]] = {name: [] for name in settings}
    for name, (fusion, inputs) in settings.items():  # warm-up
        base.config.mm_hl_fusion = fusion
        step(inputs)
    for _ in range(args.repeats):  # round-robin, so a busy machine slows every setting alike
        for name, (fusion, inputs) in settings.items():
            base.config.mm_hl_fusion = fusion
            t0 = time.perf_counter()
            step(inputs)
            runs[name].append(time.perf_counter() - t0)
    times = {name: min(r) for name, r in runs.items()}
    for name, r in runs.items():
        print(f"{name:6s} {min(r) * 1000:8.1f} ms/step best, {statistics.median(r) * 1000:8.1f} median "
              f"of {args.repeats}")
    print("ratios of the best times:")
    print(f"naive / add   = {times['naive'] / times['add']:.2f}x")
    print(f"naive / token = {times['naive'] / times['token']:.2f}x")
    print(f"add / token   = {times['add'] / times['token']:.2f}x")


if __name__ == "__main__":
    main()
