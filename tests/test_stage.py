"""eeg-vlm stage and stage_night: a synthetic EDF night to stages.csv, hypnogram, statistics and report."""
from __future__ import annotations

import base64
import csv
import datetime
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import edfio
import numpy as np
import pytest

from eeg_core.errors import FormatError
from eeg_core.stages import STAGES
from eeg_vlm.cli import main as eeg_vlm_main
from sleep_eeg.images.render import RenderConfig
from vision_modules.checkpoint import random_checkpoint

from refusal import refused

CHANNELS = ("EEG Fpz-Cz", "EOG horizontal")
RENDER = RenderConfig(channels=CHANNELS, px_per_s=4, height=32, eog_height=16)  # small images: fast


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Two 15-minute synthetic nights (30 epochs each) and a random vision module trained on RENDER's images."""
    from sleep_eeg.synthetic.synth import synth_nights

    root = tmp_path_factory.mktemp("stage")
    psgs = synth_nights(root / "edf", nights=2, seed=0, hours=0.25, verbose=False)
    hyps = sorted((root / "edf").glob("*-Hypnogram.edf"))
    vision = random_checkpoint(root / "vision", RENDER.to_dict(), image_size=(32, 96))
    return {"root": root, "psgs": psgs, "hyps": hyps, "vision": vision}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def hand_statistics(stages: list[str]) -> dict:
    """The AASM figures the plain way, epoch by epoch (0.5 min each)."""
    sleep = [i for i, s in enumerate(stages) if s in ("N1", "N2", "N3", "REM")]
    out = {"TIB": len(stages) / 2, "TST": len(sleep) / 2, "SE": 100 * len(sleep) / len(stages)}
    for s in STAGES:
        out[s] = stages.count(s) / 2
    if sleep:
        period = stages[sleep[0] : sleep[-1] + 1]
        out.update(SOL=sleep[0] / 2, SPT=len(period) / 2, WASO=period.count("W") / 2,
                   REM_latency=period.index("REM") / 2 if "REM" in period else None)
    return out


def assert_statistics(stats: dict, stages: list[str]) -> None:
    for key, value in hand_statistics(stages).items():
        assert stats[key] == pytest.approx(value), key


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])


def test_stage_with_the_vlm_writes_every_output(nights, stage_only_llava, tmp_path, capsys, monkeypatch):
    from llava.eval import answering

    psg, hyp, out = nights["psgs"][0], nights["hyps"][0], tmp_path / "report"
    answered = []  # the five probabilities the VLM gave each epoch, in order
    real = answering.choose_batch

    def spy(*args, **kwargs):
        chosen = real(*args, **kwargs)
        answered.extend([p[s] for s in STAGES] for _, p in chosen)
        return chosen

    monkeypatch.setattr(answering, "choose_batch", spy)
    with pytest.raises(SystemExit) as code:
        eeg_vlm_main(["stage", str(psg), "--hypnogram", str(hyp), "--vision", str(nights["vision"]),
                      "--vlm", str(stage_only_llava[0]), "--out", str(out), "--explain", "--batch-size", "16"])
    assert code.value.code == 0
    assert sorted(p.name for p in out.iterdir()) == [".eeg-vlm-stage.json", "agreement.json", "hypnogram.edf",
                                                     "hypnogram.png", "report.html", "stages.csv", "statistics.json"]
    rows = read_csv(out / "stages.csv")
    start = edfio.read_edf(psg).startdatetime
    n_epochs = int(edfio.read_edf(psg).duration // 30)
    assert len(rows) == n_epochs == 30 == len(answered)  # one row per complete epoch, each answered once
    for i, row in enumerate(rows):
        assert int(row["epoch"]) == i and float(row["onset_s"]) == 30 * i
        assert row["onset_clock"] == (start + datetime.timedelta(seconds=30 * i)).isoformat(" ")
        probs = [float(row[f"p_{s}"]) for s in STAGES]
        assert row["stage"] == STAGES[int(np.argmax(probs))]  # the stage is the most likely one written
        # ... and the probabilities written are the VLM's own answer to this epoch (not the vision module's)
        np.testing.assert_allclose(probs, np.divide(answered[i], np.sum(answered[i])), atol=2e-6)
        assert "reasoning" in row and row["scored"] in STAGES
    stages, scored = [r["stage"] for r in rows], [r["scored"] for r in rows]
    assert_statistics(json.loads((out / "statistics.json").read_text()), stages)
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(stages, scored)]))
    assert agreement["n"] == 30 and "kappa" in agreement and len(agreement["confusion_matrix"]["counts"]) == 5
    assert_statistics(agreement["scored_statistics"], scored)
    assert len(set(scored)) > 2  # the scored night is a real hypnogram, so the statistics test something
    # the report is one file: the figure is inside it, nothing is linked
    page = _Page()
    text = (out / "report.html").read_text(encoding="utf-8")
    page.feed(text)
    assert page.links == [] and len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(page.images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sleep statistics" in text and "Agreement with the scored night" in text
    assert (out / "hypnogram.png").read_bytes()[:4] == b"\x89PNG"
    assert "report.html" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it


def test_python_api_vision_only(nights, monkeypatch):
    import matplotlib.figure

    from eeg_vlm import stage_night
    from vision_modules import extract

    given = []  # the vision module's own probabilities for the night
    real = extract.night_features

    def spy(*args, **kwargs):
        feats, probs = real(*args, **kwargs)
        given.append(np.asarray(probs))
        return feats, probs

    monkeypatch.setattr(extract, "night_features", spy)
    night = stage_night(nights["psgs"][1], vision=nights["vision"], device="cpu")
    assert len(night.stages) == 30 and night.probabilities.shape == (30, 5) and len(given) == 1
    np.testing.assert_allclose(night.probabilities, given[0], atol=1e-6)  # the module's classes are STAGES' order
    assert night.stages == [STAGES[i] for i in night.probabilities.argmax(axis=1)]
    assert night.reasoning is None and night.agreement is None
    assert night.statistics["TIB"] == 15.0
    assert night.to_csv().splitlines()[0] == "epoch,onset_clock,onset_s,stage,p_W,p_N1,p_N2,p_N3,p_REM,yasa"
    assert isinstance(night.plot(), matplotlib.figure.Figure)


def test_several_nights_from_a_folder(nights, tmp_path):
    from eeg_vlm import stage

    assert stage.main(["--edf-dir", str(nights["root"] / "edf"), "--vision", str(nights["vision"]),
                       "--out", str(tmp_path / "all")]) == 0
    folders = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert folders == [p.name[: -len("-PSG.edf")] for p in nights["psgs"]]
    for name in folders:  # the hypnograms were paired by their names
        assert (tmp_path / "all" / name / "agreement.json").is_file()
        assert len(read_csv(tmp_path / "all" / name / "stages.csv")) == 30


def _other_channels(nights, tmp_path):
    vision = random_checkpoint(tmp_path / "c3", RenderConfig(channels=("EEG C3-A2",)).to_dict(), image_size=(32, 96))
    return [str(nights["psgs"][0]), "--vision", str(vision)], "no channel 'EEG C3-A2', which the vision checkpoint"


def _vlm_other_rendering(nights, tmp_path, stage_only_llava):
    vlm = tmp_path / "vlm"
    shutil.copytree(stage_only_llava[0], vlm)
    config = json.loads((vlm / "config.json").read_text())
    config["eeg_render"] = RenderConfig(channels=("EEG Fpz-Cz",)).to_dict()
    (vlm / "config.json").write_text(json.dumps(config))
    return ([str(nights["psgs"][0]), "--vision", str(nights["vision"]), "--vlm", str(vlm)],
            "images drawn with other render settings than .*vlm was trained on \\(channels:")


def _another_night(nights, tmp_path):
    hyp = edfio.read_edf(nights["hyps"][0])
    hyp.startdate = hyp.startdate + datetime.timedelta(days=1)
    hyp.write(tmp_path / "next-Hypnogram.edf")
    return ([str(nights["psgs"][0]), "--hypnogram", str(tmp_path / "next-Hypnogram.edf"), "--vision",
             str(nights["vision"])], "a hypnogram of another night")


def _unreadable(nights, tmp_path):
    (tmp_path / "broken-PSG.edf").write_bytes(b"0       this is not an EDF header" * 10)
    return [str(tmp_path / "broken-PSG.edf"), "--vision", str(nights["vision"])], "broken-PSG.edf: not a readable EDF"


@pytest.mark.parametrize("case", [_other_channels, _vlm_other_rendering, _another_night, _unreadable])
def test_bad_input_is_one_line_and_writes_nothing(case, nights, tmp_path, capsys, stage_only_llava):
    from eeg_vlm import stage

    args = (nights, tmp_path, stage_only_llava) if case is _vlm_other_rendering else (nights, tmp_path)
    argv, message = case(*args)
    out = tmp_path / "out"
    line = refused(stage.main, argv + ["--out", str(out)], capsys, watch=[out], alone=True)
    assert re.search(message, line), line


def test_out_keeps_the_users_files_and_refuses_to_overwrite_them(nights, tmp_path, capsys):
    """--out is a folder; stage writes its own files into it, each atomically, and never deletes, hides or
    overwrites a file it did not write."""
    from eeg_vlm import stage

    psg, hyp, vision = str(nights["psgs"][0]), str(nights["hyps"][0]), str(nights["vision"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    assert stage.main([psg, "--hypnogram", hyp, "--vision", vision, "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert {"notes.txt", "stages.csv", "agreement.json", "report.html"} <= {p.name for p in out.iterdir()}
    # a rerun replaces what stage wrote; its agreement.json, which the new run does not write, goes
    assert stage.main([psg, "--vision", vision, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".eeg-vlm-stage.json", "hypnogram.edf", "hypnogram.png",
                                                     "notes.txt", "report.html", "stages.csv", "statistics.json"]
    # a file of stage's name that stage did not write (or that was edited since) is refused, before any work
    (out / "stages.csv").write_text("my own table\n")
    line = refused(stage.main, [psg, "--vision", vision, "--out", out], capsys, watch=[out], alone=True)
    assert line == (f"error: {out / 'stages.csv'}: is there and eeg-vlm stage did not write it (or it was changed "
                    "since); stage does not overwrite files it did not write: move it, or choose another --out")
    # the same in a folder stage never wrote into
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("<p>mine</p>")
    refused(stage.main, [psg, "--vision", vision, "--out", mine], capsys, [f"{mine / 'report.html'}: is there"],
            watch=[mine], alone=True)
    # a file given as --out (or a folder under a file) is refused, not renamed away
    (tmp_path / "file.out").write_text("keep\n")
    for target in (tmp_path / "file.out", tmp_path / "file.out" / "sub"):
        refused(stage.main, [psg, "--vision", vision, "--out", target], capsys, ["--out must be a folder"],
                watch=[tmp_path], alone=True)
    assert (tmp_path / "file.out").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.out", "mine", "out"]


def test_edf_dir_checks_every_output_folder_before_any_work(nights, tmp_path, capsys):
    from eeg_vlm import stage

    out = tmp_path / "all"
    out.mkdir()
    (out / "SC9011E0").write_text("a file where a night's folder goes\n")
    refused(stage.main, ["--edf-dir", nights["root"] / "edf", "--vision", nights["vision"], "--out", out], capsys,
            [f"{out / 'SC9011E0'}: --out must be a folder, but it is a file"], watch=[out], alone=True)


def test_explain_needs_a_vlm(nights):
    from eeg_vlm.stage import Stager

    with pytest.raises(FormatError, match="--explain needs --vlm"):
        Stager(nights["vision"], device="cpu").stage(nights["psgs"][0], explain=True)


def test_stage_draws_the_pixels_prepare_wrote(nights, tmp_path, monkeypatch):
    """A night recorded at 200 Hz: prepare and stage both resample it to the render's rate and draw it through
    the same functions; stage's in-memory images are prepare's PNGs byte for byte."""
    from scipy.signal import resample_poly

    from eeg_vlm.stage import stage_night
    from sleep_eeg.images import prepare
    from sleep_eeg.images.render import png_bytes
    from sleep_eeg.recording import edf
    from sleep_eeg.recording.nights import find_nights, read_channels
    from vision_modules import extract

    night = find_nights(nights["root"] / "edf")[0]
    signals, _ = read_channels(night, CHANNELS)
    src = tmp_path / "edf"
    hyp = edf.read_edf(night.hypnogram)
    edf.write_night(src / night.psg.name, src / night.hypnogram.name,
                    {c: resample_poly(x, 2, 1) for c, (x, _) in signals.items()}, 200.0,
                    [(a.onset, a.duration, a.text) for a in hyp.annotations], hyp.startdatetime)
    assert prepare.main(["--edf-dir", str(src), "--out", str(tmp_path / "data"), "--channels", ",".join(CHANNELS),
                         "--fs", "100", "--px-per-s", "4", "--height", "32", "--eval-fraction", "0",
                         "--trim-minutes", "-1", "--workers", "1"]) == 0
    render = json.loads((tmp_path / "data" / "render.json").read_text())
    assert render["fs"] == 100.0  # the rate is part of the render settings' identity
    vision = random_checkpoint(tmp_path / "vision", render, image_size=(32, 96))
    drawn = []
    real = extract.night_features

    def spy(model, images, *args, **kwargs):
        drawn.extend(images)
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(extract, "night_features", spy)
    stage_night(src / night.psg.name, vision=vision, device="cpu")
    pngs = sorted((tmp_path / "data" / "eeg_images_ft").glob("*.png"))
    assert len(drawn) == 30 and len(pngs) >= 25
    for png in pngs:
        epoch = int(png.stem.rsplit("_", 1)[1])
        assert png_bytes(drawn[epoch], RenderConfig.compress_level) == png.read_bytes(), png.name


@pytest.mark.parametrize("context", [3, "night"])
def test_stage_gives_a_night_the_features_extraction_gives_its_records(nights, tmp_path, context):
    """Images normalised by their night and a sequence encoder over the night: staging one recording gives each
    epoch the feature that `eeg-vlm vision extract` gives its record after `eeg-vlm prepare`."""
    from eeg_vlm.stage import stage_night
    from eeg_core.formats import read_records
    from sleep_eeg.images import prepare
    from sleep_eeg.recording.nights import find_nights
    from vision_modules import extract

    night = find_nights(nights["root"] / "edf")[0]
    src = tmp_path / "edf"
    src.mkdir()
    shutil.copy(night.psg, src), shutil.copy(night.hypnogram, src)
    assert prepare.main(["--edf-dir", str(src), "--out", str(tmp_path / "data"), "--channels", ",".join(CHANNELS),
                         "--px-per-s", "4", "--height", "32", "--eval-fraction", "0", "--trim-minutes", "-1",
                         "--workers", "1", "--night-norm"]) == 0
    render = json.loads((tmp_path / "data" / "render.json").read_text())
    assert render["night_norm"] is True
    vision = random_checkpoint(tmp_path / "vision", render, image_size=(32, 96), context=context)
    records = tmp_path / "data" / "eeg_ft.json"
    extracted = extract.extract_features(vision, records, tmp_path / "data" / "eeg_images_ft", progress=False)
    staged = {}
    real = extract.night_features

    def spy(model, images, epochs=None, *args, **kwargs):
        feats, probs = real(model, images, epochs, *args, **kwargs)
        staged.update(zip(epochs, feats))
        return feats, probs

    extract.night_features, saved = spy, extract.night_features
    try:
        stage_night(src / night.psg.name, vision=vision, device="cpu")
    finally:
        extract.night_features = saved
    epochs = [r["epoch"] for r in read_records(records)]
    assert len(epochs) >= 25
    np.testing.assert_allclose(np.stack([staged[e] for e in epochs]), extracted, rtol=1e-4, atol=1e-4)


def test_another_nights_hypnogram_is_refused_by_stage_as_by_prepare(nights, tmp_path, capsys):
    """One rule (sleep_eeg.recording.nights.scoring_on_recording): the hypnogram of night 2 beside night 1's recording,
    which starts ten minutes later and runs past its end, is refused by both commands with the same line."""
    from eeg_vlm import stage
    from sleep_eeg.images import prepare
    from sleep_eeg.recording import edf
    from sleep_eeg.recording.nights import find_nights

    night = find_nights(nights["root"] / "edf")[0]
    hyp = edf.read_edf(night.hypnogram)
    src = tmp_path / "edf"
    src.mkdir()
    shutil.copy(night.psg, src)
    later = edfio.Edf([], starttime=(hyp.startdatetime + datetime.timedelta(minutes=10)).time(),
                      recording=edfio.Recording(startdate=hyp.startdate), annotations=hyp.annotations)
    later.write(src / night.hypnogram.name)
    lines = [refused(main, argv, capsys, watch=[tmp_path], alone=True) for main, argv in (
        (stage.main, [src / night.psg.name, "--hypnogram", src / night.hypnogram.name, "--vision", nights["vision"],
                      "--out", tmp_path / "report"]),
        (prepare.main, ["--edf-dir", src, "--out", tmp_path / "data", "--workers", "1"]))]
    assert lines[0] == lines[1] and "\n" not in lines[0], lines
    assert lines[0].startswith(f"error: {src / night.hypnogram.name}: scores +0.17 h to +0.42 h (starting ")
    assert lines[0].endswith(f"of a recording of 0.25 h ({src / night.psg.name}): a hypnogram of another night")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edf"]
