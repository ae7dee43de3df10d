"""``eeg-vlm synth``: synthetic Sleep-EDF-style nights (``SC9ssNE0-PSG.edf`` + ``SC9ssNEC-Hypnogram.edf``).

The stage sequence follows sleep cycles of ~90 min: N3 early in the night, REM longer later, brief
awakenings between cycles, a little stage flicker and rare movement time. Each 30-s epoch carries what a
scorer looks for in its stage:

- W: alpha (8-12 Hz) over most of the epoch, muscle activity, eye blinks;
- N1: theta (4-8 Hz), vertex sharp waves, slow eye movements, little alpha;
- N2: sleep spindles (12-14 Hz) and K-complexes on a theta / delta background;
- N3: high-amplitude 0.5-2 Hz waves over 20-90 % of the epoch (R&K S4 when over half);
- REM: low-amplitude mixed frequencies, sawtooth-wave trains, rapid eye movements, no muscle tone.

Amplitudes, peak frequencies and noise vary per subject (and a little per night and per epoch), so the
stages are learnable from one epoch but not trivially.
"""
from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.special import ndtri

from sleep_eeg.edf import write_night

FS = 100.0
EPOCH_S = 30
MOVE = "MT"  # movement time in the generated sequence
RK_TEXT = {"W": "Sleep stage W", "N1": "Sleep stage 1", "N2": "Sleep stage 2", "REM": "Sleep stage R",
           MOVE: "Movement time"}


@dataclass(frozen=True)
class Subject:
    """Per-subject signal parameters."""

    gain: float
    alpha_hz: float
    alpha_uv: float
    theta_hz: float
    spindle_hz: float
    spindle_uv: float
    delta_uv: float
    background_uv: float
    emg_uv: float
    noise_uv: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Subject":
        return cls(
            gain=rng.uniform(0.75, 1.25),
            alpha_hz=rng.uniform(8.5, 11.5),
            alpha_uv=rng.uniform(14.0, 28.0),
            theta_hz=rng.uniform(4.5, 7.0),
            spindle_hz=rng.uniform(12.0, 14.0),
            spindle_uv=rng.uniform(18.0, 32.0),
            delta_uv=rng.uniform(38.0, 55.0),
            background_uv=rng.uniform(6.0, 11.0),
            emg_uv=rng.uniform(3.0, 7.0),
            noise_uv=rng.uniform(1.0, 4.0),
        )


# ---------------------------------------------------------------------------------------------
# Stage sequence
# ---------------------------------------------------------------------------------------------
def synth_hypnogram(rng: np.random.Generator, hours: float = 8.0) -> list[str]:
    """One label per 30-s epoch (W N1 N2 N3 REM, or MT for movement); durations scale with ``hours``."""
    n_total = max(4, int(round(hours * 3600 / EPOCH_S)))
    scale = hours / 8.0

    def ep(minutes: float) -> int:
        return max(1, int(round(minutes * scale * 60 / EPOCH_S)))

    onset = ["W"] * ep(rng.uniform(10, 30))
    morning = ["W"] * ep(rng.uniform(10, 30))
    sleep: list[str] = []
    for k in range(6):
        n3 = (rng.uniform(25, 45), rng.uniform(10, 25), rng.uniform(0, 10), 0, 0, 0)[k]
        rem = (rng.uniform(5, 12), rng.uniform(12, 22), rng.uniform(18, 28), rng.uniform(22, 35),
               rng.uniform(25, 40), rng.uniform(25, 40))[k]
        n1 = rng.uniform(1, 5) if k == 0 else rng.uniform(0.5, 3)
        n2 = max(10.0, rng.uniform(80, 110) - n1 - n3 - rem)
        split = rng.uniform(0.4, 0.7)
        cycle = ["N1"] * ep(n1) + ["N2"] * ep(n2 * split)
        cycle += ["N3"] * ep(n3) if n3 >= 2 else []
        cycle += ["N2"] * ep(n2 * (1 - split)) + ["REM"] * ep(rem)
        if rng.random() < 0.6:  # brief awakening after REM, back to sleep through N1
            cycle += ["W"] * int(rng.integers(1, 4)) + ["N1"] * int(rng.integers(1, 3))
        sleep += cycle
    sleep = sleep[: max(1, n_total - len(onset) - len(morning))]
    seq = onset + sleep + morning
    seq = (seq + ["W"] * n_total)[:n_total]
    # stage flicker and movement time inside the night (not at its edges)
    for i in range(1, n_total - 1):
        u = rng.random()
        if seq[i] == "N2" and seq[i - 1] == seq[i + 1] == "N2" and u < 0.04:
            seq[i] = "N1"
        elif seq[i] == "N3" and seq[i - 1] == seq[i + 1] == "N3" and u < 0.08:
            seq[i] = "N2"
        elif seq[i] != "W" and u > 0.995:
            seq[i] = MOVE
    return seq


def hypnogram_annotations(texts: Sequence[str]) -> list[tuple[float, float, str]]:
    """Run-length ``(onset_s, duration_s, text)`` annotations of one text per epoch."""
    out: list[tuple[float, float, str]] = []
    start = 0
    for i in range(1, len(texts) + 1):
        if i == len(texts) or texts[i] != texts[start]:
            out.append((start * EPOCH_S, (i - start) * EPOCH_S, texts[start]))
            start = i
    return out


# ---------------------------------------------------------------------------------------------
# Signal
# ---------------------------------------------------------------------------------------------
def _shaped_noise(rng: np.random.Generator, n: int, fs: float, lo: float, hi: float, pink: bool = False) -> np.ndarray:
    """Unit-rms noise limited to ``lo..hi`` Hz (1/f power when ``pink``)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / fs)
    gain = ((f >= lo) & (f <= hi)).astype(float)
    if pink:
        gain /= np.sqrt(np.maximum(f, lo))
    x = np.fft.irfft(spec * gain, n)
    return x / (x.std() + 1e-12)


def _per_sample(values: np.ndarray, n_per: int, ramp_s: float = 2.0, fs: float = FS) -> np.ndarray:
    """Per-epoch values held over each epoch, with ``ramp_s`` linear-ish ramps at the boundaries."""
    x = np.repeat(np.asarray(values, dtype=float), n_per)
    return uniform_filter1d(x, size=max(1, int(ramp_s * fs)), mode="nearest")


def _bursts(rng: np.random.Generator, fraction: np.ndarray, fs: float, rate_hz: float = 0.25) -> np.ndarray:
    """An envelope in [0, 1] on for about ``fraction`` (per sample) of the time, in bursts of a few s."""
    s = _shaped_noise(rng, len(fraction), fs, 0.0, rate_hz)
    thr = ndtri(1.0 - np.clip(fraction, 1e-3, 1 - 1e-3))
    return np.clip((s - thr) / 0.3 + 0.5, 0.0, 1.0)


def _oscillation(rng: np.random.Generator, n: int, fs: float, hz: float, jitter_hz: float) -> np.ndarray:
    drift = jitter_hz * _shaped_noise(rng, n, fs, 0.0, 0.1)
    return np.sin(2 * np.pi * np.cumsum(hz + drift) / fs + rng.uniform(0, 2 * np.pi))


def _add(x: np.ndarray, at: int, wave: np.ndarray) -> None:
    a, b = max(at, 0), min(at + len(wave), len(x))
    if b > a:
        x[a:b] += wave[a - at : b - at]


def synth_signal(
    rng: np.random.Generator, subject: Subject, stages: Sequence[str], fs: float = FS
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The two EEG channels (µV) of a night and the R&K text per epoch (N3 as S3 or S4)."""
    n_per = int(EPOCH_S * fs)
    n = n_per * len(stages)
    st = np.asarray(stages)
    g = subject.gain * rng.uniform(0.9, 1.1)  # night-to-night change of the same subject
    jitter = rng.uniform(0.8, 1.2, size=len(st))  # epoch-to-epoch amplitude variation

    def level(table: dict[str, float]) -> np.ndarray:
        return np.array([table.get(s, 0.0) for s in st]) * jitter

    # continuous rhythms with stage-dependent envelopes
    background = _shaped_noise(rng, n, fs, 0.3, 35.0, pink=True) * _per_sample(
        level({"W": 1.0, "N1": 1.0, "N2": 1.2, "N3": 1.3, "REM": 0.9, MOVE: 1.0}), n_per) * subject.background_uv
    alpha = _oscillation(rng, n, fs, subject.alpha_hz, 0.3) * subject.alpha_uv * _per_sample(
        level({"W": 1.0, "N1": 0.5, "REM": 0.4}), n_per) * _bursts(
        rng, _per_sample(np.array([{"W": rng.uniform(0.6, 0.9), "N1": 0.15, "REM": 0.1}.get(s, 0.0) for s in st]), n_per), fs)
    theta = _oscillation(rng, n, fs, subject.theta_hz, 0.6) * 16.0 * _per_sample(
        level({"W": 0.2, "N1": 1.3, "N2": 0.7, "N3": 0.4, "REM": 0.9}), n_per) * _bursts(
        rng, _per_sample(np.array([{"N1": 0.6, "N2": 0.35, "REM": 0.45}.get(s, 0.15) for s in st]), n_per), fs, 0.4)
    sw_fraction = np.array([rng.uniform(0.3, 0.95) if s == "N3" else {"N2": 0.2, "N1": 0.05}.get(s, 0.02) for s in st])
    delta_level = level({"W": 0.25, "N1": 0.35, "N2": 0.5, "N3": 1.0, "REM": 0.3, MOVE: 0.5})
    delta = _shaped_noise(rng, n, fs, 0.5, 2.0) * subject.delta_uv * _per_sample(delta_level, n_per) * _bursts(
        rng, _per_sample(sw_fraction, n_per), fs, 0.15)
    emg = _shaped_noise(rng, n, fs, 20.0, 45.0) * subject.emg_uv * _per_sample(
        level({"W": 1.0, "N1": 0.5, "N2": 0.3, "N3": 0.3, "REM": 0.1, MOVE: 20.0}), n_per, 0.5)
    noise = rng.standard_normal(n) * subject.noise_uv
    events = np.zeros(n)  # transients that a frontal lead sees
    eye = np.zeros(n)  # eye movements and blinks (strong at Fpz-Cz, weak at Pz-Oz)

    t = np.arange(int(3 * fs)) / fs
    for i, s in enumerate(st):
        e0 = i * n_per
        def at(margin_s: float = 1.5) -> int:
            return e0 + int(rng.uniform(margin_s, EPOCH_S - margin_s) * fs)
        if s == "W":
            for _ in range(rng.integers(0, 3)):  # blinks
                _add(eye, at(), rng.uniform(80, 180) * np.exp(-0.5 * ((t[:60] - 0.3) / 0.08) ** 2))
        elif s == "N1":
            for _ in range(rng.integers(1, 4)):  # vertex sharp waves
                a = rng.uniform(50, 90)
                _add(events, at(), -a * np.exp(-0.5 * ((t[:60] - 0.25) / 0.05) ** 2)
                     + 0.35 * a * np.exp(-0.5 * ((t[:60] - 0.4) / 0.08) ** 2))
            if rng.random() < 0.6:  # slow eye movement
                dur = rng.uniform(2.0, 4.0)
                k = int(dur * fs)
                _add(eye, at(4.0) - k // 2, rng.choice([-1, 1]) * rng.uniform(30, 60) * np.sin(np.pi * np.arange(k) / k))
        elif s == "N2":
            n_sp, n_kc = rng.integers(1, 4), rng.integers(0, 3)
            if rng.random() < 0.15:
                n_sp = 0
                n_kc = max(n_kc, 1)
            for _ in range(n_sp):  # spindles
                dur = rng.uniform(0.6, 1.6)
                k = np.arange(int(dur * fs)) / fs
                env = np.sin(np.pi * k / dur) ** 2
                f = subject.spindle_hz + rng.uniform(-0.4, 0.4)
                _add(events, at(), rng.uniform(0.7, 1.3) * subject.spindle_uv * env * np.sin(2 * np.pi * f * k))
            for _ in range(n_kc):  # K-complexes: sharp negative then slower positive wave
                a = rng.uniform(70, 140)
                _add(events, at(), -a * np.exp(-0.5 * ((t[:150] - 0.3) / 0.1) ** 2)
                     + 0.6 * a * np.exp(-0.5 * ((t[:150] - 0.75) / 0.18) ** 2))
        elif s == "N3" and rng.random() < 0.3:
            dur = rng.uniform(0.5, 1.0)
            k = np.arange(int(dur * fs)) / fs
            _add(events, at(), 0.6 * subject.spindle_uv * np.sin(np.pi * k / dur) ** 2
                 * np.sin(2 * np.pi * subject.spindle_hz * k))
        elif s == "REM":
            for _ in range(rng.integers(1, 4)):  # sawtooth-wave trains, 2-3 Hz
                f = rng.uniform(2.0, 3.2)
                k = np.arange(int(rng.integers(3, 7) / f * fs)) / fs
                ramp = 2 * ((k * f) % 1.0) - 1  # slow rise, sharp fall
                _add(events, at(), rng.uniform(20, 40) * ramp * np.hanning(len(k)) ** 0.3)
            for _ in range(rng.integers(1, 5)):  # rapid eye movements
                a = rng.choice([-1, 1]) * rng.uniform(40, 90)
                rise = 1 / (1 + np.exp(-(t[:100] - 0.15) / 0.03))
                _add(eye, at(), a * rise * np.exp(-np.maximum(t[:100] - 0.2, 0) / 0.3))

    common = g * (background + theta + delta + events) + emg + noise
    fpz = common + g * (alpha + eye)
    pz = common + g * (1.8 * alpha + 0.15 * eye)
    texts = []
    for s, frac in zip(st, sw_fraction):
        texts.append(("Sleep stage 4" if frac > 0.55 else "Sleep stage 3") if s == "N3" else RK_TEXT[s])
    return {"EEG Fpz-Cz": fpz, "EEG Pz-Oz": pz}, texts


SYNTH_PREFIX = "SC9"  # real Sleep-EDF nights are SC4ss / ST7ss: synthetic ones never share their names


def night_names(index: int, nights_per_subject: int) -> tuple[str, str]:
    """Sleep-EDF-style names for the ``index``-th night, in their own ``SC9`` series so that they cannot
    collide with real Sleep-EDF files in one folder: (``SC9ssNE0-PSG.edf``, ``SC9ssNEC-Hypnogram.edf``)."""
    subject, night = divmod(index, nights_per_subject)
    stem = f"{SYNTH_PREFIX}{subject:02d}{night + 1}E"
    return f"{stem}0-PSG.edf", f"{stem}C-Hypnogram.edf"


def synth_nights(out: str | Path, nights: int, seed: int = 0, hours: float = 8.0, nights_per_subject: int = 1) -> list[Path]:
    """Write ``nights`` synthetic nights into ``out``; returns the PSG paths."""
    if nights < 1 or hours <= 0 or nights_per_subject < 1:
        raise ValueError("--nights, --hours and --nights-per-subject must be positive")
    if (nights - 1) // nights_per_subject > 99:
        raise ValueError("at most 100 subjects (Sleep-EDF names have two subject digits)")
    out = Path(out)
    written = []
    subjects: dict[int, Subject] = {}
    for i in range(nights):
        rng = np.random.default_rng([seed, i])
        s_idx = i // nights_per_subject
        if s_idx not in subjects:
            subjects[s_idx] = Subject.draw(np.random.default_rng([seed, 10_000 + s_idx]))
        stages = synth_hypnogram(rng, hours)
        signals, texts = synth_signal(rng, subjects[s_idx], stages)
        start = datetime.datetime(1989, 4, 24, 22, 0) + datetime.timedelta(minutes=int(rng.integers(0, 90)))
        psg_name, hyp_name = night_names(i, nights_per_subject)
        write_night(out / psg_name, out / hyp_name, signals, FS, hypnogram_annotations(texts), start)
        written.append(out / psg_name)
        counts = {s: stages.count(s) for s in ("W", "N1", "N2", "N3", "REM", MOVE)}
        print(f"{psg_name}: {len(stages)} epochs " + " ".join(f"{k} {v}" for k, v in counts.items()))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eeg-vlm synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the EDF files")
    p.add_argument("--nights", type=int, default=10, help="number of nights")
    p.add_argument("--nights-per-subject", type=int, default=1, help="nights recorded from each subject")
    p.add_argument("--hours", type=float, default=8.0, help="length of each night (8 h = 960 epochs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        synth_nights(args.out, args.nights, args.seed, args.hours, args.nights_per_subject)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    from eeg_vlm.cli import run

    run(main)
