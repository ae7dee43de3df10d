"""Renderer (fixed scale, nothing but the trace), measured numbers, chain-of-thought texts."""
import numpy as np
import pytest

from eeg_core.answer import stage_line
from eeg_core.errors import FormatError
from eeg_core.stages import STAGES
from sleep_eeg.images import cot
from sleep_eeg.images.measures import epoch_measures
from sleep_eeg.images.render import RenderConfig, render_epoch, render_night, segment

FS = 100.0
T = np.arange(3000) / FS


def ink(img):
    return np.asarray(img) < 255


def test_flat_signal_draws_one_line_and_nothing_else():
    cfg = RenderConfig()
    img = render_epoch([np.zeros(3000)], [FS], cfg)
    assert img.size == (360, 128) and img.mode == "L"
    mask = ink(img)
    assert (mask.sum(axis=0) == 1).all()  # one pixel per column: no text, no axes, no frame
    assert set(np.flatnonzero(mask.any(axis=1))) == {64}


def test_fixed_microvolt_scale_and_clipping():
    cfg = RenderConfig(uv=150.0, height=129)
    rows = np.flatnonzero(ink(render_epoch([75 * np.sin(2 * np.pi * 0.5 * T)], [FS], cfg)).any(axis=1))
    assert rows.min() == 32 and rows.max() == 96  # ±75 µV is half of ±150 µV
    rows = np.flatnonzero(ink(render_epoch([1000 * np.sin(2 * np.pi * 0.5 * T)], [FS], cfg)).any(axis=1))
    assert rows.min() == 0 and rows.max() == 128  # clipped at the edges


def test_context_and_spectrogram_panels():
    cfg = RenderConfig(context_s=5, spectrogram=True)
    night = 30 * np.sin(2 * np.pi * 10 * np.arange(9000) / FS)
    img = np.asarray(render_epoch([segment(night, FS, 0, 5)], [FS], cfg))
    assert img.shape == (128 + 48, 480)
    assert (img[:128, :60] == 255).all()  # before the recording: nothing drawn
    assert set(np.unique(img[:128, 60:420])) == {0, 255} and 170 in img[:128, 420:]  # grey context
    spec = img[128:].astype(float)
    alpha_row = int(round((1 - 10 / 30) * 47))  # 10 Hz, low frequencies at the bottom
    assert spec[alpha_row].mean() < spec[5].mean()  # darker = more power


def test_each_panel_follows_its_own_channel_and_a_1hz_emg_is_drawn():
    cfg = RenderConfig(channels=("EEG Fpz-Cz", "EOG horizontal", "EMG submental"), spectrogram=True)
    n = 4 * 3000
    t = np.arange(n) / FS
    rng = np.random.default_rng(0)
    eeg = 30 * np.sin(2 * np.pi * 10 * t) + rng.normal(0, 5, n)
    eog = 150 * np.sin(2 * np.pi * 0.3 * t)
    emg = np.r_[np.full(60, 50.0), np.full(60, 2.0)]  # 1 Hz: high tone, then atonia
    signals = {"EEG Fpz-Cz": (eeg, FS), "EOG horizontal": (eog, FS), "EMG submental": (emg, 1.0)}
    images = [np.asarray(im) for im in render_night(signals, [0, 3], cfg)]
    rows = np.cumsum([0, 128 + 48, 64, 24])  # EEG + spectrogram, EOG, EMG
    assert images[0].shape == (rows[-1], 360) == (cfg.size[1], cfg.size[0])
    emg_ink = [(im[rows[2]:] < 255).sum(axis=0) for im in images]
    assert emg_ink[0].min() > 18 and emg_ink[1].max() < 6  # 50 µV fills most of the strip, 2 µV a sliver
    quiet_eog = dict(signals, **{"EOG horizontal": (np.zeros(n), FS)})
    changed = [np.asarray(im) for im in render_night(quiet_eog, [0, 3], cfg)]
    for a, b in zip(images, changed):  # only the EOG panel moved
        assert (a[: rows[1]] == b[: rows[1]]).all() and (a[rows[2]:] == b[rows[2]:]).all()
        assert (a[rows[1] : rows[2]] != b[rows[1] : rows[2]]).any()
        assert ((b[rows[1] : rows[2]] < 255).sum(axis=0) == 1).all()  # a flat EOG: one line
    with pytest.raises(FormatError, match="no signal for channel"):
        render_night({"EEG Fpz-Cz": (eeg, FS)}, [0], cfg)


def test_band_powers_against_analytic_values():
    x = 40 * np.sin(2 * np.pi * 2 * T) + 30 * np.sin(2 * np.pi * 10 * T) + 10 * np.sin(2 * np.pi * 20 * T)
    m = epoch_measures(x, FS)
    total = 40**2 + 30**2 + 10**2
    assert m["delta"] == pytest.approx(100 * 40**2 / total, abs=0.5)
    assert m["alpha"] == pytest.approx(100 * 30**2 / total, abs=0.5)
    assert m["beta"] == pytest.approx(100 * 10**2 / total, abs=0.5)
    assert m["theta"] < 0.5 and m["sigma"] < 0.5
    assert m["ptp"] == pytest.approx(x.max() - x.min())


def test_slow_wave_share_and_spindle_count():
    big = 100 * np.sin(2 * np.pi * 1.0 * T)
    half = np.where(T < 15, big, 20 * np.sin(2 * np.pi * 1.0 * T))
    assert epoch_measures(big, FS)["slow_waves"] > 90
    assert 40 < epoch_measures(half, FS)["slow_waves"] < 52
    assert epoch_measures(half * 0.2, FS)["slow_waves"] == 0
    x = 3 * np.random.default_rng(0).standard_normal(3000)
    for c in (400, 1500, 2500):
        x[c:c + 100] += 30 * np.hanning(100) * np.sin(2 * np.pi * 13 * T[:100])
    m = epoch_measures(x, FS)
    assert m["spindles"] == 3 and m["sigma"] > 40


@pytest.mark.parametrize("mode", cot.COT_MODES)
def test_answers_end_with_the_stage_line(mode):
    m = epoch_measures(30 * np.sin(2 * np.pi * 10 * T), FS)
    for stage in STAGES:
        answer = cot.build_answer(stage, mode, m)
        assert answer.splitlines()[-1] == stage_line(stage)
    if mode == "measured":
        assert f"{m['alpha']:.0f}%" in cot.build_answer("W", mode, m)
        with pytest.raises(ValueError):
            cot.build_answer("W", mode, None)


def test_example_texts_cover_every_template_mode_and_stage():
    texts = cot.example_texts(200, seed=1)
    assert len(texts) == 200 and texts == cot.example_texts(200, seed=1)
    assert set(cot.QUESTIONS) <= set(texts)
    for stage in STAGES:
        assert stage_line(stage) in texts  # the 'none' answers
        assert any(t.endswith(stage_line(stage)) and "carries" in t for t in texts)  # measured
        assert cot.build_answer(stage, "stage") in texts


def test_measured_answer_never_claims_a_number_the_signal_lacks():
    """An epoch scored N3 whose slow waves cover only 12% says "below the 20% criterion", not "more than 20%"."""
    from sleep_eeg.images.cot import build_answer

    measures = dict(delta=60, theta=15, alpha=5, sigma=5, beta=5, ptp=180, slow_waves=12, spindles=0)
    scored_n3 = build_answer("N3", "measured", measures)
    assert "cover 12% of the epoch, below the 20% criterion" in scored_n3
    assert scored_n3.endswith("Sleep stage: N3")
    not_n3 = build_answer("N2", "measured", dict(measures, slow_waves=35))
    assert "cover 35% of the epoch, above the 20% criterion; not N3" in not_n3


def test_every_setting_that_changes_a_pixel_is_in_the_render_identity():
    """The drawing rate (signals are resampled to it: prepare --fs), the band edges and the spectrogram window
    change the pixels, so each changes the settings' id; settings recorded before they were are refused."""
    base = RenderConfig(spectrogram=True)
    rng = np.random.default_rng(0)
    signals = {"EEG Fpz-Cz": (30 * rng.standard_normal(200 * 90), 200.0)}
    pixels = np.asarray(render_night(signals, [1], base)[0])
    for other in (RenderConfig(spectrogram=True, fs=80.0), RenderConfig(spectrogram=True, band=(0.3, 30.0)),
                  RenderConfig(spectrogram=True, spec_window_s=4.0), RenderConfig(spectrogram=True, night_norm=True)):
        assert other.render_id != base.render_id
        assert not np.array_equal(np.asarray(render_night(signals, [1], other)[0]), pixels)
    saved = base.to_dict()
    assert saved["fs"] == 100.0 and saved["spec_window_s"] == 2.0
    old = {k: v for k, v in saved.items() if k not in ("fs", "spec_window_s")}
    with pytest.raises(FormatError, match="render settings without fs, spec_window_s"):
        RenderConfig.from_dict(old, "checkpoints/vision/config.json: render")


def _psg_night(seed: int, gain: float = 1.0, minutes: int = 20) -> dict:
    """A night of EEG, EOG and a 1-Hz EMG level, all channels at ``gain`` (an amplifier's, an electrode's)."""
    rng = np.random.default_rng(seed)
    n = minutes * 60 * 100
    t = np.arange(n) / FS
    eeg = 25 * np.sin(2 * np.pi * 10 * t) * (t % 300 < 150) + rng.normal(0, 15, n)
    eog = 60 * np.sin(2 * np.pi * 0.2 * t) + rng.normal(0, 8, n)
    emg = 5 + 20 * (np.arange(minutes * 60) % 400 < 100) + rng.uniform(0, 1, minutes * 60)
    return {"EEG Fpz-Cz": (gain * eeg, FS), "EOG horizontal": (gain * eog, FS), "EMG submental": (gain * emg, 1.0)}


def test_night_norm_draws_a_night_the_same_at_any_gain_from_the_night_alone():
    cfg = RenderConfig(channels=("EEG Fpz-Cz", "EOG horizontal", "EMG submental"), spectrogram=True, px_per_s=4,
                       night_norm=True)
    epochs = list(range(0, 40, 3))
    base = np.stack([np.asarray(im) for im in render_night(_psg_night(0), epochs, cfg)])
    # The same night recorded at a third of the gain is drawn the same (to float rounding at a few pixels) ...
    quiet = np.stack([np.asarray(im) for im in render_night(_psg_night(0, gain=1 / 3), epochs, cfg)])
    assert (np.abs(quiet.astype(int) - base.astype(int)) > 8).mean() < 1e-3
    # ... while without night_norm its traces shrink; and another night's level changes nothing of this night's.
    plain = RenderConfig(channels=cfg.channels, spectrogram=True, px_per_s=4)
    a, b = (np.stack([np.asarray(im) for im in render_night(_psg_night(0, gain=g), epochs, plain)]) for g in (1, 1 / 3))
    assert (np.abs(a.astype(int) - b.astype(int)) > 8).mean() > 0.01
    other_loud = [np.asarray(im) for im in render_night(_psg_night(1, gain=5.0), epochs, cfg)]
    again = np.stack([np.asarray(im) for im in render_night(_psg_night(0), epochs, cfg)])
    assert np.array_equal(again, base) and not np.array_equal(np.stack(other_loud), base)
    # The scale is the night's own: a louder half-night draws this epoch smaller than the quiet night did.
    night = _psg_night(0)
    louder = {c: (np.where(np.arange(len(x)) < len(x) // 2, x, 4 * x), fs) for c, (x, fs) in night.items()}
    first = np.asarray(render_night(louder, [0], cfg)[0])
    assert (first < 255)[:96].sum() < (base[0] < 255)[:96].sum()


def test_a_render_setting_added_later_keeps_the_ids_of_what_was_drawn_before_it(monkeypatch):
    """A new setting at the value that draws what was drawn before leaves the recorded settings and their id as they
    were (render.json files and checkpoints made before still match), and joins them at any other value."""
    from dataclasses import dataclass

    from sleep_eeg.images import render

    before = RenderConfig(px_per_s=4).to_dict()

    @dataclass(frozen=True)
    class WithInvert(RenderConfig):
        invert: bool = False

    monkeypatch.setattr(render, "ADDED_SETTINGS", {"invert": False})
    assert WithInvert(px_per_s=4).to_dict() == before
    assert WithInvert.from_dict(before) == WithInvert(px_per_s=4)
    inverted = WithInvert(px_per_s=4, invert=True).to_dict()
    assert inverted["invert"] is True and inverted["id"] != before["id"]
    assert WithInvert.from_dict(inverted).invert
    monkeypatch.setattr(render, "ADDED_SETTINGS", {})  # not listed: settings recorded before it are refused
    with pytest.raises(FormatError, match="without invert"):
        WithInvert.from_dict(before)
