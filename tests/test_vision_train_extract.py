"""Training a vision module on a separable image set, extracting its features, and bad input."""
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eeg_core.atomic import file_sha256, write_json, write_jsonl
from eeg_core.errors import FormatError
from eeg_core.formats import load_features, read_records
from eeg_core.stages import STAGES
from eeg_vlm.cli import main as eeg_vlm_main
from vision_modules import extract_features, train_vision_module
from vision_modules.cli import main as vision_main

from refusal import refused

SIZE = (32, 96)  # H, W of the module input in these tests


def make_images(root: Path, n_per_class: int = 24, seed: int = 0) -> Path:
    """Wide white images with a black sine trace whose period (and so the class) differs per stage;
    four subjects; records shuffled. Returns the records file."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    h, w = 40, 120
    cols, rows = np.arange(w), np.arange(h)[:, None]
    records = []
    for c, stage in enumerate(STAGES):
        for j in range(n_per_class):
            y = h / 2 + h / 3 * np.sin(2 * np.pi * cols / (4 + 7 * c) + rng.uniform(0, 2 * np.pi))
            ink = np.abs(rows - y[None, :]) < 1.5
            img = np.where(ink, 0, 255).astype(np.int16) + rng.integers(-25, 25, (h, w))
            name = f"{stage}_{j}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB").save(root / "img" / name)
            records.append({"id": f"{stage}_{j}", "image": [name, name], "label": stage, "subject": f"s{j % 4}"})
    random.Random(seed).shuffle(records)
    write_json(root / "records.json", records)
    return root / "records.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    records = make_images(root)
    metrics = train_vision_module(
        "resnet18", records, root / "img", root / "ckpt", epochs=6, batch_size=16, lr=2e-3,
        image_size=SIZE, val_fraction=0.25, seed=0, progress=False,
    )
    return root, records, root / "ckpt", metrics


def test_training_reaches_high_validation_accuracy(trained):
    root, records, ckpt, metrics = trained
    assert metrics["accuracy"] >= 0.9 and metrics["macro_f1"] >= 0.9
    assert metrics["n"] == 30  # one of the four subjects (6 epochs each of 5 stages) held out
    config = json.loads((ckpt / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["classes"] == list(STAGES)
    assert config["feature_dim"] == 1024 and config["input_size"] == [3, *SIZE]
    assert config["module_kwargs"] == {"image_size": list(SIZE), "tap": -2}  # defaults pinned for extraction
    assert config["split"] == {"by": "subject", "n_train": 90, "n_val": 30}
    assert config["val_metrics"]["accuracy"] == metrics["accuracy"]
    assert len(config["history"]) == metrics["epoch"]
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "resume.pt").is_file()


def test_extraction_rows_follow_records_and_sidecar_matches(trained, tmp_path):
    root, records, ckpt, _ = trained
    out = tmp_path / "train_feats.npy"
    feats = extract_features(ckpt, records, root / "img", out, batch_size=7, progress=False)
    recs = read_records(records)
    loaded = load_features(out, recs, dim=1024)
    assert loaded.shape == (len(recs), 1, 1024) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, feats)
    sidecar = json.loads(Path(str(out) + ".json").read_text())
    assert sidecar["n"] == len(recs) and sidecar["d"] == 1024
    assert sidecar["checkpoint_sha256"] == file_sha256(ckpt / "model.safetensors")
    assert sidecar["records_sha256"] == file_sha256(records)

    # shuffle the records (as JSONL questions without labels): rows follow the records
    order = list(range(len(recs)))
    random.Random(1).shuffle(order)
    shuffled = [{"question_id": recs[i]["id"], "image": recs[i]["image"], "text": "stage?"} for i in order]
    write_jsonl(tmp_path / "questions.jsonl", shuffled)
    feats2 = extract_features(ckpt, tmp_path / "questions.jsonl", root / "img", tmp_path / "q.npy", batch_size=7, progress=False)
    np.testing.assert_allclose(feats2, feats[order], rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats[0], feats[1])  # rows do differ between records


def test_predict_answers_score_like_any_model(trained, tmp_path):
    """`eeg-vlm vision predict`: one answer per question with the head's probabilities, scored by `score`."""
    from sleep_eeg.evaluation.score import score

    root, records, ckpt, _ = trained
    recs = read_records(records)
    questions = [{"question_id": r["id"], "image": r["image"], "text": "stage?", "label": r["label"],
                  "subject": r["subject"]} for r in recs]
    write_jsonl(tmp_path / "q.jsonl", questions)
    answers_file = tmp_path / "answers.jsonl"
    with pytest.raises(SystemExit) as e:
        eeg_vlm_main(["vision", "predict", "--checkpoint", str(ckpt), "--question-file", str(tmp_path / "q.jsonl"),
                      "--image-folder", str(root / "img"), "--answers-file", str(answers_file), "--no-progress"])
    assert e.value.code == 0
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    for a in answers:
        probs = a["metadata"]["probabilities"]
        assert list(probs) == list(STAGES) and abs(sum(probs.values()) - 1) < 1e-4
        assert a["text"] == f"Sleep stage: {max(probs, key=probs.get)}" and a["metadata"]["label"] in STAGES
    metrics = score(tmp_path / "q.jsonl", answers_file, tmp_path / "scores")
    assert metrics["n"] == len(questions) and metrics["unparseable"] == 0
    assert metrics["accuracy"] >= 0.9  # the separable training set, seen in training


def test_cli_extraction_is_byte_identical(trained, tmp_path):
    root, records, ckpt, _ = trained
    outs = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for out in outs:
        argv = ["extract", "--checkpoint", str(ckpt), "--records", str(records), "--image-folder", str(root / "img"),
                "--out", str(out), "--no-progress"]
        with pytest.raises(SystemExit) as e:
            eeg_vlm_main(["vision", *argv])  # what `eeg-vlm vision extract ...` runs
        assert e.value.code == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_resume_continues_training(trained, tmp_path):
    root, records, _, _ = trained
    out = tmp_path / "ckpt"
    kw = dict(batch_size=16, image_size=SIZE, val_fraction=0.25, seed=0, progress=False)
    train_vision_module("resnet18", records, root / "img", out, epochs=1, **kw)
    train_vision_module("resnet18", records, root / "img", out, epochs=2, resume=True, **kw)
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["epoch"] == 1 and [h["epoch"] for h in state["history"]] == [1, 2]
    with pytest.raises(FormatError, match="--resume with feature_dim"):
        train_vision_module("resnet18", records, root / "img", out, epochs=3, resume=True, feature_dim=512, **kw)
    with pytest.raises(FormatError, match="nothing to resume"):
        train_vision_module("resnet18", records, root / "img", tmp_path / "fresh", epochs=1, resume=True, **kw)


def test_cached_images_train_the_same_weights_as_decoding_every_epoch(tmp_path, monkeypatch):
    """Decoded once into a uint8 tensor (in memory or memory-mapped) or decoded at every access: the same input
    tensors bit for bit (the same resize of the same pixels, then the same element-wise normalisation), so one
    seeded epoch gives bit-identical weights (same order, same arithmetic on the same machine and threads)."""
    from vision_modules import data as vdata
    from vision_modules import train as vtrain

    records = make_images(tmp_path, n_per_class=4)
    recs = read_records(records)
    paths = vdata.record_image_paths(recs, tmp_path / "img", "r", progress=False)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    old = vdata.EEGImageDataset(paths, None, SIZE, mean, std)
    in_ram = vdata.decode_record_images(paths, recs, "r", SIZE, progress=False)
    monkeypatch.setattr(vdata, "MEMMAP_BYTES", 0)
    mapped = vdata.decode_record_images(paths, recs, "r", SIZE, progress=False)
    assert in_ram.shape == (20, 3, *SIZE) and in_ram.dtype == torch.uint8 and torch.equal(in_ram, mapped)
    for i in (0, 7, 19):
        assert torch.equal(vdata.CachedImageDataset(mapped, None, mean, std)[i][0], old[i][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "records.json"]  # nothing left beside the images
    # nothing kept between runs: an image redrawn since is read anew (no stale copy)
    redrawn = tmp_path / "redrawn"
    shutil.copytree(tmp_path / "img", redrawn)
    Image.open(paths[5]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(redrawn / paths[5].name)
    again = vdata.decode_record_images([redrawn / p.name for p in paths], recs, "r", SIZE, progress=False)
    assert [i for i in range(20) if not torch.equal(again[i], in_ram[i])] == [5]
    shutil.rmtree(redrawn)

    kw = dict(epochs=1, batch_size=8, image_size=SIZE, val_fraction=0.25, seed=3, progress=False)
    train_vision_module("resnet18", records, tmp_path / "img", tmp_path / "cached", **kw)

    def decode_every_epoch(data, where, model, progress):
        vdata.record_image_paths(data.records, tmp_path / "img", where, progress=False)  # the up-front check
        return vdata.EEGImageDataset(data.paths, data.labels, model.input_size, model.mean, model.std)

    monkeypatch.setattr(vtrain, "image_dataset", decode_every_epoch)
    train_vision_module("resnet18", records, tmp_path / "img", tmp_path / "png", **kw)
    a, b = (torch.load(tmp_path / d / "resume.pt", weights_only=True) for d in ("cached", "png"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert (tmp_path / "cached" / "model.safetensors").read_bytes() == (tmp_path / "png" / "model.safetensors").read_bytes()


def test_vision_command_lets_waiting_threads_sleep(monkeypatch):
    """`eeg-vlm vision` sets OMP_WAIT_POLICY=PASSIVE before torch loads (unless the user set a policy)."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `eeg-vlm` process (the package stays loaded)
    with pytest.raises(SystemExit):
        eeg_vlm_main(["vision", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        eeg_vlm_main(["vision", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_training_steps_one_by_one(tmp_path):
    from vision_modules.train import (
        VisionTrainConfig,
        class_weights,
        is_better,
        load_training_data,
        make_optimizer,
        recorded_args,
    )

    # options: a dataclass; keyword overrides on top; the builder kwargs the user set
    opts = VisionTrainConfig(epochs=4, image_size=48, tap=-1)
    assert opts.module_kwargs() == {"image_size": [48, 48], "tap": -1}
    assert VisionTrainConfig().module_kwargs() == {}
    with pytest.raises(TypeError):
        train_vision_module("resnet18", "r.json", "img", "out", epochs=1, no_such_option=1)
    args = recorded_args("resnet18", tmp_path / "r.json", "img", tmp_path / "out", opts)
    assert list(args)[:5] == ["arch", "records", "image_folder", "out", "epochs"] and args["records"] == str(tmp_path / "r.json")
    assert json.loads(json.dumps(args))["image_size"] == 48

    # data: checked records and a split that holds out whole subjects
    records = make_images(tmp_path, n_per_class=4)
    data = load_training_data(records, tmp_path / "img", VisionTrainConfig(val_fraction=0.25, progress=False))
    assert data.split == "subject" and len(data.train_idx) + len(data.val_idx) == 20 and data.keys is None
    subject = {i: data.records[i]["subject"] for i in range(20)}
    assert not {subject[i] for i in data.train_idx} & {subject[i] for i in data.val_idx}

    # class weights: inverse frequency over the classes present, 0 for an absent class
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]))
    np.testing.assert_allclose(w, [6 / 9, 2.0, 1.0, 0.0, 0.0], rtol=1e-6)

    # schedule: linear warm-up, then cosine down to 0 at the last step
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = make_optimizer(model, VisionTrainConfig(epochs=2, lr=0.1), steps_per_epoch=20)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.05) and lrs[1] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi / 40)))
    assert max(lrs) <= 0.1 and lrs[-1] < 0.001 and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)

    # best epoch: macro-F1, then accuracy; a tie goes to the later epoch; without validation every epoch is kept
    best = {"macro_f1": 0.5, "accuracy": 0.6}
    assert is_better({"macro_f1": 0.6, "accuracy": 0.1}, best) and is_better(dict(best), best)
    assert not is_better({"macro_f1": 0.5, "accuracy": 0.5}, best) and is_better(best, None)
    assert is_better({"macro_f1": None, "accuracy": None}, {"macro_f1": None, "accuracy": None})


def _bad_copy(root: Path, tmp_path: Path, edit) -> tuple[Path, Path]:
    """A copy of the image set whose records (or images) ``edit`` spoils; returns (records, image folder)."""
    folder = tmp_path / "img"
    shutil.copytree(root / "img", folder)
    recs = read_records(root / "records.json")[:10]
    records = tmp_path / "records.json"
    edit(recs, folder)
    records.write_text(json.dumps(recs))
    return records, folder


def _missing_image(recs, folder):
    recs[3]["image"] = ["gone.png", "gone.png"]


def _not_an_image(recs, folder):
    (folder / recs[3]["image"][0]).write_text("not a png")


def _empty(recs, folder):
    recs.clear()


def _bad_label(recs, folder):
    recs[3]["label"] = "S4"


@pytest.mark.parametrize(
    "edit, message, stage",
    [
        (_missing_image, r"record '[^']+' \(#3\): image .*gone\.png not found", "both"),
        (_not_an_image, r"record '[^']+' \(#3\): .*\.png is not a readable image", "both"),
        (_empty, r"records\.json: records file holds no records", "both"),
        (_bad_label, r"records\.json: record '[^']+' \(#3\): label 'S4' is not one of W N1 N2 N3 REM", "train"),
    ],
)
def test_bad_input_one_line_error_and_nothing_written(trained, tmp_path, capsys, edit, message, stage):
    root, _, ckpt, _ = trained
    records, folder = _bad_copy(root, tmp_path, edit)
    runs = {
        "train": (["train", "--records", str(records), "--image-folder", str(folder), "--out", str(tmp_path / "out"),
                   "--epochs", "1", "--image-size", "32", "96", "--no-progress"], tmp_path / "out"),
        "extract": (["extract", "--checkpoint", str(ckpt), "--records", str(records), "--image-folder", str(folder),
                     "--out", str(tmp_path / "f.npy"), "--no-progress"], tmp_path / "f.npy"),
    }
    for name in (["train", "extract"] if stage == "both" else [stage]):
        argv, target = runs[name]
        err = refused(vision_main, argv, capsys, watch=[tmp_path], alone=True)
        assert re.search(message, err), err
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "records.json"]


def test_feature_size_mismatch_is_refused(trained, tmp_path):
    root, records, ckpt, _ = trained
    with pytest.raises(FormatError, match="gives 1024-d features but 4096 were asked"):
        extract_features(ckpt, records, root / "img", tmp_path / "f.npy", feature_dim=4096, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_extract_needs_a_checkpoint(trained, tmp_path):
    root, records, _, _ = trained
    with pytest.raises(FormatError, match="not a vision-module checkpoint"):
        extract_features(tmp_path, records, root / "img", tmp_path / "f.npy", progress=False)
    assert list(tmp_path.iterdir()) == []


USER_MODULE = '''
from torch import nn
from vision_modules import VisionOutput, register_vision_module

@register_vision_module("user_tiny_cnn")
class TinyCNN(nn.Module):
    def __init__(self, feature_dim=1024, num_classes=5, pretrained=False, image_size=(32, 96)):
        super().__init__()
        self.feature_dim, self.input_size = feature_dim, (3, *image_size)
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, feature_dim, 3, stride=2),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, images):
        h = self.body(images).view(images.shape[0], -1)  # a plain (not channels-last) layout is assumed
        return VisionOutput(h[:, None, :], self.head(h))
'''


def test_user_module_trains_and_is_reimported_for_extraction(trained, tmp_path, monkeypatch, scratch_registry):
    from vision_modules import list_vision_modules
    from vision_modules.registry import unregister_vision_module

    root, records, _, _ = trained
    (tmp_path / "my_eeg_modules.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_eeg_modules  # noqa: F401  (registers user_tiny_cnn)

    train_vision_module("user_tiny_cnn", records, root / "img", tmp_path / "ck", epochs=1, batch_size=32,
                        feature_dim=64, val_fraction=0.25, progress=False)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["arch"] == "user_tiny_cnn" and config["import_path"] == "my_eeg_modules"
    # a fresh process has not imported the user's module: a checkpoint alone never makes it import one ...
    unregister_vision_module("user_tiny_cnn")
    monkeypatch.delitem(sys.modules, "my_eeg_modules")
    with pytest.raises(FormatError, match=r"config.json: vision module 'user_tiny_cnn' is registered by the Python "
                                          r"module 'my_eeg_modules'.*--import-module my_eeg_modules"):
        extract_features(tmp_path / "ck", records, root / "img", tmp_path / "f.npy", feature_dim=64, progress=False)
    assert "my_eeg_modules" not in sys.modules and not (tmp_path / "f.npy").exists()
    # ... the user names it
    feats = extract_features(tmp_path / "ck", records, root / "img", tmp_path / "f.npy", feature_dim=64, progress=False,
                             import_modules=["my_eeg_modules"])
    assert feats.shape == (len(read_records(records)), 1, 64)
    assert "user_tiny_cnn" in list_vision_modules()
    # `vision predict` takes --import-module as extraction does
    unregister_vision_module("user_tiny_cnn")
    monkeypatch.delitem(sys.modules, "my_eeg_modules")
    monkeypatch.chdir(tmp_path)  # --import-module also searches the working directory
    answers = tmp_path / "answers.jsonl"
    argv = ["vision", "predict", "--checkpoint", str(tmp_path / "ck"), "--question-file", str(records),
            "--image-folder", str(root / "img"), "--answers-file", str(answers), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        eeg_vlm_main(argv + ["--import-module", "my_eeg_modules"])
    assert e.value.code == 0 and len(answers.read_text().splitlines()) == len(read_records(records))
    # a module whose preprocessing changed since training: the checkpoint's saved mean is compared on load
    from vision_modules.checkpoint import load_vision_module

    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**config, "mean": [0.4, 0.5, 0.5]}))
    with pytest.raises(FormatError, match=r"config.json: mean \[0.4, 0.5, 0.5\] was saved with the checkpoint, but "
                                          r"vision module 'user_tiny_cnn' now has \[0.5, 0.5, 0.5\]"):
        load_vision_module(tmp_path / "ck")


def _as_nights(records: Path, out: Path, render: dict | None = None) -> Path:
    """The records as 12 nights of 10 consecutive epochs (file order), optionally drawn with ``render``."""
    recs = read_records(records)
    for i, r in enumerate(recs):
        r.update(psg=f"N{i // 10:02d}-PSG.edf", epoch=i % 10)
        if render is not None:
            r["render"] = render["id"]
    write_json(out, recs)
    if render is not None:
        write_json(out.parent / "render.json", render)
    return out


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_sequence_feature_reads_its_window_and_nothing_across_nights_or_files(trained, tmp_path, name):
    from vision_modules.checkpoint import load_vision_module
    from vision_modules.data import record_image_paths
    from vision_modules.extract import night_features, record_outputs
    from vision_modules.sequence import create_sequence_encoder

    root, records, ckpt, _ = trained
    nights = _as_nights(records, tmp_path / "nights.json")
    recs = read_records(nights)
    model, _ = load_vision_module(ckpt)
    torch.manual_seed(0)
    model.sequence_encoder, model.context = create_sequence_encoder(name, 1024, 5).eval(), 2
    paths = record_image_paths(recs, root / "img", "nights", progress=False)

    def features(paths, recs=recs):
        return record_outputs(model, recs, paths, "nights", progress=False)[0][:, 0]

    base = features(paths)
    changed = list(paths)
    changed[15] = paths[0] if paths[15] != paths[0] else paths[1]  # night 1, epoch 5 gets another image
    moved = np.flatnonzero(np.abs(features(changed) - base).max(axis=1) > 1e-6)
    assert moved.tolist() == [13, 14, 15, 16, 17]  # epochs 3..7 of night 1: i-2..i+2, within the night
    changed = list(paths)
    changed[19] = paths[0]  # the last epoch of night 1: night 2's first epoch is next in the file
    moved = np.flatnonzero(np.abs(features(changed) - base).max(axis=1) > 1e-6)
    assert moved.tolist() == [17, 18, 19]
    # A split (another file) holding only night 2 gives night 2 the same features: nothing leaks across files.
    np.testing.assert_allclose(features(paths[20:30], recs[20:30]), base[20:30], rtol=1e-5, atol=1e-5)
    # eeg-vlm stage's path (one night's images in memory) gives the night the same features.
    images = [Image.open(p) for p in paths[10:20]]
    in_memory, probs = night_features(model, images, epochs=[r["epoch"] for r in recs[10:20]])
    np.testing.assert_allclose(in_memory[:, 0], base[10:20], rtol=1e-4, atol=1e-4)
    assert probs.shape == (10, 5)
    # The whole night: a change reaches every epoch of its night and none of another night.
    model.context = "night"
    base = features(paths)
    changed = list(paths)
    changed[15] = paths[0] if paths[15] != paths[0] else paths[1]
    moved = np.flatnonzero(np.abs(features(changed) - base).max(axis=1) > 1e-6)
    assert moved.tolist() == list(range(10, 20))
    bad = [dict(r) for r in recs]
    del bad[4]["epoch"]
    with pytest.raises(FormatError, match=r"nights: record '.*' \(#4\) has no 'epoch'"):
        record_outputs(model, bad, paths, "nights", progress=False)


def test_sequence_encoder_trains_end_to_end_and_render_settings_bind_the_checkpoint(trained, tmp_path):
    from sleep_eeg.images.render import RenderConfig
    from vision_modules.checkpoint import load_vision_module
    from vision_modules.predict import predict_stages

    root, records, _, _ = trained
    drawn = RenderConfig(px_per_s=4).to_dict()
    nights = _as_nights(records, tmp_path / "data" / "nights.json", drawn)
    metrics = train_vision_module("resnet18", nights, root / "img", tmp_path / "ckpt", epochs=2, batch_size=16,
                                  lr=2e-3, image_size=SIZE, val_fraction=0.25, context=1, sequence_epochs=2,
                                  progress=False)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["render"] == drawn
    assert config["sequence"] == {"name": "gru", "import_path": "vision_modules.sequence", "context": 1}
    assert metrics["macro_f1"] is not None and (tmp_path / "ckpt" / "sequence.safetensors").is_file()
    model, _ = load_vision_module(tmp_path / "ckpt")
    assert model.context == 1 and model.sequence_encoder is not None
    feats = extract_features(tmp_path / "ckpt", nights, root / "img", tmp_path / "f.npy", progress=False)
    assert feats.shape == (120, 1, 1024)
    answers = predict_stages(tmp_path / "ckpt", nights, root / "img", tmp_path / "answers.jsonl", progress=False)
    assert len(answers) == 120
    other = _as_nights(records, tmp_path / "other" / "nights.json", RenderConfig().to_dict())
    with pytest.raises(FormatError, match=r"other/nights.json: images drawn with other render settings than .*ckpt "
                                          r"was trained on \(px_per_s: 4.0 vs 12.0\)"):
        extract_features(tmp_path / "ckpt", other, root / "img", tmp_path / "g.npy", progress=False)
    assert not (tmp_path / "g.npy").exists()
    # --resume continues the encoder too; a checkpoint of the earlier context head is refused in one line.
    history = json.loads((tmp_path / "ckpt" / "config.json").read_text())["history"]
    assert [h["phase"] for h in history] == ["image", "image", "sequence", "sequence"][: len(history)]
    assert metrics["epoch"] > 2  # the checkpoint is one of the encoder's epochs
    train_vision_module("resnet18", nights, root / "img", tmp_path / "ckpt", epochs=2, batch_size=16, lr=2e-3,
                        image_size=SIZE, val_fraction=0.25, context=1, sequence_epochs=3, progress=False, resume=True)
    state = torch.load(tmp_path / "ckpt" / "resume.pt", weights_only=True)
    assert state["epoch"] == 4 and len(state["history"]) == 5 and state["phase"] == "sequence" and "encoder" in state
    with pytest.raises(FormatError, match=r"resume.pt: --resume with sequence='transformer' but the run had 'gru'"):
        train_vision_module("resnet18", nights, root / "img", tmp_path / "ckpt", epochs=2, image_size=SIZE,
                            context=1, sequence="transformer", progress=False, resume=True)
    with pytest.raises(FormatError, match=r"--context 1 trains a sequence encoder: --sequence-epochs must be 1"):
        train_vision_module("resnet18", nights, root / "img", tmp_path / "x", context=1, sequence_epochs=0)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    old = dict(config, context={"k": 2, "hidden": 128})
    write_json(tmp_path / "ckpt" / "config.json", old)
    with pytest.raises(FormatError, match=r"config.json: a context head of an earlier version"):
        load_vision_module(tmp_path / "ckpt")
