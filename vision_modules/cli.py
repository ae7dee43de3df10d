"""``eeg-vlm vision train|extract|predict``: train a specialized vision module, extract its high-level
features, or answer with its own stage predictions."""
from __future__ import annotations

import argparse
from typing import Sequence

from eeg_core.cli import run
from eeg_core.outputs import check_output, check_positive
from vision_modules import extract, predict, train


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eeg-vlm vision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_arguments(sub.add_parser("train", help="train a vision module on EEG epoch images"))
    extract.add_arguments(sub.add_parser("extract", help="write [N, 1, D] features, one row per record"))
    predict.add_arguments(sub.add_parser("predict", help="answers from the module's own class head"))
    args = parser.parse_args(argv)
    check_positive(args.batch_size, "--batch-size")
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
