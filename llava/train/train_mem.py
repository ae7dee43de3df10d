"""Entry point of the documented command: picks the attention kernel, then runs ``llava.train.train``.

flash-attention 2 when the ``flash_attn`` package is installed and a GPU is present, else PyTorch's sdpa.
"""
from __future__ import annotations

import importlib.util

import torch


def attention_implementation() -> str:
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def main(argv=None) -> None:
    from llava.train.train import train

    impl = attention_implementation()
    reason = "flash_attn installed and a GPU present" if impl == "flash_attention_2" else (
        "no GPU" if not torch.cuda.is_available() else "flash_attn not installed")
    train(argv, attn_implementation=impl, attn_reason=reason)  # train() sets up logging, then logs the choice


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
