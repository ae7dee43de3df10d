"""Training: the documented command (in-process; under DeepSpeed ZeRO-3 in test_ranks.py), feature injection by
record, bad input.

All on the tiny checkpoint (``tiny_llava``) with tiny data made here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from eeg_core import formats
from eeg_core.atomic import write_json
from eeg_core.errors import FormatError
from eeg_core.layout import FEATURES_TRAIN_NAME, RENDER_FILE
from eeg_core.stages import STAGES

from builders import QUESTION, documented_argv, make_data
from refusal import check_refusal

REPO = Path(__file__).resolve().parents[1]


def quick_argv(tiny: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A small plain-PyTorch run (no DeepSpeed) of the documented flags."""
    argv = documented_argv(tiny, data, out)
    i = argv.index("--deepspeed")
    del argv[i : i + 2]
    argv[argv.index("--report_to") + 1] = "none"
    argv[argv.index("--lora_r") + 1] = "8"
    argv[argv.index("--dataloader_num_workers") + 1] = "0"
    return argv + ["--max_steps", "1", "--save_strategy", "no", *extra]


def stage_of(text: str) -> str | None:
    m = re.search(r"Sleep stage:\s*(W|N1|N2|N3|REM)\b", text)
    return m.group(1) if m else None


def generate_stages(model, tokenizer, processor, image: Path, feats: np.ndarray) -> list[str | None]:
    from llava.conversation import get_conv_template
    from llava.mm_utils import load_image, process_images, tokenizer_image_token

    conv = get_conv_template("v1")
    conv.append_message(conv.roles[0], f"<image>\n<image>\n{QUESTION}")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    pixels = process_images([load_image(image)], processor, model.config)
    n = len(feats)
    model.eval()
    with torch.no_grad():
        out = model.generate(ids.repeat(n, 1), images=pixels.repeat(n, 1, 1, 1),
                             high_level_features=torch.from_numpy(np.asarray(feats, np.float32)),
                             max_new_tokens=8, do_sample=False)
    return [stage_of(t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


# ---------------------------------------------------------------------------------------------
# (1) The documented command under the deepspeed launcher, ZeRO-3 on CPU: tests/test_ranks.py (2 ranks and 1)
# (2) Features reach the model: a task only the features can answer
# ---------------------------------------------------------------------------------------------
def test_learns_a_task_carried_only_by_the_features(tiny_llava, tmp_path):
    from llava.train.train import train

    torch.manual_seed(0)
    n_train, n_test = 160, 40
    classes = [i % 5 for i in range(n_train + n_test)]
    data = make_data(tmp_path / "data", n=n_train + n_test, classes=classes, identical_images=True)
    records = formats.read_records(data / "eeg_ft.json")
    feats = np.load(data / FEATURES_TRAIN_NAME)
    write_json(data / "eeg_ft.json", records[:n_train])  # rows n_train.. are held out
    formats.save_features(data / FEATURES_TRAIN_NAME, feats[:n_train])  # one row per training record
    out = tmp_path / "run"
    # DESIGN.md's fast recipe on a random base: full fine-tune with a separate feature projector.
    argv = quick_argv(tiny_llava, data, out, "--lora_enable", "False", "--hl_fusion", "add",
                      "--hl_projector", "separate", "--learning_rate", "3e-3", "--mm_projector_lr", "3e-3",
                      "--max_steps", "60", "--warmup_ratio", "0", "--gradient_checkpointing", "False")
    trainer = train(argv)
    model = trainer.model
    tokenizer = trainer.processing_class
    processor = model.get_model().get_vision_tower().image_processor
    image = data / "images" / "same.png"
    labels = [STAGES[c] for c in classes[n_train:]]
    pred = generate_stages(model, tokenizer, processor, image, feats[n_train:])
    acc = np.mean([p == t for p, t in zip(pred, labels)])
    pred0 = generate_stages(model, tokenizer, processor, image, np.zeros_like(feats[n_train:]))
    acc0 = np.mean([p == t for p, t in zip(pred0, labels)])
    assert acc >= 0.8, (acc, pred)
    assert acc0 <= 0.4, (acc0, pred0)  # chance is 0.2: without the features the answer is not there

    # The saved full checkpoint (with its separate feature projector) answers the same after reloading.
    from llava.model.builder import load_pretrained_model

    tokenizer2, model2, processor2, _ = load_pretrained_model(str(out), None, "tiny", device="cpu")
    assert model2.config.mm_hl_projector == "separate" and model2.config.mm_hl_fusion == "add"
    assert generate_stages(model2, tokenizer2, processor2, image, feats[n_train:n_train + 10]) == pred[:10]


# ---------------------------------------------------------------------------------------------
# (3) Any batch size, both fusion modes; features matched by record
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch,fusion,projector,balance", [(1, "add", "shared", 0), (3, "token", "separate", 1),
                                                            (16, "add", "separate", 0)])
def test_batch_sizes_and_fusion_modes_train(tiny_llava, tmp_path, recwarn, batch, fusion, projector, balance):
    from llava.train.train import train
    from llava.train.trainer import ClassBalancedSampler
    from sleep_eeg.images.render import RenderConfig

    data = make_data(tmp_path / "data", n=5)
    drawn = RenderConfig(px_per_s=6).to_dict()
    if balance:  # records that say how their images were drawn
        write_json(data / RENDER_FILE, drawn)
        records = [{**r, "render": drawn["id"]} for r in formats.read_records(data / "eeg_ft.json")]
        write_json(data / "eeg_ft.json", records)
        formats.save_features(data / FEATURES_TRAIN_NAME, np.load(data / FEATURES_TRAIN_NAME))
    out = tmp_path / "run"
    trainer = train(quick_argv(tiny_llava, data, out, "--per_device_train_batch_size", str(batch),
                               "--hl_fusion", fusion, "--hl_projector", projector, "--class_balance", str(balance)))
    deprecated = [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)
                  and "checkpointing" in str(w.message)]
    assert not deprecated  # LoRA + --gradient_checkpointing through transformers 5's new names only
    assert trainer.state.global_step == 1 and np.isfinite(trainer.state.log_history[-1]["train_loss"])
    config = json.loads((out / "config.json").read_text())
    assert (config["mm_hl_fusion"], config["mm_hl_projector"]) == (fusion, projector)
    assert config["eeg_render"] == (drawn if balance else None)
    assert isinstance(trainer._get_train_sampler(), ClassBalancedSampler) == bool(balance)
    non_lora = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".mm_hl_projector." in k for k in non_lora) == (projector == "separate")


def test_class_balance_draws_every_stage_equally_often():
    from llava.train.trainer import ClassBalancedSampler

    labels = ["N2"] * 600 + ["W"] * 300 + ["N1"] * 60 + ["REM"] * 30 + ["N3"] * 10
    sampler, counts = ClassBalancedSampler(labels, 1.0, seed=1), Counter()
    for epoch in range(5):  # a fresh draw each epoch
        sampler.set_epoch(epoch)
        counts.update(labels[i] for i in sampler)
    assert min(counts.values()) > 0.8 * 1000 and max(counts.values()) < 1.2 * 1000  # 5 x 1000 draws, 5 stages
    half = Counter(labels[i] for i in ClassBalancedSampler(labels, 0.5, seed=1))
    assert half["N2"] > half["N1"] > half["N3"] and half["N1"] > 60  # half-way: still ordered, N1 raised
    grouped = list(ClassBalancedSampler(labels, 1.0, seed=1, lengths=[5] * 1000, batch_size=16))
    assert len(grouped) == 1000 and set(grouped) <= set(range(1000))


def test_features_follow_the_record_not_the_batch_position(tiny_llava, tmp_path):
    """Item i carries features row i (or its feature_index), whatever order the sampler asks in."""
    from transformers import CLIPImageProcessor

    from llava.tokenizer import load_tokenizer
    from llava.train.dataset import DataCollatorForSupervisedDataset, SupervisedDataset

    data = make_data(tmp_path / "data", n=4)
    records = formats.read_records(data / "eeg_ft.json")
    records[2]["feature_index"] = 0
    feats = formats.load_features(data / FEATURES_TRAIN_NAME, records, dim=1024)
    tokenizer = load_tokenizer(tiny_llava)
    processor = CLIPImageProcessor.from_pretrained(tiny_llava / "clip")
    ds = SupervisedDataset(records, tokenizer, "v1", str(data / "images"), processor, "pad", feats)
    batch = DataCollatorForSupervisedDataset(tokenizer)([ds[i] for i in (3, 1, 2)])
    got = batch["high_level_features"]
    assert [torch.equal(g, torch.from_numpy(np.array(feats[r]))) for g, r in zip(got, (3, 1, 0))] == [True] * 3
    assert batch["images"].shape[0] == 3  # one real image per record: the placeholder is never loaded
    assert (batch["attention_mask"].sum(1) == torch.tensor([len(ds[i]["input_ids"]) for i in (3, 1, 2)])).all()


def test_modality_grouping_with_one_modality_and_mixed():
    from llava.train.trainer import modality_grouped_indices

    g = torch.Generator().manual_seed(0)
    same = modality_grouped_indices([5, 7, 3, 9, 4, 6, 2], batch_size=3, generator=g)
    assert sorted(same) == list(range(7))
    mixed_lengths = [5, -7, 3, -9, 4, -6, 2, -8]
    mixed = modality_grouped_indices(mixed_lengths, batch_size=2, generator=g)
    assert sorted(mixed) == list(range(8))
    for k in range(0, 8, 2):  # every batch holds one modality
        assert len({mixed_lengths[i] > 0 for i in mixed[k : k + 2]}) == 1


# ---------------------------------------------------------------------------------------------
# (4) Bad input: one line, before the first step, nothing in the output folder
# ---------------------------------------------------------------------------------------------
def _break_missing_image(data):
    (data / "images" / "e1.png").unlink()
    return "images/e1.png not found"


def _break_unreadable_image(data):
    (data / "images" / "e1.png").write_bytes(b"not a png")
    return "e1.png is not a readable image"


def _break_few_rows(data):
    feats = np.load(data / FEATURES_TRAIN_NAME)
    np.save(data / FEATURES_TRAIN_NAME, feats[:2])
    return "2 feature rows but record 'r2'"


def _break_shape(data):
    np.save(data / FEATURES_TRAIN_NAME, np.zeros((4, 1024), np.float32))
    return "features must be shaped [N, 1, D]"


def _break_dim(data):
    np.save(data / FEATURES_TRAIN_NAME, np.zeros((4, 1, 512), np.float32))
    return "D=512 does not match the projector's input mm_hidden_size=1024"


def _break_nan(data):
    feats = np.load(data / FEATURES_TRAIN_NAME)
    feats[3, 0, 7] = np.inf
    np.save(data / FEATURES_TRAIN_NAME, feats)
    return "row 3 holds NaN or inf"


def _break_pickled(data):
    arr = np.empty((4, 1, 1024), dtype=object)
    np.save(data / FEATURES_TRAIN_NAME, arr, allow_pickle=True)
    return "without pickle"


def _break_image_count(data):
    records = formats.read_records(data / "eeg_ft.json")
    records[2]["conversations"][0]["value"] = records[2]["conversations"][0]["value"].replace("<image>\n", "", 1)
    write_json(data / "eeg_ft.json", records)
    return "record 'r2' (#2) has 1 <image> tokens but 2 images"


def _break_data_file(data):
    (data / "eeg_ft.json").unlink()
    return "records file not found"


@pytest.mark.parametrize("breaker", [_break_missing_image, _break_unreadable_image, _break_few_rows, _break_shape,
                                     _break_dim, _break_nan, _break_pickled, _break_image_count, _break_data_file])
def test_bad_input_fails_before_training_and_writes_nothing(tiny_llava, tmp_path, breaker):
    from llava.train.train import train

    data = make_data(tmp_path / "data", n=4)
    expected = breaker(data)
    out = tmp_path / "run"
    with pytest.raises(FormatError) as err:
        train(quick_argv(tiny_llava, data, out))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert not out.exists()


def test_unknown_version_and_cli_exit_status(tiny_llava, tmp_path):
    data = make_data(tmp_path / "data", n=2)
    out = tmp_path / "run"
    argv = quick_argv(tiny_llava, data, out)
    argv[argv.index("--version") + 1] = "v9"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "llava/train/train_mem.py", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    check_refusal(proc.returncode, proc.stderr, ["unknown conversation version 'v9'"])
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Flags of the documented command on transformers 5; wandb offline; plain-PyTorch resume
# ---------------------------------------------------------------------------------------------
def test_documented_flags_map_onto_transformers_5(tmp_path):
    from llava.train.train import parse_args

    model_args, data_args, training_args = parse_args(documented_argv(tmp_path, tmp_path, tmp_path / "run"))
    assert training_args.eval_strategy == "no" and training_args.warmup_steps == 0.03
    assert training_args.get_warmup_steps(1000) == 30
    assert training_args.bf16 and not training_args.tf32  # no GPU here: bfloat16 kept, tf32 dropped
    assert training_args.lora_enable and training_args.lora_r == 128 and training_args.mm_projector_lr == 2e-5
    assert training_args.activation_checkpointing and training_args.group_by_modality_length
    assert data_args.lazy_preprocess and data_args.image_aspect_ratio == "pad"
    assert (model_args.hl_fusion, model_args.hl_projector, model_args.version) == ("add", "shared", "v1")


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_half_precision_without_deepspeed_trains_float32_weights_under_autocast(tiny_llava, tmp_path, flag):
    """``--bf16`` / ``--fp16`` without DeepSpeed, as a one-GPU user runs it: the frozen tower and LM in that half
    dtype, the trainable weights (LoRA, projector) in float32, so that AdamW's small steps are not rounded away
    (in bfloat16 most of the projector's entries stayed unchanged after two steps at lr 2e-5); float16 gets a
    gradient scaler (on the CPU torch's ``GradScaler("cpu")``)."""
    from llava.train.train import train
    from safetensors.torch import load_file

    data = make_data(tmp_path / "data", n=4)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[flag]
    argv = quick_argv(tiny_llava, data, tmp_path / "run", "--bf16", str(flag == "bf16"), "--fp16", str(flag == "fp16"),
                      "--max_steps", "2", "--warmup_ratio", "0", "--per_device_train_batch_size", "2")
    trainer = train(argv)
    params = dict(trainer.model.named_parameters())
    assert {p.dtype for p in params.values() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in params.values() if not p.requires_grad} == {half}
    assert trainer.accelerator.native_amp  # the forward runs under half-precision autocast
    if flag == "fp16":
        assert isinstance(trainer.accelerator.scaler, torch.amp.GradScaler)
        assert trainer.accelerator.scaler.get_scale() > 0
    base = load_file(tiny_llava / "model.safetensors")
    for key in ("model.mm_projector.0.weight", "model.mm_projector.2.weight"):
        trained = params["base_model.model." + key].detach()
        changed = (trained != base[key].to(trained.dtype)).float().mean().item()
        assert changed > 0.95, f"{key}: only {changed:.0%} of the entries changed in 2 steps at lr 2e-5"


def test_wandb_without_api_key_runs_offline(tmp_path, monkeypatch, caplog):
    from llava.train.train import setup_reporting

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    args = type("Args", (), {"report_to": ["wandb"]})()
    with caplog.at_level("WARNING", logger="llava.train"):
        setup_reporting(args)
    assert os.environ["WANDB_MODE"] == "offline" and "offline" in caplog.text


def test_no_wandb_line_when_not_reporting_to_wandb(tmp_path):
    """WANDB_MODE=offline in the environment, --report_to none: transformers' "Running in WANDB offline mode"
    (printed when the Trainer is imported) must not appear."""
    code = ("from llava.train.train import parse_args, setup_reporting; "
            f"setup_reporting(parse_args({documented_argv(tmp_path, tmp_path, tmp_path / 'run')!r} "
            "+ ['--report_to', 'none'])[2]); import llava.train.trainer, os; "
            "assert os.environ['WANDB_MODE'] == 'offline'")  # the user's setting is left as it was
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WANDB" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero3_offload.json"])
def test_deepspeed_configs_leave_optimizer_and_schedule_to_the_trainer(name):
    """An ``optimizer`` section makes DeepSpeed build its own optimizer over all trainable parameters
    (--mm_projector_lr's group is lost); a ``scheduler`` section overrides --lr_scheduler_type."""
    config = json.loads((REPO / "scripts" / name).read_text())
    assert "optimizer" not in config and "scheduler" not in config
    if "offload_optimizer" in config["zero_optimization"]:  # DeepSpeed refuses a client optimizer unless told
        assert config["zero_force_ds_cpu_optimizer"] is False


def test_plain_pytorch_checkpoint_resumes(tiny_llava, tmp_path):
    from llava.train.train import train

    data = make_data(tmp_path / "data", n=4)
    out = tmp_path / "run"
    argv = quick_argv(tiny_llava, data, out, "--per_device_train_batch_size", "2", "--save_strategy", "steps",
                      "--save_steps", "1", "--mm_projector_lr", "1e-2", "--warmup_ratio", "0")
    train(argv)
    ckpt = out / "checkpoint-1"
    trainer = train(argv + ["--max_steps", "2", "--resume_from_checkpoint", str(ckpt)])
    assert trainer.state.global_step == 2 and (out / "checkpoint-2" / "non_lora_trainables.bin").is_file()

    from safetensors.torch import load_file

    # Loading a checkpoint restores the adapter AND the projector (non_lora_trainables.bin).
    other = train(quick_argv(tiny_llava, data, tmp_path / "other", "--learning_rate", "0", "--mm_projector_lr", "0"))
    ckpt = out / "checkpoint-2"  # checkpoint-1 was rotated away (--save_total_limit 1)
    other._load_from_checkpoint(str(ckpt))
    params = dict(other.model.named_parameters())
    saved = torch.load(ckpt / "non_lora_trainables.bin", weights_only=True)
    key = "base_model.model.model.mm_projector.0.weight"
    assert torch.equal(params[key].detach(), saved[key])
    adapter = load_file(ckpt / "adapter_model.safetensors")
    lora_key = next(k for k in adapter if "lora_B" in k)
    assert torch.equal(params[lora_key.replace(".weight", ".default.weight")].detach(), adapter[lora_key])
    from safetensors.torch import load_file

    assert not torch.equal(saved[key], load_file(tiny_llava / "model.safetensors")["model.mm_projector.0.weight"])


# ---------------------------------------------------------------------------------------------
# LLaVA's defaults: the minimal command, --mm_use_im_patch_token True; parsing leaves the process alone
# ---------------------------------------------------------------------------------------------
def test_minimal_command_with_llava_default_im_patch_token_trains_and_reloads(tiny_llava, tmp_path):
    """Only the paths (and a step limit): LLaVA's defaults, among them ``--mm_use_im_patch_token True``, which
    adds ``<im_patch>`` to the tokenizer and the embeddings and never to a prompt."""
    from llava.constants import DEFAULT_IMAGE_PATCH_TOKEN
    from llava.model.builder import load_pretrained_model
    from llava.train.train import parse_args, train

    data = make_data(tmp_path / "data", n=2)
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(tiny_llava), "--data_path", str(data / "eeg_ft.json"),
            "--image_folder", str(data / "images"), "--vision_tower", str(tiny_llava / "clip"),
            "--output_dir", str(out), "--mm_use_im_patch_token", "True", "--max_steps", "1",
            "--per_device_train_batch_size", "2", "--report_to", "none"]
    assert parse_args(argv)[0].mm_use_im_patch_token
    trainer = train(argv)
    assert trainer.state.global_step == 1 and np.isfinite(trainer.state.log_history[-1]["train_loss"])
    tokenizer = trainer.processing_class
    patch_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_PATCH_TOKEN)
    assert patch_id != tokenizer.unk_token_id
    assert trainer.model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    batch = trainer.get_train_dataloader().dataset[0]["input_ids"]
    assert patch_id not in batch.tolist()  # never in a prompt
    config = json.loads((out / "config.json").read_text())
    assert config["mm_use_im_patch_token"] is True

    tokenizer2, model2, _, _ = load_pretrained_model(str(out), None, "run", device="cpu")
    assert tokenizer2.convert_tokens_to_ids(DEFAULT_IMAGE_PATCH_TOKEN) == patch_id
    assert model2.get_input_embeddings().weight.shape[0] >= len(tokenizer2)


def test_mm_use_im_start_end_is_refused_in_one_line(tiny_llava, tmp_path):
    from llava.train.train import train

    data = make_data(tmp_path / "data", n=2)
    with pytest.raises(FormatError, match="--mm_use_im_start_end True is not supported"):
        train(quick_argv(tiny_llava, data, tmp_path / "run", "--mm_use_im_start_end", "True"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("report_to", ["none", "wandb"])
def test_parsing_the_arguments_leaves_os_environ_alone(tiny_llava, tmp_path, monkeypatch, report_to):
    from llava.train.train import parse_args

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    data = make_data(tmp_path / "data", n=1)
    argv = quick_argv(tiny_llava, data, tmp_path / "run")
    argv[argv.index("--report_to") + 1] = report_to
    before = dict(os.environ)
    parse_args(argv)
    assert dict(os.environ) == before
