"""Token ids and strings shared with original LLaVA-1.5 (same values, so its data and checkpoints work)."""
from eeg_core.answer import IMAGE_TOKEN

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = IMAGE_TOKEN
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"

# A LoRA checkpoint's trainable weights outside the adapter (the projectors), in LLaVA-1.5's file name; the
# loader also reads them as safetensors.
NON_LORA_TRAINABLES = "non_lora_trainables.bin"
NON_LORA_TRAINABLES_FILES = (NON_LORA_TRAINABLES, "non_lora_trainables.safetensors")
