"""LLaVA conversation records -> token ids and labels, only the assistant replies supervised.

As LLaVA-1.5: the turns are rendered with the conversation template, ``<image>`` becomes IMAGE_TOKEN_INDEX, and
every label is IGNORE_INDEX except the tokens of each assistant reply and its ``sep2`` (``</s>``). LLaVA-1.5
derived the masked lengths from tokenizing each round on its own, with tokenizer-version-dependent off-by-one
corrections. Here the boundaries come from tokenizing prefixes of the very prompt that is trained on, cut where
tokenization cannot change (before the space that starts a reply, after the special ``</s>``), and each prefix's
ids are checked to be a prefix of the full ids. So the mask is exact for any tokenizer setting (legacy or not);
should a check ever fail, the whole sample is masked with a warning, as LLaVA did on a "tokenization mismatch".
"""

from __future__ import annotations

import warnings

import torch

from eeg_core.errors import FormatError
from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.conversation import Conversation, SeparatorStyle, get_conv_template
from llava.mm_utils import tokenizer_image_token

SPEAKERS = {"human": 0, "gpt": 1}


def preprocess(sources, tokenizer, has_image: bool = False, version: str = "v1", where: str = "") -> dict:
    """``sources``: list of conversations, each ``[{"from": "human"|"gpt", "value": str}, ...]``.

    Returns ``dict(input_ids=[LongTensor], labels=[LongTensor])``, one 1-D tensor per conversation (no
    truncation: the model truncates after splicing the images in). ``where`` prefixes error messages
    (e.g. ``"data.json: record 'x'"``).
    """
    conv = get_conv_template(version)
    if conv.sep_style not in (SeparatorStyle.TWO, SeparatorStyle.PLAIN):
        raise FormatError(f"conversation version {version!r}: separator style {conv.sep_style} is not supported")
    input_ids, labels = [], []
    for source in sources:
        if conv.sep_style == SeparatorStyle.PLAIN:
            ids, target = _plain(source, tokenizer, conv, where)
        else:
            ids, target = _supervise_replies(source, tokenizer, has_image, conv, where)
        input_ids.append(torch.tensor(ids, dtype=torch.long))
        labels.append(torch.tensor(target, dtype=torch.long))
    return dict(input_ids=input_ids, labels=labels)


def check_turns(source, where: str = "") -> list[dict]:
    """The turns that are trained on: a leading non-human turn is dropped (as LLaVA did), then the turns must
    alternate human, gpt, human, ... each with a text ``value``, and at least one gpt reply must remain
    (a record without one would train with every label masked)."""
    where = where or "conversation"
    turns = list(source)
    if turns and isinstance(turns[0], dict) and turns[0].get("from") != "human":
        turns = turns[1:]
    for j, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in SPEAKERS:
            raise FormatError(f"{where}: turn {j} is from {speaker!r}, expected 'human' or 'gpt'")
        if SPEAKERS[speaker] != j % 2:
            expected = "human" if j % 2 == 0 else "gpt"
            raise FormatError(f"{where}: turn {j} is from {speaker!r}, expected {expected!r} (turns alternate "
                              "human, gpt)")
        if not isinstance(turn.get("value"), str):
            raise FormatError(f"{where}: turn {j} has no text 'value'")
        if speaker == "gpt" and not turn["value"].strip():
            raise FormatError(f"{where}: turn {j} is an empty 'gpt' reply (it would teach the model to answer "
                              "nothing)")
    if not any(turn["from"] == "gpt" for turn in turns):
        raise FormatError(f"{where}: no 'gpt' reply to learn from (every label would be masked)")
    return turns


def render(source, conv: Conversation, where: str = "") -> Conversation:
    """Fill a copy of ``conv`` with the turns of ``source`` (checked by ``check_turns``)."""
    conv = conv.copy()
    conv.messages = []
    for j, turn in enumerate(check_turns(source, where)):
        conv.append_message(conv.roles[j % 2], turn["value"])
    return conv


def _supervise_replies(source, tokenizer, has_image: bool, conv: Conversation, where: str):
    """TWO-separator templates (v1, eeg_vqa): supervise each assistant reply and its sep2."""
    prompt, spans = render(source, conv, where).get_prompt_and_spans()

    def tokenize(text: str) -> list[int]:
        if has_image:
            return tokenizer_image_token(text, tokenizer)
        return tokenizer(text).input_ids

    ids = tokenize(prompt)
    target = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        head, stop = tokenize(prompt[:start]), tokenize(prompt[:end])
        if ids[: len(head)] != head or ids[: len(stop)] != stop:
            warnings.warn(
                f"{where or 'conversation'}: tokenization mismatch at characters {start}-{end} of the prompt; "
                "the whole sample is masked (ignored)",
                stacklevel=2,
            )
            return ids, [IGNORE_INDEX] * len(ids)
        target[len(head) : len(stop)] = ids[len(head) : len(stop)]
    return ids, target


def _plain(source, tokenizer, conv: Conversation, where: str):
    """LLaVA's pretraining format: ``<image>`` + caption + sep2, only the caption (and sep2) supervised."""
    if len(source) != 2 or DEFAULT_IMAGE_TOKEN not in source[0].get("value", ""):
        raise FormatError(f"{where or 'conversation'}: the 'plain' version needs one human turn with <image> "
                          "and one gpt turn")
    conv = render([{"from": "human", "value": DEFAULT_IMAGE_TOKEN}, source[1]], conv, where)
    prompt, spans = conv.get_prompt_and_spans()
    ids = tokenizer_image_token(prompt, tokenizer)
    begin = len(tokenizer_image_token(prompt[: spans[0][0]], tokenizer))
    target = [IGNORE_INDEX] * begin + ids[begin:]
    return ids, target
