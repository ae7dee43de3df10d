"""Every test runs offline, headless and on the CPU, whatever the caller's environment says."""
import os
from pathlib import Path

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "MPLBACKEND": "Agg",
    "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
}.items():
    os.environ[_key] = _value

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings beside the project; tests that need them skip when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    """One tiny random LLaVA-1.5 checkpoint (original layout) shared by the whole session."""
    from llava.model.tiny import build_tiny_llava

    out = tmp_path_factory.mktemp("tiny_llava")
    build_tiny_llava(out, seed=0)
    return out


@pytest.fixture(scope="session")
def stage_only_llava(tiny_llava, tmp_path_factory):
    """The tiny LLaVA fine-tuned (full, 40 steps, ~10 s) to answer ``Sleep stage: X`` for six random images with
    their features: a stage-only checkpoint whose greedy answers are stages. Returns ``(checkpoint, images,
    features, labels)``: PNG paths, ``[6, 1, 1024]`` features and the stage each image was taught."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from eeg_vlm.formats import STAGES, stage_line
    from llava.mm_utils import process_images
    from llava.model.builder import load_pretrained_model
    from llava.train.preprocess import preprocess
    from sleep_eeg.cot import QUESTIONS

    root = tmp_path_factory.mktemp("stage_only")
    out = root / "checkpoint"
    shutil.copytree(tiny_llava, out)
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    images, labels = [], [STAGES[i % 5] for i in range(6)]
    for i in range(6):
        images.append(root / "images" / f"epoch_{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 120, 3), dtype=np.uint8)).save(images[-1])
    features = rng.normal(size=(6, 1, 1024)).astype(np.float32)
    tokenizer, model, processor, _ = load_pretrained_model(str(tiny_llava), None)
    sources = [[{"from": "human", "value": f"<image>\n<image>\n{QUESTIONS[0]}"}, {"from": "gpt", "value": stage_line(s)}]
               for s in labels]
    data = preprocess(sources, tokenizer, has_image=True, version="v1")
    pad = torch.nn.utils.rnn.pad_sequence
    ids = pad(data["input_ids"], batch_first=True, padding_value=tokenizer.pad_token_id)
    targets = pad(data["labels"], batch_first=True, padding_value=-100)
    mask = pad([torch.ones_like(x) for x in data["input_ids"]], batch_first=True, padding_value=0)
    pixels = process_images([Image.open(p).convert("RGB") for p in images], processor, "pad")
    torch.manual_seed(0)
    params = [p for name, p in model.named_parameters() if "vision_tower" not in name]
    optimizer = torch.optim.AdamW(params, lr=1.5e-3)
    model.train()
    for _ in range(40):
        model(input_ids=ids, attention_mask=mask, labels=targets, images=pixels,
              high_level_features=list(torch.from_numpy(features))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "vision_tower" not in k}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out, images, features, labels
