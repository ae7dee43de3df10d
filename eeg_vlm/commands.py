"""The paper's two commands as the README shows them, each written once here, and the training command pointed
at other paths (the demo, the tests and the benchmarks run it so).

``TRAIN_COMMAND`` and ``EVAL_COMMAND`` are the README's lines, verbatim; ``scripts/finetune_lora_eeg.sh`` runs the
same flags (``tests/test_readme.py`` checks both).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRAIN_COMMAND = (
    "deepspeed llava/train/train_mem.py --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 "
    "--deepspeed ./scripts/zero3.json --model_name_or_path your_checkpoints_path/LLaVA-v1.5-13b --version v1 "
    "--data_path sleep_data/eeg_ft.json --image_folder sleep_data/eeg_images_ft "
    "--vision_tower openai/clip-vit-large-patch14-336 --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 "
    "--mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad "
    "--group_by_modality_length True --bf16 True --output_dir ./checkpoints/your_checkpoints_save_path "
    "--num_train_epochs 2 --per_device_train_batch_size 16 --per_device_eval_batch_size 4 "
    "--gradient_accumulation_steps 1 --evaluation_strategy \"no\" --save_strategy \"steps\" --save_steps 50000 "
    "--save_total_limit 1 --learning_rate 3e-4 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type \"cosine\" "
    "--logging_steps 1 --tf32 True --model_max_length 4096 --gradient_checkpointing True "
    "--dataloader_num_workers 1 --lazy_preprocess True --report_to wandb"
)

EVAL_COMMAND = (
    "python llava/eval/model_vqa.py --model-path checkpoints/your_checkpoints_save_path/ "
    "--model-base your_checkpoints_path/LLaVA-v1.5-13b/ --question-file sleep_data/eeg_eval.jsonl "
    "--image-folder sleep_data/eeg_images_eval --answers-file sleep_data/answers/eeg_answers.jsonl"
)

# The training command's paths, by the flag that takes them.
TRAIN_PATH_FLAGS = ("--deepspeed", "--model_name_or_path", "--data_path", "--image_folder", "--vision_tower",
                    "--output_dir")

PathLike = str | os.PathLike


def train_argv(*, model: PathLike, data_path: PathLike, image_folder: PathLike, output_dir: PathLike,
               vision_tower: PathLike | None = None, deepspeed: PathLike | None = REPO / "scripts" / "zero3.json",
               **flags: object) -> list[str]:
    """The arguments of ``TRAIN_COMMAND`` after ``llava/train/train_mem.py``, with its paths replaced.

    ``vision_tower`` defaults to ``<model>/clip`` (where the tiny LLaVA keeps its CLIP); ``deepspeed=None`` drops
    ``--deepspeed`` (a plain single-process run). ``flags`` override the command's values or add flags, by their
    name without the dashes (``max_steps=1``, ``report_to="none"``); a value of None removes the flag.
    """
    values = dict(zip(TRAIN_PATH_FLAGS, (deepspeed, model, data_path, image_folder,
                                         vision_tower if vision_tower is not None else Path(model) / "clip",
                                         output_dir)))
    values.update({f"--{name}": value for name, value in flags.items()})
    words = shlex.split(TRAIN_COMMAND)[2:]
    argv: list[str] = []
    for flag, value in zip(words[::2], words[1::2]):
        value = values.pop(flag, value)
        if value is not None:
            argv += [flag, str(value)]
    for flag, value in values.items():  # flags the documented command does not have
        if value is not None:
            argv += [flag, str(value)]
    return argv
