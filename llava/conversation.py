"""Conversation templates: how a list of (role, message) turns becomes one prompt string.

Templates as LLaVA-1.5 defined them (``v1`` / ``vicuna_v1`` / ``llava_v1``, ``plain``) and the EEG-VLM paper's
``eeg_vqa``. ``TWO`` style: ``system + sep``, then ``role + ": " + message`` followed by ``sep`` after user turns
and ``sep2`` after assistant turns; an empty message ends the prompt with ``role + ":"`` (what generation continues).
``PLAIN`` style (LLaVA's pretraining format): the messages back to back, ``sep2`` after each assistant message.
"""

from __future__ import annotations

import copy
import dataclasses
from enum import Enum, auto

from eeg_core.errors import FormatError


class SeparatorStyle(Enum):
    TWO = auto()
    PLAIN = auto()


@dataclasses.dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    messages: list[list]  # [role, message or None]
    sep_style: SeparatorStyle
    sep: str
    sep2: str
    version: str

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        return copy.deepcopy(self)

    def get_prompt(self) -> str:
        return self.get_prompt_and_spans()[0]

    def get_prompt_and_spans(self) -> tuple[str, list[tuple[int, int]]]:
        """The prompt and, for each assistant message, the character span a model is trained to produce.

        TWO style: the span starts right after ``role + ":"`` (so it begins with the space that the reply's first
        token carries) and ends after ``sep2``. PLAIN style: the assistant message and its ``sep2``.
        """
        parts: list[str] = []
        spans: list[tuple[int, int]] = []
        length = 0

        def put(text: str) -> None:
            nonlocal length
            parts.append(text)
            length += len(text)

        if self.sep_style == SeparatorStyle.TWO:
            put(self.system + self.sep)
            for i, (role, message) in enumerate(self.messages):
                message = _text(message)
                put(role + ":")
                if message:
                    start = length
                    put(" " + message + (self.sep if i % 2 == 0 else self.sep2))
                    if i % 2 == 1:  # turns alternate user, assistant
                        spans.append((start, length))
        elif self.sep_style == SeparatorStyle.PLAIN:
            put(self.system)
            for i, (role, message) in enumerate(self.messages):
                message = _text(message)
                if message:
                    start = length
                    put(message + (self.sep if i % 2 == 0 else self.sep2))
                    if i % 2 == 1:  # turns alternate user, assistant
                        spans.append((start, length))
        else:
            raise ValueError(f"unsupported separator style {self.sep_style}")
        return "".join(parts), spans


def _text(message) -> str | None:
    """LLaVA allowed (text, image, ...) tuples as messages; the prompt uses the text."""
    if isinstance(message, tuple):
        return message[0]
    return message


LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

conv_vicuna_v1 = Conversation(
    system=LLAVA_SYSTEM,
    roles=("USER", "ASSISTANT"),
    messages=[],
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1",
)

conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    messages=[],
    sep_style=SeparatorStyle.PLAIN,
    sep="",
    sep2="\n",
    version="plain",
)

conv_eeg_vqa = Conversation(
    system="This is a VQA task.",
    roles=("Question", "The answer is"),
    messages=[],
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
    version="v1",
)

conv_templates: dict[str, Conversation] = {
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_vicuna_v1,
    "plain": conv_llava_plain,
    "eeg_vqa": conv_eeg_vqa,
}

default_conversation = conv_vicuna_v1
# The template a checkpoint answers with when neither ``--conv-mode`` nor its config (``conv_version``) names one.
DEFAULT_CONV_VERSION = "llava_v1"


def template_texts() -> list[str]:
    """One rendered exchange per template: text to train a tokenizer on so the templates' words are in it."""
    texts = []
    for conv in conv_templates.values():
        conv = conv.copy()
        conv.append_message(conv.roles[0], "Question?")
        conv.append_message(conv.roles[1], "Answer.")
        conv.append_message(conv.roles[0], "Question?")
        conv.append_message(conv.roles[1], None)
        texts.append(conv.get_prompt())
    return texts


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template called ``name``; FormatError listing the known names otherwise."""
    if name not in conv_templates:
        raise FormatError(f"unknown conversation version {name!r} (known: {', '.join(conv_templates)})")
    return conv_templates[name].copy()


def checkpoint_conv_template(config, conv_mode: str | None = None) -> Conversation:
    """The template to answer with: ``conv_mode`` when given, else the checkpoint config's ``conv_version`` (the
    template it was trained with), else ``DEFAULT_CONV_VERSION``."""
    return get_conv_template(conv_mode or getattr(config, "conv_version", None) or DEFAULT_CONV_VERSION)
