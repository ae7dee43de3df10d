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
