"""Join the answers files of a ``--num-chunks`` run into one, in question order.

    for K in 0 1 2 3; do
        python llava/eval/model_vqa.py ... --num-chunks 4 --chunk-idx $K \
            --answers-file sleep_data/answers/chunks/4_$K.jsonl &
    done; wait
    python llava/eval/merge_answers.py --question-file sleep_data/eeg_eval.jsonl \
        --answers-file sleep_data/answers/eeg_answers.jsonl sleep_data/answers/chunks/4_*.jsonl

Every question must be answered exactly once across the chunk files (a chunk killed part-way: rerun it
with the same arguments, it resumes), by one model (one ``model_sha256``); question ids are compared as text.
The merged file is written atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from eeg_core.atomic import write_jsonl
from eeg_core.errors import FormatError
from eeg_core.outputs import check_output
from eeg_core.formats import (
    answer_keys,
    question_key,
    question_keys,
    read_jsonl,
    read_records,
)


def merge_answers(question_file: str | Path, chunk_files: Sequence[str | Path], answers_file: str | Path) -> int:
    """Write the answers of ``chunk_files`` to ``answers_file`` in the order of ``question_file``; returns the count.

    Question ids are compared as text (``question_key``); all answers must come from one model (one
    ``model_sha256``)."""
    order = {key: i for i, key in enumerate(question_keys(read_records(question_file), question_file))}
    by_key: dict[str, dict] = {}
    model: tuple[str | None, Path] | None = None
    for path in map(Path, chunk_files):
        if not path.is_file():
            raise FormatError(f"{path}: answers file not found")
        rows = read_jsonl(path)
        for lineno, (key, row) in enumerate(zip(answer_keys(rows, path, order, str(question_file)), rows), 1):
            if key in by_key:
                raise FormatError(f"{path}: question_id {row['question_id']!r} (answer #{lineno}) is answered twice")
            fingerprint = row.get("model_sha256")
            if model is None:
                model = (fingerprint, path)
            elif fingerprint != model[0]:
                raise FormatError(f"{path}: answer #{lineno} comes from another model (model_sha256 "
                                  f"{str(fingerprint)[:12]}) than {model[1]} ({str(model[0])[:12]}); merge the "
                                  "answers of one model")
            by_key[key] = row
    missing = [key for key in order if key not in by_key]
    if missing:
        raise FormatError(
            f"{question_file}: {len(missing)} of {len(order)} questions have no answer in the chunk files "
            f"(first: {missing[0]!r}); rerun the unfinished chunks, they resume"
        )
    write_jsonl(answers_file, sorted(by_key.values(), key=lambda row: order[question_key(row["question_id"])]))
    return len(by_key)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Join the per-chunk answers files of model_vqa.py --num-chunks runs.")
    p.add_argument("--question-file", required=True, help="the question file all chunks answered")
    p.add_argument("--answers-file", required=True, help="the merged answers file to write")
    p.add_argument("chunk_files", nargs="+", help="the per-chunk answers files")
    args = p.parse_args(argv)
    check_output(args.answers_file, "--answers-file", folder=False)
    n = merge_answers(args.question_file, args.chunk_files, args.answers_file)
    print(f"{n} answers from {len(args.chunk_files)} files -> {args.answers_file}")
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run as run_command

    run_command(main)
