"""``eeg-vlm vision train|extract|predict``: train a specialized vision module, extract its high-level
features, or answer with its own stage predictions."""
from __future__ import annotations

import argparse
from typing import Sequence

from eeg_core.cli import run
from eeg_core.errors import FormatError
from eeg_core.outputs import check_device, check_output, check_positive
from vision_modules import extract, predict, train


def check_numbers(args: argparse.Namespace) -> None:
    """Counts and rates that can only fail later (in a DataLoader, the optimizer, a resize), refused up front."""
    check_positive(args.batch_size, "--batch-size")
    check_device(args.device)
    if getattr(args, "feature_dim", 1) is not None:
        check_positive(getattr(args, "feature_dim", 1), "--feature-dim")
    if getattr(args, "workers", 0) < 0:
        raise FormatError(f"--workers must be 0 or more, got {args.workers}")
    if args.command == "train":
        check_positive(args.epochs, "--epochs")
        for n in args.image_size or []:
            check_positive(n, "--image-size")
        if not args.lr > 0:  # NaN included
            raise FormatError(f"--lr must be a positive number, got {args.lr}")
        if not args.weight_decay >= 0:
            raise FormatError(f"--weight-decay must be 0 or more, got {args.weight_decay}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eeg-vlm vision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_arguments(sub.add_parser("train", help="train a vision module on EEG epoch images"))
    extract.add_arguments(sub.add_parser("extract", help="write [N, 1, D] features, one row per record"))
    predict.add_arguments(sub.add_parser("predict", help="answers from the module's own class head"))
    args = parser.parse_args(argv)
    check_numbers(args)
    if args.command == "train":
        check_output(args.out, "--out", folder=True)
    elif args.command == "extract":
        check_output(args.out, "--out", folder=False)
    else:
        check_output(args.answers_file, "--answers-file", folder=False)
    commands = {"train": train.main_from_args, "extract": extract.main_from_args, "predict": predict.main_from_args}
    return commands[args.command](args)


if __name__ == "__main__":
    run(main)
