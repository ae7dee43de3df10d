"""``eeg-vlm synth``: synthetic Sleep-EDF-style nights, calibrated to real sleep-cassette figures.

Each night is a pair ``SC9ssNE0-PSG.edf`` + ``SC9ssNEC-Hypnogram.edf`` (its own ``SC9`` series, so it
never shares a name with a real Sleep-EDF file) holding EEG Fpz-Cz, EEG Pz-Oz and EOG horizontal at
100 Hz and EMG submental at 1 Hz, as in Sleep-EDF's sleep-cassette files. Every figure used here lives
in ``sleepedf_calibration.json`` beside this file, with its source; ``scripts/fit_synth_calibration.py``
rebuilds it from the real figures and hypnograms.

How a night is made:

1. **Stages**: a semi-Markov chain fitted to 115 real hypnograms (bout lengths per stage, transitions
   between bouts, both by third of the sleep period so N3 comes early and REM late), then calibrated
   so that stage shares by third and overall match all 153 real nights; 30 min of wake before and
   after sleep (as Sleep-EDF is usually trimmed), and a few unscored (``?``) and movement epochs.
2. **Spectra**: per epoch and channel, the five log relative band powers (0.5-4, 4-8, 8-12, 12-16,
   16-30 Hz) are drawn from the real per-stage means, spreads and correlations. A night-level shift of
   the real between-night size (shared in part by a subject's nights) and an epoch-to-epoch
   autocorrelation are part of the draw, not added on top of it; so is a lean of each epoch towards a
   neighbouring stage, one for all channels (an epoch is scored by its majority), which keeps the three
   channels about as redundant as real ones.
3. **Morphology** at realistic rates: alpha in eyes-closed wake, blinks and saccades in wake, vertex
   waves and slow eye movements in N1, spindles and K-complexes in N2, high-amplitude slow waves in
   N3, sawtooth waves and rapid eye movements in REM; the rates follow each epoch's drawn spectrum.
4. **Calibration of the signal**: each band of each epoch is rescaled so that the reference measure
   (:func:`sleep_eeg.signal.bands.log_relative_band_power`) reads the drawn spectrum back.
   **Absolute levels** (fitted on the per-epoch features of 20 real nights): per stage and EEG channel the
   0.5-30 Hz power, the 30-50 Hz floor and the drift below 0.5 Hz, with the real spread between epochs
   and nights and a slow wander across the night (:func:`_levels`); so variance, absolute band powers and
   Hjorth mobility read as real ones (``benchmarks/realism.py``, (c) and (d)).
5. **EMG** as a 1-Hz level whose stage distributions overlap (lowest in REM), with twitches, and
   **artefacts**: movement bursts in a few scored epochs and in the movement epochs.

Same seed, same files.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import fft as sp_fft
from scipy.ndimage import gaussian_filter1d

from eeg_core.options import add_options, option, options_from_args
from eeg_core.stages import EPOCH_S, STAGES
from sleep_eeg.recording.edf import write_night
from sleep_eeg.recording.stages import MOVEMENT_TEXT, RK_S4_TEXT, RK_TEXT, UNSCORED_TEXT
from sleep_eeg.signal.bands import BANDS, log_relative_band_power

CALIBRATION = Path(__file__).with_name("sleepedf_calibration.json")
FS = 100.0
EEG_CHANNELS = ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal")
EMG_CHANNEL = "EMG submental"
RATES = {**{c: FS for c in EEG_CHANNELS}, EMG_CHANNEL: 1.0}
UNSCORED, MOVE = "?", "MT"  # epochs without a stage in the generated sequence
# R&K annotation text of each generated stage (N3 is written as S3 or S4 by its slow-wave content).
ANNOTATION = {**RK_TEXT, UNSCORED: UNSCORED_TEXT, MOVE: MOVEMENT_TEXT}
N_PER = int(EPOCH_S * FS)


@functools.cache
def load_calibration(path: str | Path = CALIBRATION) -> dict:
    """The figures the generator uses (see ``scripts/fit_synth_calibration.py``)."""
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Subject:
    """What stays the same across one subject's nights."""

    alpha_hz: float
    spindle_hz: float
    z: np.ndarray  # [channel, 5] standard-normal subject part of the night-level spectral shift
    log_gain: np.ndarray  # [channel] standard-normal subject part of the night-level amplitude shift
    emg_log: float  # EMG level offset, natural log

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Subject":
        return cls(
            alpha_hz=rng.uniform(8.5, 11.5),
            spindle_hz=rng.uniform(12.0, 14.5),
            z=rng.standard_normal((len(EEG_CHANNELS), len(BANDS))),
            log_gain=rng.standard_normal(len(EEG_CHANNELS)),
            emg_log=rng.normal(0.0, load_calibration()["emg"]["between_subject_log_sd"]),
        )


# ---------------------------------------------------------------------------------------------
# 1. Stage sequence
# ---------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, weights: Sequence[float]) -> int:
    """An index drawn with probability proportional to ``weights`` (stored rounded, so not exactly 1)."""
    c = np.cumsum(weights)
    return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(c) - 1)


def _duration(rng: np.random.Generator, model: dict, stage: str, third: int) -> int:
    """A bout length (epochs) from the fitted histogram: exact lengths, then wider bins drawn uniformly."""
    edges = model["duration_bin_edges"]
    pmf = model["duration_pmf"][stage][third]
    k = _pick(rng, pmf)
    return int(rng.integers(edges[k], edges[k + 1]))


def sample_hypnogram(
    rng: np.random.Generator, n_epochs: int | None = None, calibration: dict | None = None
) -> list[str]:
    """One night's stages, one per 30-s epoch: W N1 N2 N3 REM, ``?`` (unscored) or ``MT`` (movement).

    Parameters
    ----------
    rng : numpy Generator
    n_epochs : int, optional
        Length of the recording; by default the sleep period is drawn from the fitted real
        distribution and 30 min of wake is added on each side (trailing wake may be shorter). A
        recording shorter than a typical night is a night in miniature: the same structure by third,
        with its edges of wake shortened in proportion, so that stage shares stay real.
    calibration : dict, optional
        The figures (default: ``sleepedf_calibration.json``).
    """
    cal = calibration or load_calibration()
    model = cal["hypnogram_model"]
    lead = model["edge_wake_epochs"]
    trail = lead if rng.random() < model["trail_full_prob"] else int(rng.integers(0, lead))
    if n_epochs is None:
        spt = int(np.clip(np.exp(rng.normal(*model["sleep_period_lognormal"])), *model["sleep_period_range"]))
    else:  # a shorter recording is a night in miniature: its edges of wake shrink with it
        typical = np.exp(model["sleep_period_lognormal"][0]) + 2 * lead
        scale = min(1.0, n_epochs / typical)
        lead, trail = max(1, round(lead * scale)), round(trail * scale)
        spt = max(1, n_epochs - lead - trail)
    seq: list[str] = []
    stage = model["first_sleep_stage"]
    while len(seq) < spt:  # bout lengths by the third the bout starts in, transitions by the next one's
        seq += [stage] * _duration(rng, model, stage, min(2, 3 * len(seq) // spt))
        row = model["transition"][min(2, 3 * len(seq) // spt)][STAGES.index(stage)]
        stage = STAGES[_pick(rng, row)]
    seq = seq[:spt]
    while len(seq) > 1 and seq[-1] == "W":  # the sleep period ends with sleep
        seq.pop()
    seq = ["W"] * lead + seq + ["W"] * trail
    if n_epochs is not None:
        seq = (seq + ["W"] * n_epochs)[:n_epochs]
    # unscored and movement epochs, inside the sleep period only
    for i in range(lead + 1, len(seq) - trail - 1):
        u = rng.random()
        if u < model["unscored_rate"]:
            seq[i] = UNSCORED
        elif u < model["unscored_rate"] + model["movement_rate"]:
            seq[i] = MOVE
    return seq


def synth_hypnogram(rng: np.random.Generator, hours: float | None = None) -> list[str]:
    """:func:`sample_hypnogram` for a recording of ``hours`` (``None``: a real-length night)."""
    return sample_hypnogram(rng, None if hours is None else max(4, int(round(hours * 3600 / EPOCH_S))))


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
# 2. Per-epoch spectra
# ---------------------------------------------------------------------------------------------
def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """A square root of a symmetric matrix that is positive semi-definite up to rounding."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return v * np.sqrt(np.clip(w, 0.0, None))


def sample_spectra(rng: np.random.Generator, subject: Subject, stages: Sequence[str]) -> np.ndarray:
    """``[channel, epoch, 5]`` log relative band powers; epochs without a stage borrow the previous one's.

    Per stage s and channel: total covariance ``corr * std std^T`` (the real per-epoch spread) is split
    into a night part ``corr * b b^T`` (``b`` = between-night std) and the rest, the within-night part.
    The night part is one draw per night, from a subject component and a per-night, per-stage
    component; the within part follows an AR(1) over epochs, with a component shared across channels.
    Relative powers are renormalised to sum to one, as real ones do.
    """
    cal = load_calibration()
    spec, mix = cal["spectra"], cal["spectra_model"]
    stages = _scored(stages)
    n, n_ch, n_b = len(stages), len(EEG_CHANNELS), len(BANDS)
    phi, rho, share = mix["epoch_ar1"], mix["cross_channel_corr"], mix["night_shift_subject_share"]
    amb = mix.get("ambiguity_sd", 0.0)
    # epoch residuals: AR(1) in time, partly shared across channels
    eps = np.sqrt(rho) * rng.standard_normal((n, 1, n_b)) + np.sqrt(1 - rho) * rng.standard_normal((n, n_ch, n_b))
    u = np.empty_like(eps)
    u[0] = eps[0]
    for i in range(1, n):
        u[i] = phi * u[i - 1] + np.sqrt(1 - phi**2) * eps[i]
    # how far each epoch leans towards a neighbouring stage (one value for all channels): a 30-s epoch
    # is scored by its majority, so epochs near a transition hold some of the next stage's activity
    e = rng.standard_normal(n)
    lean = np.empty(n)
    lean[0] = e[0]
    for i in range(1, n):
        lean[i] = phi * lean[i - 1] + np.sqrt(1 - phi**2) * e[i]
    lean *= amb
    e_abs, e_sq = amb * np.sqrt(2 / np.pi), amb**2
    out = np.empty((n_ch, n, n_b))
    idx = np.array([STAGES.index(s) for s in stages])
    for c, ch in enumerate(EEG_CHANNELS):
        mean = {s: np.asarray(spec[ch][s]["mean"]) for s in STAGES}
        for k, s in enumerate(STAGES):
            sel = idx == k
            if not sel.any():
                continue
            d = spec[ch][s]
            corr, sd, b = np.asarray(d["corr"]), np.asarray(d["std"]), np.asarray(d["between_night_std"])
            z = np.sqrt(share) * subject.z[c] + np.sqrt(1 - share) * rng.standard_normal(n_b)
            shift = _psd_sqrt(corr * np.outer(b, b)) @ z
            # the lean: towards the lighter neighbour when negative, the deeper one when positive (the only
            # one where there is one); its mean and spread are taken out of the drawn ones, so the stage's
            # real mean and spread stay as they are
            lighter, deeper = _NEIGHBOURS[s]
            to_l = mean[lighter or deeper] - mean[s]
            to_d = mean[deeper or lighter] - mean[s]
            m = lean[sel]
            lean_part = np.where(m[:, None] < 0, -m[:, None] * to_l, m[:, None] * to_d)
            lean_mean = e_abs * (to_l + to_d) / 2
            lean_cov = e_sq * (np.outer(to_l, to_l) + np.outer(to_d, to_d)) / 2 - np.outer(lean_mean, lean_mean)
            within = _psd_sqrt(corr * (np.outer(sd, sd) - np.outer(b, b)) - lean_cov)
            out[c, sel] = mean[s] - lean_mean + lean_part + shift + u[sel, c] @ within.T
    p = np.exp(out)
    return np.log(p / p.sum(axis=2, keepdims=True))


# The lighter and deeper neighbour of each stage (None where there is none); REM lies between W and N1.
_NEIGHBOURS = {"W": (None, "N1"), "N1": ("W", "N2"), "N2": ("N1", "N3"), "N3": ("N2", None), "REM": ("W", "N1")}


def _scored(stages: Sequence[str]) -> list[str]:
    """Unscored / movement epochs take the stage before them (W at the start)."""
    out, last = [], "W"
    for s in stages:
        last = s if s in STAGES else last
        out.append(last)
    return out


# ---------------------------------------------------------------------------------------------
# 3. Morphology: transient events, in µV, per channel
# ---------------------------------------------------------------------------------------------
def _add(x: np.ndarray, at: int, wave: np.ndarray) -> None:
    a, b = max(at, 0), min(at + len(wave), len(x))
    if b > a:
        x[a:b] += wave[a - at : b - at]


def _gauss(t: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sd) ** 2)


def _band_masks(n: int) -> tuple[int, np.ndarray, list[np.ndarray]]:
    """FFT length, its frequencies, and one 0/1 mask per band of :data:`BANDS`."""
    nfft = sp_fft.next_fast_len(n, real=True)
    f = sp_fft.rfftfreq(nfft, 1 / FS)
    return nfft, f, [(f >= lo) & (f < hi) for lo, hi in BANDS.values()]


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float, tilt: float = 0.5) -> np.ndarray:
    """Unit-rms Gaussian noise limited to ``lo..hi`` Hz with a 1/f**tilt power slope inside the band."""
    nfft = sp_fft.next_fast_len(n, real=True)
    f = sp_fft.rfftfreq(nfft, 1 / FS)
    gain = ((f >= lo) & (f < hi)) / np.maximum(f, lo) ** (tilt / 2)
    x = sp_fft.irfft(sp_fft.rfft(rng.standard_normal(nfft)) * gain, nfft)[:n]
    return x / (x.std() + 1e-12)


def _split_bands(x: np.ndarray) -> np.ndarray:
    """``[5, n]``: ``x`` split into the five bands (zero-phase FFT masks); what lies outside is dropped."""
    nfft, _, masks = _band_masks(len(x))
    spec = sp_fft.rfft(x, nfft)
    return np.stack([sp_fft.irfft(spec * m, nfft)[: len(x)] for m in masks])


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[5, n]`` unit-rms noise per band, 1/f inside the delta band and 1/f**0.5 in the others."""
    nfft, f, masks = _band_masks(n)
    spec = sp_fft.rfft(rng.standard_normal(nfft))
    out = np.empty((len(masks), n))
    for b, m in enumerate(masks):
        x = sp_fft.irfft(spec * m / np.maximum(f, 0.5) ** (0.5 if b == 0 else 0.25), nfft)[:n]
        out[b] = x / (x.std() + 1e-12)
    return out


class _Events:
    """The transient-event canvas ``[channel, samples]`` and the draws every stage's events share."""

    eye_leak = (0.35, 0.05, 1.0)  # how much of a horizontal eye movement each channel sees (Fpz-Cz, Pz-Oz, EOG)
    blink_leak = (1.0, 0.05, 0.3)  # a blink is vertical: frontal EEG sees it in full, a horizontal EOG a little

    def __init__(self, rng: np.random.Generator, n_epochs: int):
        self.rng = rng
        self.ev = np.zeros((len(EEG_CHANNELS), N_PER * n_epochs))
        self.t = np.arange(int(3 * FS)) / FS

    def at(self, e0: int, margin_s: float = 1.0) -> int:
        """A random onset inside the epoch starting at sample ``e0``, ``margin_s`` from its edges."""
        return e0 + int(self.rng.uniform(margin_s, EPOCH_S - margin_s) * FS)

    def eye(self, pos: int, wave: np.ndarray, leak: Sequence[float] | None = None) -> None:
        """An eye movement: the EOG sees all of it, the EEG channels a leak (``leak``: per channel)."""
        for c, k in enumerate(self.eye_leak if leak is None else leak):
            _add(self.ev[c], pos, k * wave)


_FPZ, _PZ, _EOG = 0, 1, 2


def _wake_events(e: _Events, e0: int, rates: dict) -> None:
    """Blinks and saccades."""
    rng, t = e.rng, e.t
    for _ in range(rng.poisson(rates["W_blinks_per_epoch"])):
        e.eye(e.at(e0), rng.uniform(80, 200) * _gauss(t[:60], 0.3, 0.08) * rng.choice([0.3, 1.0]), e.blink_leak)
    for _ in range(rng.poisson(rates["W_saccades_per_epoch"])):
        a = rng.choice([-1, 1]) * rng.uniform(40, 120)
        e.eye(e.at(e0), a * (1 / (1 + np.exp(-(t[:150] - 0.1) / 0.02))) * np.exp(-t[:150] / 1.2))


def _n1_events(e: _Events, e0: int, rates: dict) -> None:
    """Vertex sharp waves and, in some epochs, one slow eye movement."""
    rng, t = e.rng, e.t
    for _ in range(rng.poisson(rates["N1_vertex_per_epoch"])):
        a = rng.uniform(50, 100)
        w = -a * _gauss(t[:60], 0.25, 0.05) + 0.35 * a * _gauss(t[:60], 0.4, 0.08)
        _add(e.ev[_FPZ], e.at(e0), w)
        _add(e.ev[_PZ], e.at(e0), 0.4 * w)
    if rng.random() < rates["N1_slow_eye_movement_prob"]:
        dur = rng.uniform(2.0, 5.0)
        k = int(dur * FS)
        e.eye(e.at(e0, 5.0) - k // 2, rng.choice([-1, 1]) * rng.uniform(50, 120) * np.sin(np.pi * np.arange(k) / k))


def _n2_events(e: _Events, e0: int, rates: dict, sigma_z: float, spindle_hz: float) -> None:
    """Spindles (more where the epoch's sigma share stands ``sigma_z`` above the night's N2 median) and
    K-complexes."""
    rng, t = e.rng, e.t
    for _ in range(rng.poisson(rates["N2_spindles_per_epoch"] * np.exp(sigma_z))):
        dur = rng.uniform(0.5, 2.0)
        k = np.arange(int(dur * FS)) / FS
        w = rng.uniform(15, 35) * np.sin(np.pi * k / dur) ** 2 * np.sin(
            2 * np.pi * (spindle_hz + rng.uniform(-0.5, 0.5)) * k)
        pos = e.at(e0)
        _add(e.ev[_FPZ], pos, w)
        _add(e.ev[_PZ], pos, 0.8 * w)
    for _ in range(rng.poisson(rates["N2_k_complexes_per_epoch"])):
        a = rng.uniform(75, 160)
        w = -a * _gauss(t[:150], 0.3, 0.1) + 0.6 * a * _gauss(t[:150], 0.75, 0.18)
        pos = e.at(e0)
        _add(e.ev[_FPZ], pos, w)
        _add(e.ev[_PZ], pos, 0.5 * w)
        _add(e.ev[_EOG], pos, 0.3 * w)


def _rem_events(e: _Events, e0: int, rates: dict) -> None:
    """Sawtooth-wave trains and, in phasic epochs, bursts of rapid eye movements."""
    rng, t = e.rng, e.t
    for _ in range(rng.poisson(rates["REM_sawtooth_trains_per_epoch"])):
        f = rng.uniform(2.0, 3.5)
        k = np.arange(int(rng.integers(3, 8) / f * FS)) / FS
        w = rng.uniform(20, 45) * (2 * ((k * f) % 1.0) - 1) * np.hanning(len(k)) ** 0.3
        pos = e.at(e0)
        _add(e.ev[_FPZ], pos, w)
        _add(e.ev[_PZ], pos, 0.6 * w)
    if rng.random() < rates["REM_phasic_prob"]:  # rapid eye movements come in bursts
        for _ in range(rng.poisson(rates["REM_eye_movements_per_phasic_epoch"])):
            a = rng.choice([-1, 1]) * rng.uniform(50, 150)
            e.eye(e.at(e0), a * (1 / (1 + np.exp(-(t[:100] - 0.1) / 0.025))) * np.exp(-np.maximum(t[:100] - 0.15, 0) / 0.35))


def _events(rng: np.random.Generator, subject: Subject, stages: Sequence[str], spectra: np.ndarray) -> np.ndarray:
    """``[channel, samples]`` transients whose rates follow each epoch's drawn spectrum: each epoch's
    stage draws its own events (:func:`_wake_events`, :func:`_n1_events`, :func:`_n2_events`,
    :func:`_rem_events`), epoch after epoch from the one ``rng``."""
    e = _Events(rng, len(stages))
    rates = load_calibration()["morphology"]
    # spindle counts follow how far an N2 epoch's drawn sigma share stands from the night's N2 median
    n2_sigma = spectra[_FPZ, np.asarray(_scored(stages)) == "N2", 3]
    n2_median = float(np.median(n2_sigma)) if len(n2_sigma) else 0.0
    for i, s in enumerate(stages):
        e0 = i * N_PER
        if s == "W":
            _wake_events(e, e0, rates)
        elif s == "N1":
            _n1_events(e, e0, rates)
        elif s == "N2":
            _n2_events(e, e0, rates, spectra[_FPZ, i, 3] - n2_median, subject.spindle_hz)
        elif s == "REM":
            _rem_events(e, e0, rates)
    return e.ev


def _alpha(rng: np.random.Generator, subject: Subject, stages: Sequence[str], spectra: np.ndarray) -> np.ndarray:
    """An alpha rhythm (``[channel, samples]``, unit scale) waxing and waning in eyes-closed wake and
    faintly in N1 and REM: those epochs whose drawn alpha share is above their stage's median."""
    n = N_PER * len(stages)
    drift = 0.3 * _band_noise(rng, n, 0.01, 0.1)
    osc = np.sin(2 * np.pi * np.cumsum(subject.alpha_hz + drift) / FS + rng.uniform(0, 2 * np.pi))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * np.cumsum(0.3 + 0.2 * _band_noise(rng, n, 0.01, 0.2)) / FS)
    st = np.asarray(_scored(stages))
    on = np.zeros(len(stages))
    for s, level in (("W", 1.0), ("N1", 0.4), ("REM", 0.3)):
        sel = st == s
        if sel.any():
            on[sel] = level * (spectra[1, sel, 2] > np.median(spectra[1, sel, 2]))
    return osc * env * _ramp(on, 1.0)


def _ramp(values: np.ndarray, seconds: float = 1.0, fs: float = FS) -> np.ndarray:
    """Per-epoch values held over each epoch (sampled at ``fs``), with linear ``seconds``-long ramps between."""
    v = np.asarray(values, dtype=float)
    per, h = EPOCH_S * fs, seconds * fs / 2
    edges = np.arange(1, len(v)) * per
    knots = np.concatenate([[0.0], np.stack([edges - h, edges + h], 1).ravel(), [len(v) * per - 1]])
    vals = np.concatenate([[v[0]], np.stack([v[:-1], v[1:]], 1).ravel(), [v[-1]]])
    return np.interp(np.arange(int(round(len(v) * per))), knots, vals)


# ---------------------------------------------------------------------------------------------
# 4. Signal: background per band + morphology, then each band of each epoch rescaled to its target
# ---------------------------------------------------------------------------------------------
def _smooth_unit(rng: np.random.Generator, n: int, epochs: float) -> np.ndarray:
    """``n`` values of a unit-variance Gaussian process that wanders over about ``epochs`` epochs."""
    k = max(epochs, 1.0)
    pad = int(4 * k)
    x = gaussian_filter1d(rng.standard_normal(n + 2 * pad), k)[pad: pad + n]
    return x * np.sqrt(2 * np.sqrt(np.pi) * k)  # white noise through a Gaussian of sd k has var 1/(2 sqrt(pi) k)


def _levels(rng: np.random.Generator, subject: Subject, stages: Sequence[str], spectra: np.ndarray) -> np.ndarray:
    """``[part, channel, epoch]`` absolute levels of each epoch: 0 the 0.5-30 Hz power (µV²), 1 the mean
    30-50 Hz power density (µV²/Hz), 2 the power below 0.5 Hz (µV², the slow drift).

    Per stage and channel the natural logs have the real means; a night-level shift (shared in part by
    a subject's nights) of the real between-night size, a slow wander across the night, and an AR(1)
    epoch-to-epoch part make up the real spreads. The 30-50 Hz floor follows the epoch's 16-30 Hz power
    with the real correlation (muscle raises both)."""
    lv = load_calibration()["levels"]
    st = _scored(stages)
    idx = np.array([STAGES.index(s) for s in st])
    n = len(st)
    share = load_calibration()["spectra_model"]["night_shift_subject_share"]
    out = np.empty((3, len(EEG_CHANNELS), n))
    for c, ch in enumerate(EEG_CHANNELS):
        d = lv[ch]
        par = {k: np.array([d[s][k] for s in STAGES]) for k in d["W"]}
        night = d["between_night_log_sd"] * (np.sqrt(share) * subject.log_gain[c] + np.sqrt(1 - share) * rng.standard_normal())
        slow = d["slow_log_sd"] * _smooth_unit(rng, n, lv["slow_epochs"])
        eps = rng.standard_normal(n)
        u = np.empty(n)
        u[0] = eps[0]
        phi = lv["epoch_ar1"]
        for i in range(1, n):
            u[i] = phi * u[i - 1] + np.sqrt(1 - phi**2) * eps[i]
        common = night + slow
        log_power = par["log_power"][idx] + common + np.sqrt(np.maximum(par["log_power_sd"][idx] ** 2 - d["slow_log_sd"] ** 2, 0)) * u
        # the 16-30 Hz power of the epoch, standardised within its stage in this night
        beta = log_power + spectra[c, :, 4]
        zb = np.zeros(n)
        for k in range(len(STAGES)):
            sel = idx == k
            if sel.sum() > 1:
                zb[sel] = (beta[sel] - beta[sel].mean()) / (beta[sel].std() + 1e-9)
        r = par["gamma_beta_corr"][idx]
        log_gamma = par["log_gamma_psd"][idx] + common + par["log_gamma_sd"][idx] * (
            r * zb + np.sqrt(1 - r**2) * rng.standard_normal(n))
        log_drift = par["log_drift"][idx] + common + par["log_drift_sd"][idx] * rng.standard_normal(n)
        out[:, c] = np.exp([log_power, log_gamma, log_drift])
    return out


def synth_eeg(
    rng: np.random.Generator, subject: Subject, stages: Sequence[str], spectra: np.ndarray, iterations: int = 2,
    levels: np.ndarray | None = None,
) -> np.ndarray:
    """``[channel, samples]`` µV whose per-epoch log relative band powers read back as ``spectra``.

    Per channel: background noise per band at the epoch's target power, plus the alpha rhythm and the
    transient events, split into the bands; then each band of each epoch is rescaled by
    ``sqrt(target / measured)`` (relative powers both sum to one, so the total power is kept), twice.
    Outside 0.5-30 Hz: the 30-50 Hz floor (1/f) and the slow drift below 0.5 Hz (1/f²) at each epoch's
    level (:func:`_levels`, drawn here unless given: drawing them first from ``rng`` gives the same night),
    which leave the relative band powers as they are.
    """
    n = N_PER * len(stages)
    levels = _levels(rng, subject, stages, spectra) if levels is None else levels
    target = levels[0][:, :, None] * np.exp(spectra)  # [channel, epoch, band] power in µV²
    events = _events(rng, subject, stages, spectra)
    alpha = _alpha(rng, subject, stages, spectra)
    out = np.empty((len(EEG_CHANNELS), n))
    for c in range(len(EEG_CHANNELS)):
        bands = _background(rng, n)
        for b in range(len(BANDS)):
            bands[b] *= _ramp(np.sqrt(target[c, :, b]))
        if c != 2:  # the alpha rhythm holds most of the alpha band where it is on (weaker frontally)
            events[c] += (1.0 if c == 1 else 0.6) * 2.0 * alpha * _ramp(np.sqrt(target[c, :, 2]))
        split = _split_bands(events[c])
        rest = events[c] - split.sum(0)  # what the events hold below 0.5 Hz or above 30 Hz
        bands += split
        for _ in range(iterations):
            gain = np.sqrt(np.exp(spectra[c] - log_relative_band_power(bands.sum(0) + rest, FS)))
            for b in range(len(BANDS)):
                bands[b] *= _ramp(gain[:, b], 0.5)
        floor = _band_noise(rng, n, 30.0, 50.0, tilt=1.0) * _ramp(np.sqrt(levels[1, c] * 20.0))
        drift = _band_noise(rng, n, 0.02, 0.5, tilt=2.0) * _ramp(np.sqrt(levels[2, c]), 10.0)
        out[c] = bands.sum(0) + rest + floor + drift
    return out


def synth_emg(rng: np.random.Generator, subject: Subject, stages: Sequence[str]) -> np.ndarray:
    """EMG submental at 1 Hz (µV, an rms level as in sleep-cassette files): per-stage log-normal levels
    that overlap, lowest in REM, with brief twitches in REM and bursts at movement epochs."""
    emg = load_calibration()["emg"]
    st = _scored(stages)
    level = np.array([emg["log_uv_mean"][s] for s in st]) + subject.emg_log + rng.normal(0, emg["between_night_log_sd"])
    level = level + rng.normal(0.0, emg["epoch_log_sd"], len(st))
    per = int(EPOCH_S * RATES[EMG_CHANNEL])
    x = np.exp(_ramp(level, 3.0, RATES[EMG_CHANNEL]) + rng.normal(0.0, 0.12, per * len(st)))
    for i, s in enumerate(stages):
        if s == "REM":
            for _ in range(rng.poisson(emg["REM_twitches_per_epoch"])):
                x[i * per + int(rng.integers(per))] *= rng.uniform(2.0, 5.0)
        elif s == MOVE:
            x[i * per : (i + 1) * per] *= rng.uniform(4.0, 10.0)
    return x


def _artefacts(rng: np.random.Generator, stages: Sequence[str], eeg: np.ndarray, emg: np.ndarray) -> None:
    """Movement bursts (in place) in movement epochs and in a few scored epochs."""
    rate = load_calibration()["morphology"]["artefact_rate_scored"]
    for i, s in enumerate(stages):
        if s == MOVE or (s in ("W", "N1") and rng.random() < rate * 2) or (s in STAGES and rng.random() < rate / 2):
            dur = EPOCH_S if s == MOVE else rng.uniform(1.0, 5.0)
            k = int(dur * FS)
            pos = i * N_PER + (0 if s == MOVE else int(rng.uniform(0, EPOCH_S - dur) * FS))
            burst = _band_noise(rng, k, 0.5, 20.0, tilt=1.0) * np.hanning(k) ** 0.2
            for c in range(eeg.shape[0]):
                _add(eeg[c], pos, rng.uniform(80, 250) * burst)
            emg[int(pos / FS) : int((pos + k) / FS) + 1] *= rng.uniform(2.0, 6.0)


def synth_signal(
    rng: np.random.Generator, subject: Subject, stages: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """All channels of a night (µV; rates in :data:`RATES`) and the R&K annotation text per epoch."""
    spectra = sample_spectra(rng, subject, stages)
    eeg = synth_eeg(rng, subject, stages, spectra)
    emg = synth_emg(rng, subject, stages)
    _artefacts(rng, stages, eeg, emg)
    signals = {ch: eeg[c] for c, ch in enumerate(EEG_CHANNELS)}
    signals[EMG_CHANNEL] = emg
    n3 = spectra[0, np.asarray(_scored(stages)) == "N3", 0]
    s4 = np.median(n3) if len(n3) else 0.0
    texts = [(RK_S4_TEXT if spectra[0, i, 0] > s4 else RK_TEXT["N3"]) if s == "N3" else ANNOTATION[s]
             for i, s in enumerate(stages)]
    return signals, texts


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
SYNTH_PREFIX = "SC9"  # real Sleep-EDF nights are SC4ss / ST7ss: synthetic ones never share their names


def night_names(index: int, nights_per_subject: int) -> tuple[str, str]:
    """Sleep-EDF-style names for the ``index``-th night, in their own ``SC9`` series so that they cannot
    collide with real Sleep-EDF files in one folder: (``SC9ssNE0-PSG.edf``, ``SC9ssNEC-Hypnogram.edf``)."""
    subject, night = divmod(index, nights_per_subject)
    stem = f"{SYNTH_PREFIX}{subject:02d}{night + 1}E"
    return f"{stem}0-PSG.edf", f"{stem}C-Hypnogram.edf"


def synth_night(seed: int, index: int, nights_per_subject: int = 1, hours: float | None = None):
    """The stages, signals and R&K texts of night ``index`` of a seeded set (what :func:`synth_nights` writes)."""
    subject = Subject.draw(np.random.default_rng([seed, 10_000 + index // nights_per_subject]))
    rng = np.random.default_rng([seed, index])
    stages = synth_hypnogram(rng, hours)
    signals, texts = synth_signal(rng, subject, stages)
    return stages, signals, texts, rng


@dataclass(frozen=True)
class SynthOptions:
    """``eeg-vlm synth``'s options besides the output folder."""

    nights: int = option(10, "number of nights")
    nights_per_subject: int = option(1, "nights recorded from each subject")
    hours: float | None = option(None, "length of each recording (8 h = 960 epochs); default: a real-length night "
                                       "(sleep period drawn from Sleep-EDF, plus 30 min of wake on each side)",
                                 type=float)
    seed: int = option(0)


def synth_nights(out: str | Path, options: SynthOptions | None = None, verbose: bool = True,
                 **overrides) -> list[Path]:
    """Write ``nights`` synthetic nights into ``out``; returns the PSG paths. ``options``: :class:`SynthOptions`,
    with ``overrides`` by keyword applied (``hours`` None: each night of a real length)."""
    opts = replace(options or SynthOptions(), **overrides)
    nights, seed, hours, nights_per_subject = opts.nights, opts.seed, opts.hours, opts.nights_per_subject
    if nights < 1 or (hours is not None and hours <= 0) or nights_per_subject < 1:
        raise ValueError("--nights, --hours and --nights-per-subject must be positive")
    if (nights - 1) // nights_per_subject > 99:
        raise ValueError("at most 100 subjects (Sleep-EDF names have two subject digits)")
    out = Path(out)
    written = []
    for i in range(nights):
        stages, signals, texts, rng = synth_night(seed, i, nights_per_subject, hours)
        start = datetime.datetime(1989, 4, 24, 22, 0) + datetime.timedelta(minutes=int(rng.integers(0, 90)))
        psg_name, hyp_name = night_names(i, nights_per_subject)
        write_night(out / psg_name, out / hyp_name, signals, RATES, hypnogram_annotations(texts), start)
        written.append(out / psg_name)
        if verbose:
            counts = {s: stages.count(s) for s in (*STAGES, UNSCORED, MOVE)}
            print(f"{psg_name}: {len(stages)} epochs " + " ".join(f"{k} {v}" for k, v in counts.items()))
    return written


MIN_EPOCHS = 4  # the shortest night synth_hypnogram draws


def build_parser() -> argparse.ArgumentParser:
    """``eeg-vlm synth``'s command line: the output folder and :class:`SynthOptions`."""
    p = argparse.ArgumentParser(prog="eeg-vlm synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the EDF files")
    add_options(p, SynthOptions)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from eeg_core.outputs import check_out_folder
    from eeg_core.errors import FormatError

    args = build_parser().parse_args(argv)
    opts = options_from_args(SynthOptions, args)
    check_out_folder(args.out)
    if opts.hours is not None and not opts.hours * 3600 >= MIN_EPOCHS * EPOCH_S:
        raise FormatError(f"--hours {opts.hours:g} is {opts.hours * 3600:g} s; a synthetic night is at least "
                          f"{MIN_EPOCHS} epochs of {EPOCH_S:g} s ({MIN_EPOCHS * EPOCH_S / 3600:.4f} h)")
    try:
        synth_nights(args.out, opts)
    except ValueError as e:
        raise FormatError(str(e)) from None
    return 0


if __name__ == "__main__":
    from eeg_core.cli import run

    run(main)
