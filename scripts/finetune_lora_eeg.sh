#!/usr/bin/env bash
# LoRA fine-tuning of LLaVA-1.5 on EEG records with high-level features: the paper's command, paths as variables.
# Override any of them from the environment, e.g.
#   MODEL=/models/llava-v1.5-13b VISION_TOWER=/models/clip-vit-large-patch14-336 bash scripts/finetune_lora_eeg.sh
# Extra arguments are appended (e.g. --hl_fusion token, --max_steps 10).
# CPU only: DS_ACCELERATOR=cpu (set below when no GPU is visible).
set -euo pipefail

MODEL=${MODEL:-your_checkpoints_path/LLaVA-v1.5-13b}
DATA=${DATA:-sleep_data/eeg_ft.json}
IMAGES=${IMAGES:-sleep_data/eeg_images_ft}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14-336}
OUTPUT=${OUTPUT:-./checkpoints/your_checkpoints_save_path}
DS_CONFIG=${DS_CONFIG:-./scripts/zero3.json}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
fi

deepspeed llava/train/train_mem.py --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 --deepspeed "$DS_CONFIG" --model_name_or_path "$MODEL" --version v1 --data_path "$DATA" --image_folder "$IMAGES" --vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad --group_by_modality_length True --bf16 True --output_dir "$OUTPUT" --num_train_epochs 2 --per_device_train_batch_size 16 --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no" --save_strategy "steps" --save_steps 50000 --save_total_limit 1 --learning_rate 3e-4 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type "cosine" --logging_steps 1 --tf32 True --model_max_length 4096 --gradient_checkpointing True --dataloader_num_workers 1 --lazy_preprocess True --report_to wandb "$@"
