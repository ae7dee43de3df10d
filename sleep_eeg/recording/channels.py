"""PSG channel names: the default EEG channel, what a channel's label says it records, and which of a file's
channels stands for a channel of another lab's montage.

A channel's role (``eeg``, ``eog`` or ``emg``) follows from its label: ``EOG`` / ``EMG`` in it, or a common name
of an eye or chin derivation (``E1-M2``, ``E2-M1``, ``LOC``, ``ROC``, ``Chin1-Chin2``, ``submental``); a label
that starts with ``EEG`` is EEG. Two labels name the same derivation when they agree once the role word, case,
spaces and the reference's old name are set aside: ``EEG C4-M1`` = ``C4-A1`` = ``c4-m1``; ``LOC`` = ``E1``.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from eeg_core.errors import FormatError

DEFAULT_CHANNEL = "EEG Fpz-Cz"
ROLES = ("eeg", "eog", "emg")
_OLD_REFERENCE = {"A1": "M1", "A2": "M2"}  # earlobe / mastoid references: the same derivation in AASM's names
_EYE = {"LOC": "E1", "ROC": "E2", "LEOG": "E1", "REOG": "E2"}  # other names of AASM's eye electrodes E1 / E2
_EOG_NAME = re.compile(r"^(E[12]|" + "|".join(_EYE) + r")\b|EOG")
_EMG_NAME = re.compile(r"EMG|CHIN|SUBMENTAL|MENTALIS")
_ROLE_WORD = re.compile(r"^(EEG|EOG|EMG)[\s:_-]*")


def channel_role(label: str) -> str:
    """``eog`` or ``emg`` when the channel's name says so (``EOG``, ``E1-M2``, ``LOC``; ``EMG``, ``Chin1-Chin2``),
    else ``eeg``."""
    upper = label.strip().upper()
    if upper.startswith("EEG"):
        return "eeg"
    return "eog" if _EOG_NAME.search(upper) else "emg" if _EMG_NAME.search(upper) else "eeg"


def derivation(label: str) -> str:
    """A label reduced to its derivation: ``EEG C4-A1`` -> ``C4-M1``, ``LOC-A2`` -> ``E1-M2``, ``EMG Chin1-Chin2``
    -> ``CHIN1-CHIN2``."""
    text = _ROLE_WORD.sub("", label.strip().upper()).replace(" ", "")
    parts = re.split(r"([-/])", text)
    return "".join(_EYE.get(_OLD_REFERENCE.get(p, p), _OLD_REFERENCE.get(p, p)) for p in parts)


def role_label(name: str, role: str) -> str:
    """The label a render panel gets for the channel ``name`` in ``role``: the name itself when it says its role,
    else the name after the role's word (``--eog-name X7`` -> ``EOG X7``)."""
    name = name.strip()
    return name if channel_role(name) == role else f"{role.upper()} {name}"


def with_roles(channels: Sequence[str], names: Mapping[str, str | None]) -> tuple[str, ...]:
    """``channels`` (render panels) with the panel of each named role replaced by the named channel
    (:func:`role_label`); a role named but not among the panels is added after them. ``names`` maps a role to a
    comma-separated list (the n-th name for the n-th panel of the role) or None."""
    out = list(channels)
    for role in ROLES:
        given = [n.strip() for n in (names.get(role) or "").split(",") if n.strip()]
        slots = [i for i, c in enumerate(out) if channel_role(c) == role]
        for k, name in enumerate(given):
            if k < len(slots):
                out[slots[k]] = role_label(name, role)
            else:
                out.append(role_label(name, role))
    return tuple(out)


def find_channel(labels: Sequence[str], wanted: str) -> str | None:
    """The label among ``labels`` that is ``wanted`` or names the same derivation (:func:`derivation`), else None;
    several that do are refused."""
    if wanted in labels:
        return wanted
    same = [label for label in labels if derivation(label) == derivation(wanted)]
    if len(same) > 1:
        raise FormatError(f"channel {wanted!r}: several channels name that derivation ({', '.join(same)}); name one "
                          "with --eeg-name / --eog-name / --emg-name")
    return same[0] if same else None


def resolve_channels(labels: Sequence[str], panels: Sequence[str], names: Mapping[str, str | None] | None = None,
                     where: str = "", why: str = "") -> dict[str, str]:
    """``{panel: the file's label}`` for each render panel: the channel named for the panel's role (``names``: role
    -> comma-separated names, the n-th for the n-th panel of that role), else the file's channel of the panel's
    derivation. A panel without a channel is refused in one line naming ``where`` (``why`` after the channel) and
    the channels present."""
    names = names or {}
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for panel in panels:
        role = channel_role(panel)
        k = seen.get(role, 0)
        seen[role] = k + 1
        given = [n.strip() for n in (names.get(role) or "").split(",") if n.strip()]
        wanted = given[k] if k < len(given) else panel
        try:
            found = find_channel(labels, wanted)
            if found is None and wanted != panel:
                found = find_channel(labels, _ROLE_WORD.sub("", wanted.strip()))
        except FormatError as e:
            raise FormatError(f"{where}: {e}") from None
        if found is None:
            hint = "" if k < len(given) else f"; name the {role.upper()} channel to use with --{role}-name"
            raise FormatError(f"{where}: no channel {wanted!r}{why}{hint}; channels present: {', '.join(labels)}")
        out[panel] = found
    return out
