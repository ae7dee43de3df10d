"""The prompt layout and the answer line, written and read in one place.

A user turn is one ``<image>`` line per image, then the question (``user_prompt``). Every answer ends with the
line ``Sleep stage: <stage>`` (``stage_line``); ``parse_stage`` reads the stage back from any answer text, also
from free text that states it otherwise ("stage 2", "REM sleep"), and refuses a hedge.
"""
from __future__ import annotations

import re
from typing import Any

from eeg_core.stages import check_stage

# LLaVA's image placeholder in a prompt (``llava.constants.DEFAULT_IMAGE_TOKEN`` is this string).
IMAGE_TOKEN = "<image>"
# The last line of every chain-of-thought answer, e.g. "Sleep stage: N2".
ANSWER_STAGE_PREFIX = "Sleep stage:"
# What an answer that gives no stage (or hedges) is scored as: never a true label.
UNPARSEABLE = "unparseable"


def user_prompt(question: str, n_images: int, image_token: str = IMAGE_TOKEN) -> str:
    """The user turn: one ``image_token`` line per image ahead of the question."""
    return "".join(image_token + "\n" for _ in range(n_images)) + question


def stage_line(stage: str) -> str:
    """The line that ends an answer: ``Sleep stage: <stage>``."""
    check_stage(stage)
    return f"{ANSWER_STAGE_PREFIX} {stage}"


# ---------------------------------------------------------------------------------------------
# Reading the stage back
# ---------------------------------------------------------------------------------------------
_SEP = r"[\s:=\-*\"'`]*"
_NUMBERED = (  # stage 2, stage N2, N2, S2, NREM 2, non-REM stage 2 -> by the digit (3 and 4 are N3)
    r"\b(?:(?:sleep\s+)?stage" + _SEP + r"(?:N\s*)?|N|S|(?:N|non[- ]?)REM\s*(?:stage\s*)?)(?P<num>[1-4])(?![.,]?\d)"
)
_ROMAN = r"\bstage\s+(?P<roman>IV|III|II|I)\b"  # R&K: stage I..IV
_BARE = (  # a lone W or R counts only right after a word that announces a stage
    r"\b(?:stage|answer|prediction|label|class|classification)\s*(?:is\s*)?" + _SEP + r"(?P<bare>W|R)\b(?!&)"
)
_WORDS = {
    "W": r"\b(?:wake(?:fulness)?|awake)\b",
    "N3": r"\b(?:slow[- ]?wave\s+(?:sleep|stage)|SWS|deep\s+sleep)\b",
    "REM": r"(?<!non-)(?<!non\s)\b(?:rapid[- ]eye[- ]movements?(?:\s+sleep)?|REM)\b",
}
_MENTION = re.compile(
    "|".join([_NUMBERED, _ROMAN, _BARE] + [f"(?P<{s}>{p})" for s, p in _WORDS.items()]), re.IGNORECASE
)
_NEGATED = re.compile(
    r"(?:\bnot|\bno|\bnor|\bthan|\binstead\s+of|\brul(?:e|es|ed|ing)\s+out|\bexclud(?:e|es|ed|ing)|\bunlike)"
    r"[\s,]*$",
    re.IGNORECASE,
)
# ANSWER_STAGE_PREFIX ("Sleep stage:"), tolerant of case, spacing and markdown bold.
_FINAL_LINE = re.compile(r"sleep\s*stage[*\s]*[:=\-]", re.IGNORECASE)
_NUM_STAGE = {"1": "N1", "2": "N2", "3": "N3", "4": "N3"}
_ROMAN_STAGE = {"I": "N1", "II": "N2", "III": "N3", "IV": "N3"}


def _mention_spans(text: str) -> list[tuple[str, int, int]]:
    """``(stage, start, end)`` of every stage the text states, in order; mentions after a negation ("not N3",
    "rather than W") are skipped."""
    found = []
    for m in _MENTION.finditer(text):
        if _NEGATED.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        if m.group("num"):
            stage = _NUM_STAGE[m.group("num")]
        elif m.group("roman"):
            stage = _ROMAN_STAGE[m.group("roman").upper()]
        elif m.group("bare"):
            stage = "W" if m.group("bare").upper() == "W" else "REM"
        else:
            stage = next(s for s in _WORDS if m.group(s))
        found.append((stage, m.start(), m.end()))
    return found


def _mentions(text: str) -> list[str]:
    return [stage for stage, _, _ in _mention_spans(text)]


# A hedge: two stages offered as alternatives ("stage 2 or stage 3", "N2/N3", "N2, possibly N3", "N2 (maybe N1)",
# "N2-N3"), a stage put as a question ("REM?"), or a stage qualified by a word of doubt just before it ("either
# N1 or W", "possibly N2") or just after it ("N2 or ...", "N2, perhaps ...").
_DOUBT = r"possibly|maybe|perhaps|probably|either|or|and/or|vs\.?|versus"
_ALTERNATIVE = re.compile(r"[\s,;.(\[]*(?:(?:" + _DOUBT + r"|/|-|\u2013|to)\b[\s,;(\[]*)+|[\s]*[/\-\u2013][\s]*",
                          re.IGNORECASE)
_QUESTIONED = re.compile(r"[\s*\"'`)]*\?")
_DOUBT_AFTER = re.compile(r"[\s*\"'`,;.:(\[]*(?:(?:" + _DOUBT + r")\b|/)", re.IGNORECASE)
_DOUBT_BEFORE = re.compile(r"\b(?:possibly|maybe|perhaps|probably|either)\b[\s,:(\[*]*$", re.IGNORECASE)


def _hedged(text: str, spans: list[tuple[str, int, int]], k: int) -> bool:
    """Whether mention ``k`` is offered as one of two alternatives or as a question."""
    stage, start, end = spans[k]
    if _QUESTIONED.match(text, end) or _DOUBT_AFTER.match(text, end):
        return True
    if _DOUBT_BEFORE.search(text[max(0, start - 30): start]):
        return True
    for j in (k - 1, k + 1):
        if 0 <= j < len(spans) and spans[j][0] != stage:
            a, b = sorted((spans[j], spans[k]), key=lambda x: x[1])
            if _ALTERNATIVE.fullmatch(text[a[2] : b[1]]):
                return True
    return False


def parse_stage(text: Any) -> str | None:
    """The stage an answer gives, one of ``STAGES``, or None when it states none or hedges.

    The last ``Sleep stage: X`` line decides. When that line names no stage ("Sleep stage: unclear"), only the
    text after it can still give one: a stage stated before it is not read as the answer. Without such a line
    the last stage the text states does. A hedge is unparseable, never guessed: the deciding stage offered
    with another as alternatives ("stage 2 or stage 3", "N2/N3") or as a question ("REM?"). A whole answer of
    a single token (``"R"``, ``"w."``) is read as that stage.
    """
    if not isinstance(text, str):
        return None
    whole = re.fullmatch(r"[\s*\"'`(]*(W|R)[\s.*\"'`)]*", text, re.IGNORECASE)
    if whole:
        return "W" if whole.group(1).upper() == "W" else "REM"
    finals = list(_FINAL_LINE.finditer(text))
    if finals:
        start = finals[-1].start()
        line = text[start:].split("\n", 1)[0]
        spans = _mention_spans(line)
        if spans:
            return None if _hedged(line, spans, 0) else spans[0][0]
        text = text[start + len(line):]  # the line names no stage: only what follows it may
    spans = _mention_spans(text)
    if not spans:
        return None
    return None if _hedged(text, spans, len(spans) - 1) else spans[-1][0]
