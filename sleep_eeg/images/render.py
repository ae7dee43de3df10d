"""Draw 30-s epochs of one or more PSG channels as PNG images with numpy and PIL, across worker processes.

The image is a function of the signals alone, one panel per channel stacked top to bottom, each at its own
fixed scale and band, black on white, at a fixed number of pixels per second:

- an EEG channel: the band-passed waveform at ``±uv`` µV (clipped), optionally with a spectrogram panel below;
- an EOG channel: the waveform at ``±eog_uv`` µV in ``eog_band`` (slow eye movements, blinks, REMs);
- an EMG channel: its level as a filled strip on a log µV scale (``emg_uv``); a 1-Hz channel (Sleep-EDF's
  sleep-cassette EMG, already an rms level) is drawn as it is, a faster one as its 1-s rms.

With ``night_norm`` each channel is first scaled by its own night (:func:`night_scale`): an EEG or EOG
waveform so that the night's median epoch standard deviation is drawn as :data:`NORM_UV` µV, an EMG level so
that the night's median level is :data:`NORM_EMG_UV`. This removes the differences of amplitude between nights,
subjects, electrodes and amplifiers, from the night alone (never its labels); the spectrogram's dB follow the
scaled signal. Prepare and stage scale a recording identically (:func:`prepare_night`).

Neighbouring epochs may be drawn in grey on either side (``context_s``). No text, no axes, and no label
anywhere in the inputs. :meth:`RenderConfig.to_dict` is the record of how an image was drawn; prepare writes
it beside the records (``formats.RENDER_FILE``) and the checkpoints keep it, so that images drawn one way
are never read by a model trained on another.
"""
from __future__ import annotations

import io
import multiprocessing as mp
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy.signal import butter, sosfiltfilt, spectrogram
from tqdm import tqdm

from eeg_core.atomic import atomic_path
from eeg_core.errors import FormatError
from eeg_core.formats import settings_id
from eeg_core.options import option
from eeg_core.stages import EPOCH_S
from sleep_eeg.recording.channels import DEFAULT_CHANNEL, channel_role
from sleep_eeg.signal.filters import bandpass, resample

CONTEXT_GREY = 170  # ink of the neighbouring epochs
# night_norm: the night's median epoch standard deviation is drawn as this many µV (about the real Sleep-EDF
# Fpz-Cz and horizontal EOG medians, so that the default uv / eog_uv keep their meaning) ...
NORM_UV = {"eeg": 20.0, "eog": 25.0}
NORM_EMG_UV = 10.0  # ... and the night's median EMG level as this (the middle of the default log strip 1-100 µV)
# Settings added to RenderConfig after images were first drawn, each with its value that draws what was drawn before
# it existed. At that value a setting stays out of the recorded settings and their id, so render.json files, vision
# modules and LLaVA checkpoints made before it keep their id; at any other value it joins them.
ADDED_SETTINGS: dict[str, Any] = {}


@dataclass(frozen=True)
class RenderConfig:
    """How an epoch image is drawn. The fields made with ``option`` are also ``eeg-vlm prepare``'s flags."""

    channels: tuple[str, ...] = (DEFAULT_CHANNEL,)  # one panel each, top to bottom (prepare's --channels)
    fs: float = option(100.0, "rate (Hz) the channels above 10 Hz are resampled to before they are filtered and "
                              "drawn")
    px_per_s: float = option(12.0, "image width in pixels per second (30 s at 12 px/s: 360 px)")
    height: int = option(128, "EEG panel height (px)")
    uv: float = option(150.0, "µV at an EEG panel's edge (clipped beyond)")
    band: tuple[float, float] = option((0.3, 35.0), "EEG band-pass (Hz), applied to the whole night before drawing",
                                       nargs=2, type=float, metavar=("LO", "HI"))
    eog_height: int = 64
    eog_uv: float = 200.0
    eog_band: tuple[float, float] = (0.3, 10.0)
    emg_height: int = 24
    emg_uv: tuple[float, float] = (1.0, 100.0)  # log scale: the strip's bottom and top
    context_s: float = option(0.0, "seconds of each neighbouring epoch drawn in grey", flag="--context",
                              metavar="SECONDS")
    spectrogram: bool = option(False, "add a spectrogram panel below each EEG panel")
    spec_height: int = 48
    spec_fmax: float = 30.0
    spec_window_s: float = 2.0  # spectrogram window (Hann), hop a quarter of it
    spec_db: tuple[float, float] = (-10.0, 30.0)  # dB re 1 µV²/Hz mapped to white..black
    night_norm: bool = option(False, "scale each channel by its own night's median level "
                                      "(sleep_eeg.images.render.night_scale)")
    compress_level: int = 1  # PNG zlib level: fast, still lossless (not part of the settings' identity)

    def __post_init__(self) -> None:
        # One value, one spelling: 4 and 4.0 px/s draw the same images and must have the same id.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "float":
                value = float(value)
            elif f.type == "int":
                value = int(value)
            elif f.type == "bool":
                value = bool(value)
            elif f.type == "tuple[float, float]":
                value = tuple(float(v) for v in value)
            elif f.type == "tuple[str, ...]":
                value = tuple(str(v) for v in value)
            object.__setattr__(self, f.name, value)
        if not self.channels:
            raise FormatError("render: no channel to draw")
        if len(set(self.channels)) != len(self.channels):
            raise FormatError(f"render: a channel is named twice ({', '.join(self.channels)})")
        for name in ("fs", "px_per_s", "uv", "eog_uv", "spec_window_s"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise FormatError(f"render: {name} must be a positive number, got {getattr(self, name):g}")
        for name in ("height", "eog_height", "emg_height", "spec_height"):
            if getattr(self, name) < 1:
                raise FormatError(f"render: {name} must be at least 1 pixel, got {getattr(self, name)}")
        if not self.context_s >= 0:
            raise FormatError(f"render: context_s must be 0 or more seconds, got {self.context_s:g}")
        if self.width < 1:
            raise FormatError(f"render: {self.px_per_s:g} px/s draws an epoch less than one pixel wide")
        for name in ("band", "eog_band"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise FormatError(f"render: {name} {lo:g}-{hi:g} Hz is not a band (0 < low < high)")
            if hi > self.fs / 2:
                raise FormatError(f"render: the {name} {lo:g}-{hi:g} Hz reaches above half the drawing rate "
                                  f"fs = {self.fs:g} Hz; raise fs or lower the band's top")

    @property
    def width(self) -> int:
        return int(round((EPOCH_S + 2 * self.context_s) * self.px_per_s))

    def panel_height(self, channel: str) -> int:
        role = channel_role(channel)
        if role == "emg":
            return self.emg_height
        if role == "eog":
            return self.eog_height
        return self.height + (self.spec_height if self.spectrogram else 0)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image in pixels."""
        return self.width, sum(self.panel_height(c) for c in self.channels)

    def to_dict(self) -> dict:
        """The settings that decide the pixels (JSON types), with their ``id``."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
             if k != "compress_level" and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}
        return {**d, "id": settings_id(d)}

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "render settings") -> "RenderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"id"})
        if unknown:
            raise FormatError(f"{where}: unknown render setting(s) {', '.join(unknown)}")
        lacking = sorted(known - set(d) - {"compress_level"} - set(ADDED_SETTINGS))
        if "id" in d and lacking:
            raise FormatError(f"{where}: render settings without {', '.join(lacking)} (recorded before every setting "
                              "that changes a pixel was): draw the images again with eeg-vlm prepare and retrain")
        try:
            cfg = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "id"})
        except (TypeError, ValueError) as e:  # a setting of the wrong type: hand-edited
            raise FormatError(f"{where}: unreadable render settings ({e})") from None
        except FormatError as e:  # a value no image can be drawn with
            raise FormatError(f"{where}: {str(e).removeprefix('render: ')}") from None
        if "id" in d and d["id"] != cfg.render_id:
            raise FormatError(f"{where}: render settings do not match their id {d['id']!r} (edited by hand?)")
        return cfg

    @property
    def render_id(self) -> str:
        return self.to_dict()["id"]



def emg_level(signal: np.ndarray, fs: float) -> tuple[np.ndarray, float]:
    """An EMG channel as a level in µV: a channel of 10 Hz or less is taken as a level already (Sleep-EDF's
    1-Hz rms); a faster one becomes its rms over 1-s windows after a 10-Hz high-pass."""
    x = np.asarray(signal, dtype=np.float64)
    if fs <= 10.0:
        return np.abs(x), fs
    sos = butter(4, 10.0, btype="highpass", fs=fs, output="sos")
    x = sosfiltfilt(sos, x)
    n = int(round(fs))
    k = len(x) // n
    return np.sqrt(np.mean(x[: k * n].reshape(k, n) ** 2, axis=1)), 1.0


MIN_RATE_FACTOR = 2.0  # a waveform channel must be sampled at least at twice the top of its band


def check_rates(signals: Mapping[str, tuple[np.ndarray, float]], cfg: RenderConfig, where: str | Path) -> None:
    """An EEG or EOG channel sampled too slowly for its band (below twice its top edge: 70 Hz for the default EEG
    band 0.3-35 Hz) is refused in one line naming the file, the channel and the rate: its images would hold
    nothing of the band."""
    for c in cfg.channels:
        role = channel_role(c)
        if role == "emg":
            continue
        lo, hi = cfg.eog_band if role == "eog" else cfg.band
        rate = float(signals[c][1])
        if not rate >= MIN_RATE_FACTOR * hi:
            raise FormatError(f"{where}: channel {c!r} is sampled at {rate:g} Hz, too slow for its band {lo:g}-{hi:g} "
                              f"Hz (at least {MIN_RATE_FACTOR * hi:g} Hz)")


def prepare_night(signals: Mapping[str, tuple[np.ndarray, float]], cfg: RenderConfig) -> list[tuple[np.ndarray, float]]:
    """Each of ``cfg.channels`` ready to cut into epochs: resampled to ``cfg.fs`` (channels above 10 Hz, see
    ``sleep_eeg.signal.filters.resample``), EEG / EOG band-passed, EMG as its level. Prepare and stage both draw
    through this function and :func:`render_epoch`, so the same recording gives the same pixels in both."""
    out = []
    for c in cfg.channels:
        x, fs = resample(*signals[c], cfg.fs)
        role = channel_role(c)
        x, fs = emg_level(x, fs) if role == "emg" else (bandpass(x, fs, cfg.eog_band if role == "eog" else cfg.band), fs)
        if cfg.night_norm:
            x = x * night_scale(x, fs, role)
        out.append((x, fs))
    return out


def night_scale(x: np.ndarray, fs: float, role: str) -> float:
    """The factor that brings a prepared channel (a filtered waveform, or an EMG level) of a whole recording to the
    drawing level of ``night_norm``: :data:`NORM_UV` over the median standard deviation of its 30-s epochs, or
    :data:`NORM_EMG_UV` over the median EMG level. Robust to artefacts and to how much wake the recording holds
    only as a median is; a flat or empty channel is left as it is (factor 1)."""
    x = np.asarray(x, dtype=np.float64)
    if role == "emg":
        level = float(np.nanmedian(x)) if x.size else 0.0
        target = NORM_EMG_UV
    else:
        n = int(round(EPOCH_S * fs))
        k = len(x) // n
        level = float(np.nanmedian(np.nanstd(x[: k * n].reshape(k, n), axis=1))) if k else 0.0
        target = NORM_UV[role]
    return target / level if np.isfinite(level) and level > 1e-9 else 1.0


def segment(filtered: np.ndarray, fs: float, epoch: int, context_s: float = 0.0) -> np.ndarray:
    """Epoch ``epoch`` with ``context_s`` seconds either side; NaN where the recording has no samples."""
    n = int(round(EPOCH_S * fs))
    c = int(round(context_s * fs))
    start, stop = epoch * n - c, (epoch + 1) * n + c
    out = np.full(stop - start, np.nan)
    a, b = max(start, 0), min(stop, len(filtered))
    if b > a:
        out[a - start : b - start] = filtered[a:b]
    return out


def draw_waveform(x: np.ndarray, width: int, height: int, uv: float) -> np.ndarray:
    """A trace as a ``[height, width]`` uint8 mask (1 = ink): each pixel column spans the min..max of its
    samples joined to the previous column's last sample, so the line is continuous."""
    n = len(x)
    starts = (np.arange(width) * n) // width
    lo = np.minimum.reduceat(x, starts)
    hi = np.maximum.reduceat(x, starts)
    prev_last = np.concatenate([[np.nan], x[np.r_[starts[1:] - 1]]])
    lo = np.where(np.isnan(prev_last), lo, np.minimum(lo, prev_last))
    hi = np.where(np.isnan(prev_last), hi, np.maximum(hi, prev_last))
    scale = (height - 1) / (2.0 * uv)
    mid = (height - 1) / 2.0
    top = np.clip(np.rint(mid - hi * scale), 0, height - 1)  # NaN stays NaN: nothing drawn
    bottom = np.clip(np.rint(mid - lo * scale), 0, height - 1)
    rows = np.arange(height)[:, None]
    return ((rows >= top[None, :]) & (rows <= bottom[None, :])).astype(np.uint8)


def draw_level(x: np.ndarray, width: int, height: int, uv: tuple[float, float]) -> np.ndarray:
    """A level (µV) as a ``[height, width]`` uint8 mask of bars filled from the bottom, log scale from ``uv[0]``
    (empty) to ``uv[1]`` (full); a column takes the level of the sample under it; NaN draws nothing."""
    cols = x[(np.arange(width) * len(x)) // width]
    lo, hi = np.log10(uv[0]), np.log10(uv[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.clip((np.log10(np.maximum(cols, 1e-12)) - lo) / (hi - lo), 0.0, 1.0)
    filled = np.where(np.isnan(cols), 0, np.rint(1 + frac * (height - 1)))  # at least one row: the floor
    rows = np.arange(height)[::-1, None]  # row index counted from the bottom
    return (rows < filled[None, :]).astype(np.uint8)


def draw_spectrogram(x: np.ndarray, fs: float, cfg: RenderConfig) -> np.ndarray:
    """Log power 0..spec_fmax Hz (low frequencies at the bottom) as a ``[spec_height, width]`` uint8 image."""
    x = np.nan_to_num(x, nan=0.0)
    nper = int(round(cfg.spec_window_s * fs))
    f, _, p = spectrogram(x, fs=fs, nperseg=nper, noverlap=nper * 3 // 4, window="hann", mode="psd")
    p = p[f <= cfg.spec_fmax][::-1]
    db = 10.0 * np.log10(p + 1e-12)
    lo, hi = cfg.spec_db
    grey = 255.0 * (1.0 - np.clip((db - lo) / (hi - lo), 0.0, 1.0))
    img = Image.fromarray(grey.astype(np.uint8), mode="L").resize((cfg.width, cfg.spec_height), Image.BILINEAR)
    return np.asarray(img)


def render_epoch(segs: Sequence[np.ndarray], rates: Sequence[float], cfg: RenderConfig) -> Image.Image:
    """The greyscale image of one epoch: ``segs[i]`` is channel ``cfg.channels[i]`` as returned by
    :func:`segment` of :func:`prepare_night`'s output, at rate ``rates[i]``."""
    width = cfg.width
    shade = np.zeros(width, dtype=np.uint8)  # ink colour per column: 0 black (the epoch), grey (context)
    c = int(round(cfg.context_s * cfg.px_per_s))
    if c:
        shade[:c] = CONTEXT_GREY
        shade[width - c :] = CONTEXT_GREY
    panels = []
    for channel, seg, fs in zip(cfg.channels, segs, rates):
        role = channel_role(channel)
        if role == "emg":
            ink = draw_level(seg, width, cfg.emg_height, cfg.emg_uv)
        else:
            ink = draw_waveform(seg, width, *((cfg.eog_height, cfg.eog_uv) if role == "eog" else (cfg.height, cfg.uv)))
        panels.append(np.where(ink.astype(bool), shade[None, :], np.uint8(255)).astype(np.uint8))
        if role == "eeg" and cfg.spectrogram:
            panels.append(draw_spectrogram(seg, fs, cfg))
    return Image.fromarray(np.concatenate(panels, axis=0), mode="L")


def epoch_segments(night: Sequence[tuple[np.ndarray, float]], epochs: Sequence[int], cfg: RenderConfig) -> list[list[np.ndarray]]:
    """Per epoch, the segments of every channel of a :func:`prepare_night` night."""
    return [[segment(x, fs, e, cfg.context_s) for x, fs in night] for e in epochs]


def render_night(signals: Mapping[str, tuple[np.ndarray, float]], epochs: Sequence[int], cfg: RenderConfig) -> list[Image.Image]:
    """A night's epochs drawn in memory (no files): ``signals`` maps each of ``cfg.channels`` to
    ``(samples in µV, rate in Hz)`` of the whole recording."""
    missing = [c for c in cfg.channels if c not in signals]
    if missing:
        raise FormatError(f"render: no signal for channel(s) {', '.join(missing)}")
    night = prepare_night(signals, cfg)
    rates = [fs for _, fs in night]
    return [render_epoch(segs, rates, cfg) for segs in epoch_segments(night, epochs, cfg)]


def png_bytes(img: Image.Image, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _render_chunk(args: tuple[list[str], list[list[np.ndarray]], list[float], RenderConfig]) -> int:
    paths, segs, rates, cfg = args
    for path, seg in zip(paths, segs):
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(png_bytes(render_epoch(seg, rates, cfg), cfg.compress_level))
    return len(paths)


def render_epochs(
    night: Sequence[tuple[np.ndarray, float]],
    epochs: Sequence[int],
    paths: Sequence[str | Path],
    cfg: RenderConfig,
    pool: "mp.pool.Pool | None" = None,
    chunk: int = 32,
    desc: str | None = None,
) -> None:
    """Write one PNG per epoch of a :func:`prepare_night` night; with a ``pool`` the chunks run in worker processes."""
    for p in {Path(p).parent for p in paths}:
        p.mkdir(parents=True, exist_ok=True)
    rates = [fs for _, fs in night]
    jobs = []
    for i in range(0, len(epochs), chunk):
        jobs.append(([str(p) for p in paths[i : i + chunk]], epoch_segments(night, epochs[i : i + chunk], cfg), rates, cfg))
    results = pool.imap_unordered(_render_chunk, jobs) if pool is not None else map(_render_chunk, jobs)
    with tqdm(total=len(epochs), desc=desc, unit="epoch", disable=desc is None, leave=False) as bar:
        for done in results:
            bar.update(done)
