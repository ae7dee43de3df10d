"""Draw 30-s EEG epochs as PNG images with numpy and PIL, across worker processes.

The image is a function of the signal alone: the filtered waveform at a fixed µV scale (clipped) and a
fixed number of pixels per second, black on white; optionally the neighbouring epochs in grey on either
side and a spectrogram panel below. No text, no axes, and no label anywhere in the inputs.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.signal import butter, sosfiltfilt, spectrogram
from tqdm import tqdm

EPOCH_S = 30.0


@dataclass(frozen=True)
class RenderConfig:
    px_per_s: float = 12.0  # 30 s -> 360 px wide
    height: int = 128  # waveform panel height (px)
    uv: float = 150.0  # the panel spans -uv..+uv µV; larger values are clipped
    band: tuple[float, float] = (0.3, 35.0)  # band-pass applied to the whole night before drawing
    context_s: float = 0.0  # seconds of each neighbouring epoch drawn in grey
    spectrogram: bool = False  # add a spectrogram panel below the waveform
    spec_height: int = 48
    spec_fmax: float = 30.0
    spec_db: tuple[float, float] = (-10.0, 30.0)  # dB re 1 µV²/Hz mapped to white..black
    compress_level: int = 1  # PNG zlib level: fast, still lossless

    @property
    def width(self) -> int:
        return int(round((EPOCH_S + 2 * self.context_s) * self.px_per_s))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image in pixels."""
        return self.width, self.height + (self.spec_height if self.spectrogram else 0)


def bandpass(signal: np.ndarray, fs: float, band: tuple[float, float]) -> np.ndarray:
    """Zero-phase Butterworth band-pass of a whole night (the top edge is kept below Nyquist)."""
    lo, hi = band
    hi = min(hi, 0.45 * fs)
    sos = butter(4, (lo, hi), btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, np.asarray(signal, dtype=np.float64))


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


def draw_spectrogram(x: np.ndarray, fs: float, cfg: RenderConfig) -> np.ndarray:
    """Log power 0..spec_fmax Hz (low frequencies at the bottom) as a ``[spec_height, width]`` uint8 image."""
    x = np.nan_to_num(x, nan=0.0)
    nper = int(2 * fs)
    f, _, p = spectrogram(x, fs=fs, nperseg=nper, noverlap=nper * 3 // 4, window="hann", mode="psd")
    p = p[f <= cfg.spec_fmax][::-1]
    db = 10.0 * np.log10(p + 1e-12)
    lo, hi = cfg.spec_db
    grey = 255.0 * (1.0 - np.clip((db - lo) / (hi - lo), 0.0, 1.0))
    img = Image.fromarray(grey.astype(np.uint8), mode="L").resize((cfg.width, cfg.spec_height), Image.BILINEAR)
    return np.asarray(img)


def render_epoch(seg: np.ndarray, fs: float, cfg: RenderConfig) -> Image.Image:
    """The greyscale image of one segment as returned by :func:`segment`."""
    width = cfg.width
    ink = draw_waveform(seg, width, cfg.height, cfg.uv)
    shade = np.zeros(width, dtype=np.uint8)  # ink colour per column: 0 black (the epoch), grey (context)
    c = int(round(cfg.context_s * cfg.px_per_s))
    if c:
        shade[:c] = 170
        shade[width - c :] = 170
    panel = np.where(ink.astype(bool), shade[None, :], np.uint8(255)).astype(np.uint8)
    if cfg.spectrogram:
        panel = np.concatenate([panel, draw_spectrogram(seg, fs, cfg)], axis=0)
    return Image.fromarray(panel, mode="L")


def png_bytes(img: Image.Image, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _render_chunk(args: tuple[list[str], np.ndarray, float, RenderConfig]) -> int:
    paths, segs, fs, cfg = args
    for path, seg in zip(paths, segs):
        _write_atomic(Path(path), png_bytes(render_epoch(seg, fs, cfg), cfg.compress_level))
    return len(paths)


def render_epochs(
    filtered: np.ndarray,
    fs: float,
    epochs: Sequence[int],
    paths: Sequence[str | Path],
    cfg: RenderConfig,
    pool: "mp.pool.Pool | None" = None,
    chunk: int = 32,
    desc: str | None = None,
) -> None:
    """Write one PNG per epoch of a filtered night; with a ``pool`` the chunks run in worker processes."""
    for p in {Path(p).parent for p in paths}:
        p.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(0, len(epochs), chunk):
        idx = epochs[i : i + chunk]
        segs = np.stack([segment(filtered, fs, e, cfg.context_s) for e in idx])
        jobs.append(([str(p) for p in paths[i : i + chunk]], segs, fs, cfg))
    results = pool.imap_unordered(_render_chunk, jobs) if pool is not None else map(_render_chunk, jobs)
    with tqdm(total=len(epochs), desc=desc, unit="epoch", disable=desc is None, leave=False) as bar:
        for done in results:
            bar.update(done)
