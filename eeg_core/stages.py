"""The AASM sleep stages and the scoring epoch."""
from __future__ import annotations

from typing import Any

from eeg_core.errors import FormatError

STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
STAGE_INDEX: dict[str, int] = {s: i for i, s in enumerate(STAGES)}

# One scored epoch, in seconds (AASM and R&K alike).
EPOCH_S = 30.0


def check_stage(stage: Any, where: str = "") -> str:
    """``stage`` when it is one of ``STAGES``; else a FormatError prefixed with ``where``."""
    if stage not in STAGE_INDEX:
        prefix = f"{where}: " if where else ""
        raise FormatError(f"{prefix}label {stage!r} is not one of {' '.join(STAGES)}")
    return stage
