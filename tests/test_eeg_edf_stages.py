"""EDF round trip, R&K -> AASM mapping, wake trimming, epoching, and the real Sleep-EDF fixtures."""
import datetime
import os
import shutil
from collections import Counter

import numpy as np
import pytest

from eeg_core.errors import FormatError
from sleep_eeg.recording import edf, hypnogram, nights, stages
from sleep_eeg.signal.epochs import epoch_array
from sleep_eeg.synthetic import synth


def test_synthetic_night_round_trips_through_edf_within_quantisation(tmp_path):
    rng = np.random.default_rng(3)
    seq = synth.synth_hypnogram(rng, hours=0.5)
    signals, texts = synth.synth_signal(rng, synth.Subject.draw(rng), seq)
    start = datetime.datetime(2000, 1, 1, 23, 0)
    edf.write_night(tmp_path / "SC4001E0-PSG.edf", tmp_path / "SC4001EC-Hypnogram.edf", signals, synth.RATES,
                    synth.hypnogram_annotations(texts), start)
    night, = nights.find_nights(tmp_path)
    assert (night.subject, night.night) == ("SC400", 1)
    assert set(signals) == {"EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "EMG submental"}
    for channel, x in signals.items():
        data, fs, annotations = nights.read_night(night, channel)
        assert fs == synth.RATES[channel] and data.shape == x.shape
        step = 1000.0 / 65535  # physical range -500..500 µV on 16 bits
        assert np.max(np.abs(data - np.clip(x, -500, 500))) <= step / 2 + 1e-9
    assert nights.read_night(night, "EMG submental")[1] == 1.0  # a 1-Hz level, as in sleep-cassette files
    labels = stages.epoch_labels(annotations, len(seq))
    assert labels == [None if s in (synth.MOVE, synth.UNSCORED) else s for s in seq]


def test_synth_command_writes_sleep_edf_names(tmp_path, capsys):
    assert synth.main(["--out", str(tmp_path), "--nights", "3", "--nights-per-subject", "2", "--hours", "0.25"]) == 0
    names = sorted(os.listdir(tmp_path))
    assert names == ["SC9001E0-PSG.edf", "SC9001EC-Hypnogram.edf", "SC9002E0-PSG.edf", "SC9002EC-Hypnogram.edf",
                     "SC9011E0-PSG.edf", "SC9011EC-Hypnogram.edf"]
    found = nights.find_nights(tmp_path)
    assert [(n.subject, n.night) for n in found] == [("SC900", 1), ("SC900", 2), ("SC901", 1)]
    assert edf.read_edf(tmp_path / names[0]).labels == ("EEG Fpz-Cz", "EEG Pz-Oz", "EOG horizontal", "EMG submental")
    # beside a real Sleep-EDF night of the same subject number, nothing is overwritten or mispaired
    real = tmp_path / "SC4001E0-PSG.edf", tmp_path / "SC4001EC-Hypnogram.edf"
    for src, dst in zip(names[:2], real):
        shutil.copy(tmp_path / src, dst)
    pairs = {n.psg.name: (n.hypnogram.name, n.subject) for n in nights.find_nights(tmp_path)}
    assert pairs["SC4001E0-PSG.edf"] == ("SC4001EC-Hypnogram.edf", "SC400")
    assert pairs["SC9001E0-PSG.edf"] == ("SC9001EC-Hypnogram.edf", "SC900")


def test_pairing_by_stem_and_ambiguous_hypnograms(tmp_path):
    for name in ("a1-PSG.edf", "a1-Hypnogram.edf", "a2-PSG.edf", "a2-Hypnogram.edf", "b1-PSG.edf"):
        (tmp_path / name).write_bytes(b"")
    pairs = {n.psg.name: n.hypnogram.name for n in nights.find_nights(tmp_path)}
    assert pairs == {"a1-PSG.edf": "a1-Hypnogram.edf", "a2-PSG.edf": "a2-Hypnogram.edf", "b1-PSG.edf": "b1-PSG.edf"}
    (tmp_path / "a1-Hypnogram.edf").rename(tmp_path / "a3-Hypnogram.edf")  # agrees with a1 and a2 up to the end
    with pytest.raises(FormatError, match=r"a3-Hypnogram.edf: hypnogram matches several PSG files \(a1-PSG.edf, a2-PSG.edf\)"):
        nights.find_nights(tmp_path)
    (tmp_path / "a3-Hypnogram.edf").unlink()
    (tmp_path / "a2-Hypnogram.edf").rename(tmp_path / "a2H-Hypnogram.edf")
    (tmp_path / "a2C-Hypnogram.edf").write_bytes(b"")
    (tmp_path / "a2E-PSG.edf").write_bytes(b"")
    with pytest.raises(FormatError, match="a2E-PSG.edf already has the hypnogram"):
        nights.find_nights(tmp_path)
    for name in ("a2C-Hypnogram.edf", "a2E-PSG.edf", "a2H-Hypnogram.edf"):
        (tmp_path / name).unlink()
    (tmp_path / "b1.edf").write_bytes(b"")  # a plain EDF+ night named as b1-PSG.edf's night
    with pytest.raises(FormatError, match=r"b1.edf: the night name 'b1' is also b1-PSG.edf's"):
        nights.find_nights(tmp_path)


def test_rk_to_aasm_mapping():
    assert stages.map_stage("Sleep stage 3") == stages.map_stage("Sleep stage 4") == "N3"
    assert [stages.map_stage(f"Sleep stage {s}") for s in "W12R"] == ["W", "N1", "N2", "REM"]
    assert stages.map_stage("Sleep stage ?") is None and stages.map_stage("Movement time") is None


def test_trim_keeps_30_minutes_of_wake_and_drops_unscorable():
    ann = [(0, 3600, "Sleep stage W"), (3600, 60, "Sleep stage 1"), (3660, 30, "Movement time"),
           (3690, 90, "Sleep stage 4"), (3780, 30, "Sleep stage ?"), (3810, 7200, "Sleep stage W")]
    fs = 10.0
    n_samples = int(11010 * fs) + 7  # a trailing incomplete epoch is dropped
    idx, labels = stages.scorable_epochs(ann, n_samples, fs, trim_minutes=30)
    assert idx[0] == 120 - 60 and idx[-1] == 125 + 60
    assert labels.count("W") == 60 + 59 and labels.count("N1") == 2 and labels.count("N3") == 3
    assert 122 not in idx and 126 not in idx  # movement and '?'
    idx_all, _ = stages.scorable_epochs(ann, n_samples, fs, trim_minutes=None)
    assert idx_all[-1] == 366  # 11010 s = 367 epochs, the partial one is not there
    x = np.arange(n_samples, dtype=float)
    ep = epoch_array(x, fs, idx[:2])
    assert ep.shape == (2, 300) and ep[0, 0] == idx[0] * 300


def test_real_hypnogram_trimmed_gives_841_epochs(shared_data):
    path = shared_data / "edfio_sleepedf_SC4001" / "SC4001EC-Hypnogram.edf"
    ann = hypnogram.stage_annotations(edf.read_edf(path), path)
    labels = stages.epoch_labels(ann)
    assert len(labels) == 2880
    kept = [labels[i] for i in stages.trim_wake(labels, 30) if labels[i] is not None]
    assert Counter(kept) == {"W": 188, "N1": 58, "N2": 250, "N3": 220, "REM": 125}


def test_real_short_psg_has_ten_wake_epochs(shared_data, tmp_path):
    src = shared_data / "edfio_sleepedf_SC4001"
    os.symlink(src / "short_psg.edf", tmp_path / "SC4001E0-PSG.edf")
    os.symlink(src / "SC4001EC-Hypnogram.edf", tmp_path / "SC4001EC-Hypnogram.edf")
    night, = nights.find_nights(tmp_path)
    x, fs, ann = nights.read_night(night, "EEG Fpz-Cz")
    idx, labels = stages.scorable_epochs(ann, len(x), fs, trim_minutes=None)
    assert fs == 100.0 and list(idx) == list(range(10)) and labels == ["W"] * 10
    x50, fs50, _ = nights.read_night(night, "EEG Fpz-Cz", fs=50.0)
    assert fs50 == 50.0 and len(x50) == len(x) // 2


def test_truncated_edf_is_one_line_error(tmp_path):
    rng = np.random.default_rng(0)
    signals, texts = synth.synth_signal(rng, synth.Subject.draw(rng), ["W", "N1", "N2"])
    psg = tmp_path / "SC4001E0-PSG.edf"
    edf.write_night(psg, tmp_path / "SC4001EC-Hypnogram.edf", signals, synth.RATES, synth.hypnogram_annotations(texts),
                    datetime.datetime(2000, 1, 1))
    psg.write_bytes(psg.read_bytes()[:-1000])
    with pytest.raises(FormatError, match="truncated") as e:
        edf.read_edf(psg)
    assert str(psg) in str(e.value) and "\n" not in str(e.value)
    psg.write_bytes(b"0       garbage")
    with pytest.raises(FormatError, match="not a readable EDF"):
        edf.read_edf(psg)


def test_real_hypnogram_over_a_cut_recording_is_kept_with_a_warning(shared_data, tmp_path):
    """Sleep-EDF's short PSG (the first 300 s) under the night's whole hypnogram: the same start, so the same
    night; the scoring past the end is dropped with a warning that counts it (2650 scored epochs, 10 recorded)."""
    src = shared_data / "edfio_sleepedf_SC4001"
    os.symlink(src / "short_psg.edf", tmp_path / "SC4001E0-PSG.edf")
    os.symlink(src / "SC4001EC-Hypnogram.edf", tmp_path / "SC4001EC-Hypnogram.edf")
    night, = nights.find_nights(tmp_path)
    psg = edf.read_recording(night.psg)
    annotations = nights.scoring_on_recording(night.psg, psg, night.hypnogram, edf.read_edf(night.hypnogram))
    assert stages.scoring_warnings(annotations, 10, psg.duration, night.psg, night.hypnogram) == [
        f"{night.hypnogram}: the hypnogram scores 2640 epochs (22.00 h) after the recording ends (0.08 h in "
        f"{night.psg}); they have no signal and are dropped"]
