"""The Llama sentencepiece tokenizer as LLaVA-1.5 used it: train one here, load one from a checkpoint folder.

LLaVA-1.5 shipped ``tokenizer.model`` + ``tokenizer_config.json`` (``LlamaTokenizer``) and used it with BOS added,
no EOS, pad = unk and right padding for training. transformers 5 pitfalls handled here:
``LlamaTokenizer(vocab_file=...)`` silently ignores the file, and ``from_pretrained`` on a bare ``tokenizer.model``
converts it but adds no BOS unless told, and leaves pad unset.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterable

from eeg_core.atomic import atomic_path, write_json
from eeg_core.errors import FormatError

# Llama's special pieces and their ids.
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_BYTE_PIECES = 256  # byte_fallback adds <0x00>..<0xFF>


def tokenizer_config(model_max_length: int = 2048, padding_side: str = "right") -> dict:
    """tokenizer_config.json in the layout of the released LLaVA-1.5 checkpoints."""
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": UNK,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": model_max_length,
        "padding_side": padding_side,
        "sp_model_kwargs": {},
    }


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 1000,
    seed: int = 0,
    model_max_length: int = 2048,
) -> Path:
    """Train a Llama-style BPE sentencepiece model on ``texts`` and write ``out_dir/tokenizer.model``.

    Deterministic: one thread, no input sampling, fixed options and seed, so the same texts give the same bytes.
    Options follow Llama's model (BPE, byte fallback so any text encodes, digits split, whitespace kept,
    identity normalisation, <unk>=0 <s>=1 </s>=2, no pad piece). Also writes ``tokenizer_config.json`` and
    ``special_tokens_map.json`` so that ``load_tokenizer(out_dir)`` gives LLaVA-1.5's settings.
    When the texts support fewer pieces than ``vocab_size`` the most they support is used: read the real size
    from the tokenizer (``len(load_tokenizer(out_dir))``). Returns the path of ``tokenizer.model``.
    """
    import sentencepiece as spm

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_sentencepiece: no text to train on")
    if vocab_size < N_BYTE_PIECES + 3 + 1:
        raise ValueError(f"train_sentencepiece: vocab_size {vocab_size} too small (byte fallback alone needs 259)")

    model = _train(spm, texts, vocab_size, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "tokenizer.model") as tmp:
        tmp.write_bytes(model.getvalue())
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(model_max_length))
    write_json(
        out_dir / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": UNK},
    )
    return out_dir / "tokenizer.model"


def _train(spm, texts: list[str], vocab_size: int, seed: int, retried: bool = False) -> io.BytesIO:
    """One single-threaded sentencepiece run into memory."""
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            unk_piece=UNK,
            bos_piece=BOS,
            eos_piece=EOS,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as e:
        message = str(e).splitlines()[0]
        most = re.search(r"value <= (\d+)", message)
        if most and not retried:  # the texts support fewer merges than asked: take the most they support
            return _train(spm, texts, int(most.group(1)), seed, retried=True)
        raise ValueError(f"train_sentencepiece: {message}") from None
    return model


def load_tokenizer(path: str | os.PathLike, model_max_length: int | None = None, padding_side: str = "right"):
    """The Llama tokenizer of a checkpoint folder (``tokenizer.json`` or sentencepiece ``tokenizer.model``).

    As LLaVA-1.5: BOS added, no EOS, pad = unk, ``padding_side`` (right for training). ``model_max_length``
    overrides the folder's value when given.
    """
    from transformers import LlamaTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise FormatError(f"{folder}: tokenizer folder not found")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        raise FormatError(f"{folder}: no tokenizer.model or tokenizer.json in this folder")
    kwargs = {"add_bos_token": True, "add_eos_token": False, "padding_side": padding_side}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    try:
        tokenizer = LlamaTokenizer.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise FormatError(f"{folder}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
    if tokenizer.unk_token is None:
        raise FormatError(f"{folder}: the tokenizer has no unk token (LLaVA-1.5 pads with it)")
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = padding_side
    return tokenizer
