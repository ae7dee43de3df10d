"""What several test modules build the same way: the documented training command pointed at tiny data
(``documented_argv``, ``make_data``: test_train.py, test_ranks.py), and a benchmark script loaded as a module
for the tests of its own helpers (``load_benchmark``: test_gpu_benchmark.py), without putting ``benchmarks/`` on
``sys.path``.

A random vision checkpoint comes from the library: ``vision_modules.checkpoint.random_checkpoint``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from eeg_core import formats
from eeg_core.answer import stage_line
from eeg_core.atomic import write_json
from eeg_core.layout import FEATURES_TRAIN_NAME
from eeg_core.stages import STAGES
from eeg_vlm.commands import train_argv

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is the sleep stage of this EEG epoch?"


def documented_argv(tiny: Path, data: Path, out: Path) -> list[str]:
    """The documented command's arguments (after the script), with its paths pointed at the tiny run."""
    return train_argv(model=tiny, data_path=data / "eeg_ft.json", image_folder=data / "images", output_dir=out)


def make_data(root: Path, n: int, classes: list[int] | None = None, identical_images: bool = False,
              dim: int = 1024, seed: int = 0, strength: float = 3.0) -> Path:
    """``n`` records ``[img, img]`` with answers ``Sleep stage: X``; features [n, 1, dim] whose block ``c``
    (of five) is raised for class ``c`` on top of noise. Images are noise, or all the same file."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    classes = list(rng.integers(0, 5, n)) if classes is None else classes
    records, feats = [], np.zeros((n, 1, dim), np.float32)
    for i, c in enumerate(classes):
        name = "same.png" if identical_images else f"e{i}.png"
        if not (root / "images" / name).exists():
            Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "images" / name)
        stage = STAGES[c]
        records.append(formats.make_train_record(f"r{i}", [name, name], QUESTION, stage_line(stage),
                                                 label=stage))
        feats[i, 0] = rng.standard_normal(dim) * 0.5
        block = dim // 5
        feats[i, 0, c * block : (c + 1) * block] += strength
    write_json(root / "eeg_ft.json", records)
    formats.save_features(root / FEATURES_TRAIN_NAME, feats)
    return root


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` loaded from its file as a fresh module (neither ``benchmarks/`` put on ``sys.path``
    nor the module put in ``sys.modules``): for testing the helpers a benchmark relies on; its run is tested as
    users start it, in a subprocess."""
    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
