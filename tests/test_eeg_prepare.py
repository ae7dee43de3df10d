"""`eeg-vlm prepare`: records schema, split by subject, label alignment, label-free images, bad inputs."""
import json
import os
import shutil
from collections import Counter

import pytest
from PIL import Image

from eeg_core.answer import stage_line
from eeg_core.atomic import atomic_folder, staging_folder, swap_folder
from eeg_core.errors import FormatError
from eeg_core.formats import check_render, read_records, records_render
from eeg_core.layout import RENDER_FILE
from sleep_eeg.images import prepare
from sleep_eeg.images.render import RenderConfig
from sleep_eeg.recording import edf, stages
from sleep_eeg.recording.nights import find_nights, read_channels, read_night
from sleep_eeg.synthetic import synth

from refusal import refused

PANELS = ("EEG Fpz-Cz", "EOG horizontal", "EMG submental")


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    out = tmp_path_factory.mktemp("edf")
    synth.synth_nights(out, nights=4, seed=5, hours=0.25, nights_per_subject=2)
    return out


def test_records_schema_split_and_alignment(nights, tmp_path, capsys):
    out = tmp_path / "sleep_data"
    assert prepare.main(["--edf-dir", str(nights), "--out", str(out), "--workers", "2",
                         "--eval-fraction", "0.5", "--cot", "measured"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["split", "W", "N1", "N2", "N3", "REM", "total"]
    train = json.loads((out / "eeg_ft.json").read_text())
    evals = read_records(out / "eeg_eval.jsonl")
    assert train and evals
    assert {r["subject"] for r in train}.isdisjoint({r["subject"] for r in evals})
    truth = {}
    for night in find_nights(nights):
        x, fs, ann = read_night(night)
        idx, labels = stages.scorable_epochs(ann, len(x), fs)
        truth.update({f"{night.name}_{i:04d}": lab for i, lab in zip(idx, labels)})
    assert len(train) + len(evals) == len(truth)
    for r in train:
        assert set(r) == {"id", "image", "conversations", "label", "subject", "night", "epoch", "psg", "render"}
        assert r["image"] == [f"{r['id']}.png"] * 2 and (out / "eeg_images_ft" / r["image"][0]).is_file()
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"].splitlines()[-1] == stage_line(r["label"])
        assert r["label"] == truth[r["id"]] and r["id"].endswith(f"_{r['epoch']:04d}")
        assert (nights / r["psg"]).is_file() and r["id"] == f"{r['psg'].split('-')[0]}_{r['epoch']:04d}"
    for q in evals:
        assert set(q) == {"question_id", "image", "text", "label", "subject", "night", "epoch", "psg", "render"}
        assert "<image>" not in q["text"] and (out / "eeg_images_eval" / q["image"][0]).is_file()
        assert q["label"] == truth[q["question_id"]]
    named = prepare.split_subjects(["SC400", "SC401", "SC402"], 0.0, ["SC401"], 0)
    assert named == {"SC401"}
    with pytest.raises(FormatError, match="unknown subject"):
        prepare.split_subjects(["SC400"], 0.0, ["SC499"], 0)


@pytest.mark.parametrize("night_norm", [False, True])
def test_images_do_not_depend_on_labels(nights, tmp_path, night_norm):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        shutil.copy(nights / "SC9001E0-PSG.edf", d)
    shutil.copy(nights / "SC9001EC-Hypnogram.edf", a)
    # same signals, every stage replaced by another one
    hyp = edf.read_edf(nights / "SC9001EC-Hypnogram.edf")
    swap = {"Sleep stage W": "Sleep stage 2", "Sleep stage 1": "Sleep stage R", "Sleep stage 2": "Sleep stage 3",
            "Sleep stage 3": "Sleep stage W", "Sleep stage 4": "Sleep stage 1", "Sleep stage R": "Sleep stage 4"}
    ann = [(x.onset, x.duration, swap.get(x.text, x.text)) for x in hyp.annotations]
    night, = find_nights(a)
    cfg = RenderConfig(channels=PANELS, spectrogram=True, context_s=5, night_norm=night_norm)
    signals, _ = read_channels(night, PANELS)
    edf.write_night(b / "ignored-PSG.edf", b / "SC9001EC-Hypnogram.edf", {c: x for c, (x, _) in signals.items()},
                    {c: fs for c, (_, fs) in signals.items()}, ann, hyp.startdatetime)
    (b / "ignored-PSG.edf").unlink()
    for d in (a, b):
        prepare.prepare(d, d / "out", eval_fraction=0, trim_minutes=None, render=cfg)
    ra = {r["id"]: r for r in json.loads((a / "out" / "eeg_ft.json").read_text())}
    rb = {r["id"]: r for r in json.loads((b / "out" / "eeg_ft.json").read_text())}
    common = sorted(set(ra) & set(rb))
    assert len(common) > 20 and any(ra[k]["label"] != rb[k]["label"] for k in common)
    for k in common:
        pa, pb = (d / "out" / "eeg_images_ft" / f"{k}.png" for d in (a, b))
        assert pa.read_bytes() == pb.read_bytes()


def test_night_norm_reads_nothing_outside_its_night(nights, tmp_path):
    """Another night's recording, louder or absent, leaves this night's normalised images as they were."""
    night = next(n for n in find_nights(nights) if n.name == "SC9001E0")
    other = next(n for n in find_nights(nights) if n.subject != night.subject)
    cfg = RenderConfig(channels=PANELS, px_per_s=4, spectrogram=True, night_norm=True)
    images = {}
    for case in ("alone", "with a loud other night"):
        d = tmp_path / case
        d.mkdir()
        shutil.copy(night.psg, d), shutil.copy(night.hypnogram, d)
        if case != "alone":
            signals, _ = read_channels(other, PANELS)
            hyp = edf.read_edf(other.hypnogram)
            edf.write_night(d / other.psg.name, d / other.hypnogram.name,
                            {c: 6.0 * x for c, (x, _) in signals.items()}, {c: fs for c, (_, fs) in signals.items()},
                            [(a.onset, a.duration, a.text) for a in hyp.annotations], hyp.startdatetime)
        prepare.prepare(d, d / "out", eval_fraction=0, trim_minutes=None, render=cfg, workers=1)
        folder = d / "out" / "eeg_images_ft"
        images[case] = {p.name: p.read_bytes() for p in folder.glob("SC9001E0_*.png")}
    assert len(images["alone"]) > 20 and images["alone"] == images["with a loud other night"]


def test_render_settings_travel_with_the_records(nights, tmp_path):
    cfg = RenderConfig(channels=PANELS, px_per_s=4)
    prepare.prepare(nights, tmp_path, cot_mode="none", eval_fraction=0.5, render=cfg)
    saved = json.loads((tmp_path / RENDER_FILE).read_text())
    assert saved == cfg.to_dict() and RenderConfig.from_dict(saved) == cfg and saved["channels"] == list(PANELS)
    for name in ("eeg_ft.json", "eeg_eval.jsonl"):
        records = read_records(tmp_path / name)
        assert records_render(records, tmp_path / name) == saved
        with Image.open(tmp_path / ("eeg_images_ft" if name.endswith("json") else "eeg_images_eval")
                        / records[0]["image"][0]) as im:
            assert im.size == cfg.size == (120, 128 + 64 + 24)
    other = RenderConfig().to_dict()
    with pytest.raises(FormatError, match=r"eeg_eval.jsonl: images drawn with other render settings.*channels"):
        check_render(other, saved, "checkpoints/vision", str(tmp_path / "eeg_eval.jsonl"))
    records = read_records(tmp_path / "eeg_ft.json")
    records[3]["render"] = other["id"]
    with pytest.raises(FormatError, match=rf"record '{records[3]['id']}' \(#3\) was drawn with render settings"):
        records_render(records, tmp_path / "eeg_ft.json")
    saved["px_per_s"] = 12
    (tmp_path / RENDER_FILE).write_text(json.dumps(saved))
    with pytest.raises(FormatError, match="render.json: render settings do not match their id"):
        records_render(read_records(tmp_path / "eeg_eval.jsonl"), tmp_path / "eeg_eval.jsonl")


def _expect_error(tmp_path, edf_dir, pattern, capsys, *extra):
    """Refused in one line holding ``pattern``, and nothing written under --out (no records, no images, no
    temporary file; --out is not even made)."""
    out = tmp_path / "out"
    return refused(prepare.main, ["--edf-dir", edf_dir, "--out", out, "--workers", "1", *extra], capsys, [pattern],
                   watch=[out], alone=True)


def test_bad_inputs_give_one_line_errors_and_no_records(nights, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("SC9001E0-PSG.edf", "SC9001EC-Hypnogram.edf"):
        shutil.copy(nights / name, src)
    err = _expect_error(tmp_path, src, "no channel 'EEG C3-A2'", capsys, "--channel", "EEG C3-A2")
    assert "EEG Fpz-Cz, EEG Pz-Oz" in err
    (src / "SC9001E0-PSG.edf").rename(src / "x.bin")
    _expect_error(tmp_path, src, "SC9001EC-Hypnogram.edf: hypnogram has no matching PSG", capsys)
    (src / "x.bin").rename(src / "SC9001E0-PSG.edf")
    (src / "SC9001EC-Hypnogram.edf").rename(src / "y.bin")
    _expect_error(tmp_path, src, "SC9001E0-PSG.edf: no hypnogram file", capsys)
    psg = src / "SC9001E0-PSG.edf"
    data = psg.read_bytes()
    psg.write_bytes(data[: len(data) // 2 + 17])
    (src / "y.bin").rename(src / "SC9001EC-Hypnogram.edf")
    _expect_error(tmp_path, src, "truncated EDF", capsys)
    psg.write_bytes(data)
    hyp = edf.read_edf(src / "SC9001EC-Hypnogram.edf")
    n = int(hyp.annotations[-1].onset + hyp.annotations[-1].duration)
    x = read_night(find_nights(src)[0])[0]
    edf.write_night(tmp_path / "unused.edf", src / "SC9001EC-Hypnogram.edf", {"EEG Fpz-Cz": x}, 100.0,
                    [(0, n, "Sleep stage ?")], hyp.startdatetime)
    _expect_error(tmp_path, src, "no scorable 30-s epoch", capsys)


def test_cot_none_answers_are_the_stage_line(nights, tmp_path):
    prepare.prepare(nights, tmp_path, cot_mode="none", eval_fraction=0.5, seed=1)
    train = read_records(tmp_path / "eeg_ft.json")
    assert all(r["conversations"][1]["value"] == stage_line(r["label"]) for r in train)


def test_rerun_with_another_split_leaves_no_stale_images(nights, tmp_path):
    for eval_subject in ("SC900", "SC901"):
        result = prepare.prepare(nights, tmp_path, cot_mode="none", eval_subjects=[eval_subject])
        for records, folder in (("eeg_ft.json", "eeg_images_ft"), ("eeg_eval.jsonl", "eeg_images_eval")):
            named = {r["image"][0] for r in read_records(tmp_path / records)}
            assert {p.name for p in (tmp_path / folder).iterdir()} == named | {prepare.IMAGES_MANIFEST}
        # the result names what was written
        train, questions = read_records(tmp_path / "eeg_ft.json"), read_records(tmp_path / "eeg_eval.jsonl")
        assert result.eval_subjects == [eval_subject]
        assert (result.train_records, result.eval_questions) == (len(train), len(questions))
        assert result.counts["train"] == Counter(r["label"] for r in train)
        assert result.counts["eval"] == Counter(q["label"] for q in questions)
        assert {r["subject"] for r in read_records(tmp_path / "eeg_eval.jsonl")} == {eval_subject}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eeg_eval.jsonl", "eeg_ft.json", "eeg_images_eval",
                                                          "eeg_images_ft", RENDER_FILE]


def test_eeg_vlm_unknown_command_is_one_line_on_stderr(capsys):
    from eeg_vlm import cli

    line = refused(cli.main, ["prepar"], capsys, alone=True, quiet=True)
    assert line == "error: unknown command 'prepar'; commands: synth, prepare, vision, baseline, score, stage, demo (eeg-vlm --help)"
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "eeg-vlm prepare" in capsys.readouterr().out


def test_an_image_folder_holding_the_users_files_is_refused_not_replaced(nights, tmp_path, capsys):
    """Prepare replaces its image folders whole, so it refuses one that holds a file it did not draw there."""
    prepare.prepare(nights, tmp_path, cot_mode="none", eval_subjects=["SC900"])
    mine = tmp_path / "eeg_images_ft" / "my_notes.txt"
    mine.write_text("mine\n")
    line = refused(prepare.main, ["--edf-dir", nights, "--out", tmp_path, "--workers", "1"], capsys,
                   watch=[tmp_path / "eeg_images_ft", tmp_path / "eeg_images_eval"], alone=True)
    assert line == (f"error: {mine}: eeg-vlm prepare did not draw it, and it replaces "
                    f"{tmp_path / 'eeg_images_ft'} whole: move it, or choose another --out")
    mine.unlink()
    prepare.prepare(nights, tmp_path, cot_mode="none", eval_subjects=["SC901"])  # its own images it replaces


def test_the_folder_swap(tmp_path, monkeypatch):
    """eeg_core.atomic.swap_folder, the one folder swap: the new folder replaces the old one whole; a failed rename
    puts the old one back; with replace=False the first finished writer's folder stays."""
    target = tmp_path / "models" / "m"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_folder(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]  # nothing of the old folder is left
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    staged = staging_folder(target)
    (staged / "d").write_text("4")
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: real(a, b) if str(a) != str(staged) else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        swap_folder(staged, target)
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == ["b"]  # the old folder is back
    shutil.rmtree(staged)
    other = staging_folder(target, unique=False)
    assert other.name == ".m.tmp"
    (other / "e").write_text("5")
    assert swap_folder(other, target, replace=False) == target  # another writer finished first: its folder stays
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no staging or old folder left beside it
