"""A recording from another lab: another montage (C4-M1, E1-M2, Chin1-Chin2), other rates (256 and 512 Hz), volts,
a CSV hypnogram of 20-s epochs, paired by a CSV; prepare and stage on it; stages out as EDF+ and YASA codes;
stage_night on an mne.io.Raw and on arrays; units, hypnogram spellings and a hypnogram shorter than, longer than
or offset from its recording."""
from __future__ import annotations

import csv
import datetime
import json
import sys
from pathlib import Path

import edfio
import numpy as np
import pytest

from eeg_core.cli import run
from eeg_core.errors import FormatError
from eeg_core.stages import STAGES
from sleep_eeg.images.render import RenderConfig
from sleep_eeg.recording.channels import channel_role, derivation, resolve_channels, with_roles
from sleep_eeg.recording.edf import unit_warnings
from sleep_eeg.recording.hypnogram import read_stage_list
from sleep_eeg.recording.nights import Night, read_channels
from sleep_eeg.recording.stages import map_stage
from vision_modules.checkpoint import random_checkpoint

REPO = Path(__file__).resolve().parents[1]

START = datetime.datetime(2024, 3, 1, 23, 0, 0)
MINUTES = 8  # 16 epochs of 30 s
STAGES_20S = ["W"] * 6 + ["N1"] * 3 + ["N2"] * 9 + ["N3"] * 3 + ["REM"] * 3  # 24 lines of 20 s = 16 epochs
RENDER = dict(px_per_s=4, height=32, eog_height=16, emg_height=8)  # small images: fast


def _wave(rng, n, fs, amp_uv):
    t = np.arange(n) / fs
    return amp_uv * (np.sin(2 * np.pi * 2.0 * t) + 0.5 * np.sin(2 * np.pi * 11.0 * t)) + amp_uv * 0.3 * rng.standard_normal(n)


def write_recording(path: Path, rates=(256, 256, 512), unit="V", scale=1e-6, seconds=MINUTES * 60, start=START,
                    labels=("C4-M1", "E1-M2", "Chin1-Chin2")) -> Path:
    """A PSG of three channels at ``rates``, ``scale`` × µV stored under ``unit``."""
    rng = np.random.default_rng(0)
    signals = []
    for label, fs, amp in zip(labels, rates, (40.0, 60.0, 10.0)):
        x = _wave(rng, int(seconds * fs), fs, amp) * scale
        limit = 500.0 * scale
        signals.append(edfio.EdfSignal(np.clip(x, -limit, limit), fs, label=label, physical_dimension=unit,
                                       physical_range=(-limit, limit)))
    edfio.Edf(signals, recording=edfio.Recording(startdate=start.date()), starttime=start.time(),
              data_record_duration=1.0).write(path)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    psg = write_recording(root / "night1.edf")
    (root / "night1_stages.csv").write_text("stage\n" + "\n".join(STAGES_20S) + "\n")
    (root / "pairs.csv").write_text("recording,hypnogram,subject\nnight1.edf,night1_stages.csv,P01\n")
    channels = with_roles(("EEG Fpz-Cz",), {"eeg": "C4-M1", "eog": "E1-M2", "emg": "Chin1-Chin2"})
    render = RenderConfig(channels=channels, **RENDER)
    vision = random_checkpoint(root / "vision", render.to_dict(), image_size=(32, 96))
    fpz = RenderConfig(channels=("EEG Fpz-Cz", "EOG horizontal", "EMG submental"), **RENDER)
    vision_fpz = random_checkpoint(root / "vision_fpz", fpz.to_dict(), image_size=(32, 96))
    return {"root": root, "psg": psg, "hyp": root / "night1_stages.csv", "pairs": root / "pairs.csv",
            "vision": vision, "vision_fpz": vision_fpz}


def test_roles_and_aliases():
    assert [channel_role(c) for c in ("C4-M1", "EEG Fpz-Cz", "E1-M2", "LOC", "ROC-A1", "EOG horizontal",
                                      "Chin1-Chin2", "EMG submental")] == ["eeg"] * 2 + ["eog"] * 4 + ["emg"] * 2
    assert derivation("EEG C4-A1") == derivation("C4-M1") and derivation("LOC-A2") == derivation("E1-M2")
    assert with_roles(("EEG Fpz-Cz", "EOG horizontal"), {"eeg": "C4-M1", "emg": "X9"}) == ("C4-M1", "EOG horizontal",
                                                                                          "EMG X9")
    labels = ["EEG C4-A1", "LOC", "EMG Chin1-Chin2"]
    assert resolve_channels(labels, ["C4-M1", "EOG horizontal", "Chin1-Chin2"], {"eog": "LOC"}) == {
        "C4-M1": "EEG C4-A1", "EOG horizontal": "LOC", "Chin1-Chin2": "EMG Chin1-Chin2"}
    # a name that does not say its role is kept under the role's word, and read back from the file by its name
    assert resolve_channels(["X9", "C4-M1"], ["C4-M1", "EMG X9"]) == {"C4-M1": "C4-M1", "EMG X9": "X9"}
    with pytest.raises(FormatError, match="no channel 'EEG Fpz-Cz'; name the EEG channel to use with --eeg-name"):
        resolve_channels(labels, ["EEG Fpz-Cz"], where="x.edf")


def test_hypnogram_spellings_and_codes(tmp_path):
    for text, stage in (("Sleep stage N2", "N2"), ("N2", "N2"), ("Stage 2", "N2"), ("Sleep stage 2", "N2"),
                        ("Stage 4", "N3"), ("Wake", "W"), ("R", "REM"), ("Sleep_stage_REM", "REM"), ("Stage ?", None)):
        assert map_stage(text) == stage, text
    assert map_stage("2") is None  # a bare digit is a YASA code in a stage list, not an annotation text
    # YASA's integer codes: 0 W, 1 N1, 2 N2, 3 N3, 4 REM, -2 unscored
    path = tmp_path / "codes.txt"
    path.write_text("0\n1\n2\n3\n4\n-2\n")
    assert [map_stage(a.text) for a in read_stage_list(path).annotations] == ["W", "N1", "N2", "N3", "REM", None]
    path.write_text("0\n7\n")
    with pytest.raises(FormatError, match=r"codes.txt: line 2: stage code '7' is not one of YASA's"):
        read_stage_list(path)


def test_epochs_of_5_and_20_s_by_majority(tmp_path, capsys):
    path = tmp_path / "h.csv"
    path.write_text("\n".join(["W", "W", "N1", "N2", "N2", "N2"]) + "\n")  # 20-s lines
    ann = read_stage_list(path, 20).annotations
    assert [(a.onset, map_stage(a.text)) for a in ann] == [(0, "W"), (30, "N1"), (60, "N2"), (90, "N2")]
    # 5-s lines: 4 of 6 N2 wins; 3 W and 3 N1 is a tie: unscored, and said
    path.write_text("\n".join(["N2"] * 4 + ["W"] * 2 + ["W"] * 3 + ["N1"] * 3) + "\n")
    ann = read_stage_list(path, 5).annotations
    assert [map_stage(a.text) for a in ann] == ["N2", None]
    assert "1 of 2 30-s epochs have no stage covering more than half" in capsys.readouterr().err


def test_units_implausible_for_their_label_are_warned_about(tmp_path, capsys):
    microvolts_as_volts = write_recording(tmp_path / "a.edf", unit="V", scale=1.0, labels=("EEG", "EOG", "EMG"))
    volts_as_microvolts = write_recording(tmp_path / "b.edf", unit="uV", scale=1e-6, labels=("EEG", "EOG", "EMG"))
    for psg, guess in ((microvolts_as_volts, "microvolts"), (volts_as_microvolts, "volts")):
        (tmp_path / "h.txt").write_text("W\n" * 16)
        read_channels(Night(psg.stem, psg, tmp_path / "h.txt", "s", 1), ("EEG",))
        err = capsys.readouterr().err
        assert f"channel 'EEG' is labelled" in err and f"the values look like {guess}" in err, err
    signals, _ = read_channels(Night("n", tmp_path / "a.edf", tmp_path / "h.txt", "s", 1), ("EEG",))
    assert not unit_warnings(signals["EEG"][0] / 1e6, "EEG", "V", "x")  # the µV values, rightly labelled


def test_prepare_on_another_montage_in_volts_with_a_20_s_csv_hypnogram(lab, tmp_path, capsys):
    from sleep_eeg.images import prepare

    out = tmp_path / "data"
    with pytest.raises(SystemExit) as code:
        run(prepare.main, ["--edf-dir", str(lab["pairs"]), "--out", str(out), "--eeg-name", "C4-M1", "--eog-name",
                           "E1-M2", "--emg-name", "Chin1-Chin2", "--hypnogram-epoch", "20", "--eval-fraction", "0",
                           "--workers", "1", "--px-per-s", "4", "--height", "32", "--trim-minutes", "-1"])
    err = capsys.readouterr().err
    assert code.value.code == 0, err
    assert "warning" not in err, err  # volts read as volts: no unit warning
    render = json.loads((out / "render.json").read_text())
    assert render["channels"] == ["C4-M1", "E1-M2", "Chin1-Chin2"] and render["fs"] == 100.0
    records = json.loads((out / "eeg_ft.json").read_text())
    assert [r["label"] for r in records] == ["W"] * 4 + ["N1"] * 2 + ["N2"] * 6 + ["N3"] * 2 + ["REM"] * 2
    assert {r["subject"] for r in records} == {"P01"}
    # the band-power baseline on the same pairing CSV, its EEG channel named by role
    from sleep_eeg.baselines import classic as baselines

    with pytest.raises(SystemExit) as code:
        run(baselines.main, ["train", "--records", str(out / "eeg_ft.json"), "--edf-dir", str(lab["pairs"]),
                             "--eeg-name", "C4-M1", "--out", str(tmp_path / "bandpower")])
    assert code.value.code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "bandpower" / "config.json").read_text())["channels"] == ["C4-M1"]


def test_stage_cli_writes_edf_plus_and_yasa_codes(lab, tmp_path, capsys):
    from eeg_vlm import stage

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as code:
        run(stage.main, [str(lab["psg"]), "--vision", str(lab["vision"]), "--hypnogram", str(lab["hyp"]),
                         "--hypnogram-epoch", "20", "--out", str(out), "--device", "cpu"])
    assert code.value.code == 0, capsys.readouterr().err
    with open(out / "stages.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and [int(r["yasa"]) for r in rows] == [STAGES.index(r["stage"]) for r in rows]
    assert [r["scored"] for r in rows] == ["W"] * 4 + ["N1"] * 2 + ["N2"] * 6 + ["N3"] * 2 + ["REM"] * 2
    edf = edfio.read_edf(out / "hypnogram.edf")
    assert [(a.onset, a.duration) for a in edf.annotations] == [(30.0 * i, 30.0) for i in range(16)]
    assert [map_stage(a.text) for a in edf.annotations] == [r["stage"] for r in rows]
    assert edf.startdatetime == START
    # the same night through the pairing CSV: one folder per night
    with pytest.raises(SystemExit) as code:
        run(stage.main, ["--edf-dir", str(lab["pairs"]), "--vision", str(lab["vision"]), "--out", str(tmp_path / "all"),
                         "--hypnogram-epoch", "20", "--device", "cpu"])
    assert code.value.code == 0
    assert (tmp_path / "all" / "night1" / "stages.csv").read_text() == (out / "stages.csv").read_text()
    mne = pytest.importorskip("mne")
    ann = mne.read_annotations(out / "hypnogram.edf")
    assert list(ann.onset) == [30.0 * i for i in range(16)] and [map_stage(t) for t in ann.description] == [
        r["stage"] for r in rows]


def test_stage_night_on_another_derivation_says_so(lab, capsys):
    from eeg_vlm import stage_night

    night = stage_night(lab["psg"], vision=lab["vision_fpz"], device="cpu", eeg_name="C4-M1", eog_name="E1-M2",
                        emg_name="Chin1-Chin2")
    err = capsys.readouterr().err
    assert len(night.stages) == 16
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "C4-M1 for EEG Fpz-Cz" in notes[0] and "E1-M2 for EOG horizontal" in notes[0]
    with pytest.raises(FormatError, match="no channel 'EEG Fpz-Cz', which the vision checkpoint"):
        stage_night(lab["psg"], vision=lab["vision_fpz"], device="cpu")


def test_stage_night_on_raw_and_arrays_equals_the_path(lab, tmp_path):
    """One rate for every channel: MNE keeps one rate per recording (it raises the others to the highest)."""
    from eeg_vlm import stage_night

    mne = pytest.importorskip("mne")
    psg = write_recording(tmp_path / "one_rate.edf", rates=(256, 256, 256))
    by_path = stage_night(psg, vision=lab["vision"], device="cpu")
    raw = mne.io.read_raw_edf(psg, preload=True, verbose="error")
    by_raw = stage_night(raw, vision=lab["vision"], device="cpu")
    by_arrays = stage_night((raw.get_data() * 1e6, raw.info["sfreq"], raw.ch_names), vision=lab["vision"],
                            device="cpu")
    fif = tmp_path / "one_rate_raw.fif"  # another format, read through MNE
    raw.save(fif, verbose="error")
    by_fif = stage_night(fif, vision=lab["vision"], device="cpu")
    for other in (by_raw, by_arrays, by_fif):
        assert other.stages == by_path.stages
        np.testing.assert_allclose(other.probabilities, by_path.probabilities, atol=1e-6)
    assert by_raw.start == by_path.start == START


def test_to_yasa_keeps_the_probabilities(lab):
    from eeg_vlm import stage_night

    pytest.importorskip("yasa")
    night = stage_night(lab["psg"], vision=lab["vision"], device="cpu")
    hyp = night.to_yasa()
    assert list(hyp.as_int()) == list(night.yasa_codes)
    np.testing.assert_allclose(np.asarray(hyp.proba), night.probabilities)


def _edf_hypnogram(path: Path, start: datetime.datetime, epochs: int) -> Path:
    edfio.Edf([], recording=edfio.Recording(startdate=start.date()), starttime=start.time(),
              annotations=[edfio.EdfAnnotation(30.0 * i, 30.0, "N2" if i % 2 else "Wake") for i in range(epochs)]
              ).write(path)
    return path


def test_hypnogram_shorter_longer_or_offset(lab, tmp_path, capsys):
    """Documented behaviour: a hypnogram shorter than its recording leaves the epochs after it unscored (a warning
    beyond 5 minutes); one longer drops the epochs past the end (a warning with counts); a dated one starting later
    is placed at its offset; one that does not lie on the recording is refused."""
    from eeg_vlm.stage import read_scored
    from sleep_eeg.recording.edf import read_recording

    psg = lab["psg"]
    edf = read_recording(psg)
    short = tmp_path / "short.txt"
    short.write_text("W\nN2\n")
    scored, warnings = read_scored(short, psg, edf, 16)
    assert scored == ["W", "N2"] + [None] * 14 and "before the recording does" in warnings[0]
    long = tmp_path / "long.txt"
    long.write_text("N2\n" * 20)
    scored, warnings = read_scored(long, psg, edf, 16)
    assert scored == ["N2"] * 16 and "scores 4 epochs" in warnings[0]
    later = _edf_hypnogram(tmp_path / "later.edf", START + datetime.timedelta(seconds=60), 4)
    scored, _ = read_scored(later, psg, edf, 16)
    assert scored == [None, None, "W", "N2", "W", "N2"] + [None] * 10
    elsewhere = _edf_hypnogram(tmp_path / "elsewhere.edf", START + datetime.timedelta(hours=2), 4)
    with pytest.raises(FormatError, match="elsewhere.edf: scores .* a hypnogram of another night"):
        read_scored(elsewhere, psg, edf, 16)


def test_demo_edf_dir_passes_the_roles_and_the_pairing(lab, tmp_path):
    from eeg_vlm import demo

    roles = {"eeg_name": "C4-M1", "eog_name": "E1-M2", "emg_name": "Chin1-Chin2"}
    steps = {s.name: s for s in demo.pipeline(quick=True, edf_dir=lab["pairs"], **roles, hypnogram_epoch=20)}
    prepare = steps["prepare"]
    assert prepare.argv[-8:] == ["--eeg-name", "C4-M1", "--eog-name", "E1-M2", "--emg-name", "Chin1-Chin2",
                                 "--hypnogram-epoch", "20"]
    assert set(prepare.inputs) == {str(lab["pairs"]), str(lab["psg"]), str(lab["hyp"])}
    channels = {name: s.argv[s.argv.index("--channels") + 1] for name, s in steps.items()
                if name.endswith("-train") and "--channels" in s.argv}
    assert channels == {"baseline-bandpower-train": "C4-M1", "baseline-bandpower3-train": "C4-M1,E1-M2",
                        "baseline-features-train": "C4-M1,E1-M2"}
    with pytest.raises(FormatError, match=r"pairs.csv: nights of 1 subject\(s\) \(P01\)"):
        demo.main(["--workdir", str(tmp_path / "w"), "--edf-dir", str(lab["pairs"]), "--eeg-name", "C4-M1"])


def test_real_hypnograms_of_yasa_and_the_sleep_edf_emg_level(shared_data):
    """YASA's example hypnograms (integer codes with comment lines; stage names) read as stage lists; Sleep-EDF's
    1-Hz EMG level is not a unit problem."""
    from sleep_eeg.recording.edf import read_recording, signal_uv

    codes = read_stage_list(shared_data / "yasa_snippets" / "data_full_6hrs_100Hz_hypno_30s.txt").annotations
    assert len(codes) == 720 and [map_stage(a.text) for a in codes].count("REM") == 155
    names = read_stage_list(shared_data / "yasa_snippets" / "sub-02_hypno_30s.txt").annotations
    assert len(names) == 98 and [map_stage(a.text) for a in names].count("N3") == 22
    edf = read_recording(shared_data / "edfio_sleepedf_SC4001" / "short_psg.edf")
    for label in ("EEG Fpz-Cz", "EOG horizontal", "EMG submental"):
        assert not unit_warnings(*signal_uv(edf, label)[:1], label, "uV", "x", signal_uv(edf, label)[1])


@pytest.mark.parametrize("eeg_rate, emg_rate", [(128, 200), (256, 512), (512, 500)])
def test_any_rate_is_drawn_at_the_render_rate(eeg_rate, emg_rate):
    """EEG at 128 / 256 / 512 Hz and EMG at 200-512 Hz: resampled to the render's fs, the same picture as at 100 Hz."""
    from sleep_eeg.images.render import check_rates, render_night
    from sleep_eeg.recording.edf import from_arrays, signal_uv

    cfg = RenderConfig(channels=("C4-M1", "Chin1-Chin2"), **RENDER)

    def drawn(eeg_fs, emg_fs):
        t = np.arange(60 * eeg_fs) / eeg_fs
        eeg = 40 * np.sin(2 * np.pi * 1.5 * t) + 15 * np.sin(2 * np.pi * 12 * t)
        emg = 10 * np.sin(2 * np.pi * 40 * np.arange(60 * emg_fs) / emg_fs)
        rec = from_arrays(eeg[None], eeg_fs, ["C4-M1"])
        rec.signals.update(from_arrays(emg[None], emg_fs, ["Chin1-Chin2"]).signals)
        signals = {c: signal_uv(rec, c) for c in ("C4-M1", "Chin1-Chin2")}
        check_rates(signals, cfg, "x")
        return np.stack([np.asarray(im) for im in render_night(signals, [0, 1], cfg)])

    ours, reference = drawn(eeg_rate, emg_rate), drawn(100, 100)
    assert ours.shape == reference.shape
    assert np.mean(ours != reference) < 0.02


def test_demo_runs_on_the_labs_recordings_paired_by_csv(tmp_path):
    """``eeg-vlm demo --edf-dir pairs.csv`` with the role flags and 20-s CSV hypnograms: three recordings of three
    subjects in the other lab's montage and units, prepared, a vision module trained, the baselines beside it,
    one subject held out; the vision module's images are drawn from the named channels."""
    import os
    import subprocess

    from eeg_core import formats
    from eeg_vlm import demo

    lines = ["recording,hypnogram,subject"]
    for k in range(3):
        write_recording(tmp_path / f"night{k}.edf", seconds=2 * MINUTES * 60)
        (tmp_path / f"night{k}_stages.csv").write_text("stage\n" + "\n".join(STAGES_20S * 2) + "\n")
        lines.append(f"night{k}.edf,night{k}_stages.csv,P0{k}")
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "eeg_vlm.demo", "--workdir", str(work), "--quick", "--no-vlm",
           "--edf-dir", str(tmp_path / "pairs.csv"), "--eeg-name", "C4-M1", "--eog-name", "E1-M2",
           "--emg-name", "Chin1-Chin2", "--hypnogram-epoch", "20"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="2"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((work / "results" / "demo_summary.json").read_text())
    rows = [r["name"] for r in summary["table"]]
    assert "vision module (resnet18)" in rows
    from sleep_eeg.baselines import yasa_staging

    if yasa_staging.available():  # YASA reads the named channels of the recordings the CSV pairs
        assert yasa_staging.NAME in rows
    questions = formats.read_records(work / demo.EVAL_RECORDS)
    held_out = {q["subject"] for q in questions}
    assert len(held_out) == 1 and held_out < {"P00", "P01", "P02"}
    assert len(questions) == 32  # one night: 48 lines of 20 s = 32 epochs of 30 s
    channels = json.loads((work / demo.DATA / "render.json").read_text())["channels"]
    assert channels[0].endswith("C4-M1") and any(c.endswith("E1-M2") for c in channels)
