"""Entry point of the documented command (LLaVA's name): ``llava.train.train.train``, which picks the attention
kernel for the run (``llava.train.train.attention_implementation``) and logs which and why."""
from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from llava.train.train import train

    train(argv)


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
