"""Question templates and chain-of-thought answers for one 30-s epoch.

Answer modes (``--cot``):

- ``stage``: stage-wise reasoning that walks the scoring criteria in precedence order
  (W, N3, N2, N1, REM) and stops at the first one met; the last line is ``Sleep stage: <stage>``.
- ``measured``: the same steps, each citing a number computed from the epoch's own signal
  (see ``sleep_eeg.images.measures.epoch_measures``). Comparisons with a numeric criterion ("above / below the
  20% criterion") follow the number; the verdicts follow the scored stage, so a line never claims a
  number the signal does not have.
- ``none``: only the line ``Sleep stage: <stage>``.

A ``measures`` mapping holds: ``delta theta alpha sigma beta`` (relative band power, % of 0.5-30 Hz),
``ptp`` (peak-to-peak amplitude, µV), ``slow_waves`` (% of the epoch covered by high-amplitude
0.5-2 Hz waves) and ``spindles`` (count of sigma bursts like spindles).
"""
from __future__ import annotations

import random
from typing import Mapping

from eeg_core.answer import stage_line
from eeg_core.stages import STAGES, check_stage

COT_MODES: tuple[str, ...] = ("stage", "measured", "none")

QUESTIONS: tuple[str, ...] = (
    "This image shows a 30-second EEG epoch. Which sleep stage is it?",
    "Classify the sleep stage of this 30-second EEG epoch (W, N1, N2, N3 or REM).",
    "Look at this EEG epoch and score its sleep stage following the AASM rules.",
    "What is the sleep stage of the EEG epoch shown in the image? Reason step by step.",
    "Score this 30-s single-channel EEG epoch as W, N1, N2, N3 or REM.",
)

# Criteria in the order they are checked; each stage's line when it is met and when it is not.
CHECK_ORDER: tuple[str, ...] = ("W", "N3", "N2", "N1", "REM")

_STAGE_STEPS: dict[str, tuple[str, str]] = {
    "W": (
        "Wake: an alpha rhythm (8-12 Hz) fills more than half of the epoch, so the wake criteria are met.",
        "Wake: no alpha rhythm over most of the epoch, so it is not wake.",
    ),
    "N3": (
        "N3: high-amplitude slow waves (0.5-2 Hz, above 75 µV) cover more than 20% of the epoch.",
        "N3: high-amplitude slow waves cover less than 20% of the epoch, so it is not N3.",
    ),
    "N2": (
        "N2: sleep spindles (12-14 Hz) and K-complexes are present.",
        "N2: no sleep spindles or K-complexes, so it is not N2.",
    ),
    "N1": (
        "N1: low-amplitude theta activity (4-8 Hz) with vertex sharp waves replaces the alpha rhythm.",
        "N1: no vertex sharp waves and the theta is not the light-sleep pattern, so it is not N1.",
    ),
    "REM": (
        "REM: low-amplitude mixed-frequency activity with sawtooth waves, as in REM sleep.",
        "REM: no sawtooth waves in low-amplitude mixed-frequency activity.",
    ),
}

_MEASURED_STEPS: dict[str, tuple[str, str]] = {
    "W": (
        "Wake: alpha (8-12 Hz) carries {alpha:.0f}% of the power; the alpha rhythm meets the wake criteria.",
        "Wake: alpha (8-12 Hz) carries {alpha:.0f}% of the power; no sustained alpha rhythm, not wake.",
    ),
    "N3": (
        "N3: slow waves above 75 µV cover {slow_waves:.0f}% of the epoch, {slow_vs_criterion} the 20% criterion "
        "(delta {delta:.0f}%, {ptp:.0f} µV peak to peak); scored N3.",
        "N3: slow waves above 75 µV cover {slow_waves:.0f}% of the epoch, {slow_vs_criterion} the 20% criterion; "
        "not N3.",
    ),
    "N2": (
        "N2: {spindles:d} spindle-like sigma bursts (sigma {sigma:.0f}%) with K-complexes; the N2 criteria are met.",
        "N2: {spindles:d} spindle-like sigma bursts (sigma {sigma:.0f}%); no clear spindles or K-complexes, not N2.",
    ),
    "N1": (
        "N1: theta (4-8 Hz) carries {theta:.0f}% of the power at {ptp:.0f} µV peak to peak, "
        "with vertex sharp waves; light sleep N1.",
        "N1: theta (4-8 Hz) carries {theta:.0f}% of the power; no vertex sharp waves, not N1.",
    ),
    "REM": (
        "REM: low amplitude ({ptp:.0f} µV peak to peak), mixed frequencies (theta {theta:.0f}%, "
        "beta {beta:.0f}%) with sawtooth waves; REM sleep.",
        "REM: no sawtooth waves at {ptp:.0f} µV peak to peak.",
    ),
}

N3_SLOW_WAVE_SHARE = 20.0  # AASM: N3 when high-amplitude slow waves cover more than 20% of the epoch

MEASURE_KEYS: tuple[str, ...] = ("delta", "theta", "alpha", "sigma", "beta", "ptp", "slow_waves", "spindles")


def question(rng: random.Random) -> str:
    """One question drawn from the templates."""
    return rng.choice(QUESTIONS)


def build_answer(stage: str, mode: str = "stage", measures: Mapping[str, float] | None = None) -> str:
    """The chain-of-thought answer for ``stage``; ``measured`` needs the epoch's ``measures``."""
    check_stage(stage)
    if mode not in COT_MODES:
        raise ValueError(f"--cot must be one of {'|'.join(COT_MODES)}, got {mode!r}")
    if mode == "none":
        return stage_line(stage)
    if mode == "measured":
        if measures is None:
            raise ValueError("--cot measured needs the epoch's measures")
        missing = [k for k in MEASURE_KEYS if k not in measures]
        if missing:
            raise ValueError(f"measures lack {', '.join(missing)}")
        values = {k: float(measures[k]) for k in MEASURE_KEYS}
        values["spindles"] = int(measures["spindles"])
        values["slow_vs_criterion"] = "above" if values["slow_waves"] > N3_SLOW_WAVE_SHARE else "below"
        steps = _MEASURED_STEPS
    else:
        values = {}
        steps = _STAGE_STEPS
    lines = []
    for candidate in CHECK_ORDER:
        met = candidate == stage
        lines.append(steps[candidate][0 if met else 1].format(**values))
        if met:
            break
    lines.append(stage_line(stage))
    return "\n".join(lines)


def _example_measures(stage: str, rng: random.Random) -> dict[str, float]:
    """Plausible numbers for a stage (only for example texts; real answers use measured values)."""
    base = {
        "W": (20, 15, 35, 8, 22, 90, 2, 0),
        "N1": (35, 30, 12, 6, 17, 70, 5, 0),
        "N2": (45, 22, 8, 14, 11, 140, 12, 3),
        "N3": (75, 12, 4, 4, 5, 260, 40, 1),
        "REM": (30, 32, 10, 6, 22, 55, 3, 0),
    }[stage]
    out = {k: max(0.0, v * rng.uniform(0.6, 1.4)) for k, v in zip(MEASURE_KEYS, base)}
    out["spindles"] = int(round(out["spindles"]))
    return out


def example_texts(n: int = 200, seed: int = 0) -> list[str]:
    """Representative question and answer strings covering every template, mode and stage."""
    rng = random.Random(seed)
    texts: list[str] = list(QUESTIONS)
    for mode in COT_MODES:
        for stage in STAGES:
            texts.append(build_answer(stage, mode, _example_measures(stage, rng)))
    while len(texts) < n:
        stage = rng.choice(STAGES)
        mode = rng.choice(COT_MODES)
        texts.append(question(rng))
        texts.append(build_answer(stage, mode, _example_measures(stage, rng)))
    return texts[: max(n, len(QUESTIONS) + len(COT_MODES) * len(STAGES))]
