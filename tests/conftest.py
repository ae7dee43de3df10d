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
    from eeg_vlm.tiny import build_tiny_llava

    out = tmp_path_factory.mktemp("tiny_llava")
    build_tiny_llava(out, seed=0)
    return out


@pytest.fixture(scope="session")
def stage_only_llava(tiny_llava, tmp_path_factory):
    """The tiny LLaVA fine-tuned (``eeg_vlm.tiny.train_stage_only``, ~10 s) to answer ``Sleep stage: X`` for six
    random images with their features: a stage-only checkpoint whose greedy answers are stages. Returns
    ``(checkpoint, images, features, labels)``: PNG paths, ``[6, 1, 1024]`` features and the stage each was taught."""
    import numpy as np
    from PIL import Image

    from eeg_core.stages import STAGES
    from eeg_vlm.tiny import train_stage_only

    root = tmp_path_factory.mktemp("stage_only")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    images, labels = [], [STAGES[i % 5] for i in range(6)]
    for i in range(6):
        images.append(root / "images" / f"epoch_{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 120, 3), dtype=np.uint8)).save(images[-1])
    features = rng.normal(size=(6, 1, 1024)).astype(np.float32)
    return train_stage_only(tiny_llava, root / "checkpoint", images, features, labels), images, features, labels


@pytest.fixture
def scratch_registry():
    """What a test registers is gone after it: the registry is left as the test found it."""
    from vision_modules import list_vision_modules
    from vision_modules.registry import temporary_vision_modules

    before = list_vision_modules()
    with temporary_vision_modules():
        yield
    assert list_vision_modules() == before
