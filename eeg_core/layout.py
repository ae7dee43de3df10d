"""The names of the files ``eeg-vlm prepare`` and ``vision extract`` write into a data folder (``sleep_data/``).

    sleep_data/eeg_images_ft/*.png    sleep_data/eeg_ft.json      train records (JSON array)
    sleep_data/eeg_images_eval/*.png  sleep_data/eeg_eval.jsonl   eval questions with labels (JSONL)
    sleep_data/render.json            how the images were drawn
    sleep_data/train_high_level_features.npy, sleep_data/eval_high_level_features.npy   [N, 1, D]

and of a vision-module checkpoint folder (``eeg-vlm vision train --out``): ``model.safetensors`` (weights) and
``config.json`` (how to rebuild it; ``vision_modules.checkpoint``). A features file's sidecar is named by
``eeg_core.formats.features_sidecar``.
"""

DATA_DIR = "sleep_data"
TRAIN_IMAGES = "eeg_images_ft"
EVAL_IMAGES = "eeg_images_eval"
TRAIN_RECORDS = "eeg_ft.json"
EVAL_RECORDS = "eeg_eval.jsonl"
RENDER_FILE = "render.json"
FEATURES_TRAIN_NAME = "train_high_level_features.npy"
FEATURES_EVAL_NAME = "eval_high_level_features.npy"
VISION_WEIGHTS = "model.safetensors"
VISION_CONFIG = "config.json"
