"""The documented training command on 2 ranks (DeepSpeed ZeRO-3 on the CPU, ``--bf16 True`` honoured as on a GPU),
against one process; the suite's one test of the documented command under the ``deepspeed`` launcher besides the
demo's.

One 2-rank run (``deepspeed --num_gpus 2 llava/train/train_mem.py`` + the README's flags, tiny base,
``--per_device_train_batch_size 2``, 3 steps, ``checkpoint-2`` kept) is shared by every test here. It is set
against an in-process run of the same command without DeepSpeed in ONE process with the same global batch
(``--per_device_train_batch_size 4``) and the same seed.

What can honestly be asserted, and why:
- The two runs see the same numbers, so their weights agree up to float reduction order: the init is
  seeded (LoRA A drawn after ``set_seed``; the projector comes from the base); the sampler cuts ONE seeded
  permutation into global batches of 4 and accelerate hands each rank its half, so step k trains on the same
  four records in both runs; the loss is normalised by the tokens of the whole global batch
  (``average_tokens_across_devices``), so the averaged gradients are the same; ``--lora_dropout 0`` because
  dropout masks are drawn per rank and cannot match a single process's (the only flag changed for that).
- Both runs train in bfloat16, each the way it does on a GPU: DeepSpeed holds bfloat16 weights with a float32
  master copy in its optimizer and reduces bfloat16 gradients; the single process keeps the trainable weights in
  float32 under bfloat16 autocast. So the losses agree to 1e-3 relative (measured 2e-4), but the updates
  (trained minus initial weights) only to about 8e-2 relative (measured 7.5e-2 on the projector, 6e-2 on LoRA B):
  Adam's first steps are nearly lr x sign(gradient), and bfloat16 rounding flips the sign of the small gradients.
  The bound asserted is 0.15; a projector saved from one rank's shard (half of it zero), or a step that saw other
  data, misses it (relative difference about 1). ``--mm_projector_lr 1e-3`` (not 2e-5) makes the projector's
  update large enough to compare.
- Both start from a pretrained projector (``--pretrain_mm_mlp_adapter``, half the base's): under ZeRO-3 it is
  loaded into partitioned weights (gathered first), and the updates are measured from it.
- The projector really was partitioned: each rank's ZeRO-3 optimizer partition holds about half the
  trainable parameters, yet ``non_lora_trainables.bin`` holds whole tensors equal to the one-process run.
- ``checkpoint-2`` resumes on 2 ranks (DeepSpeed loads its own partitions: same result as the uninterrupted
  run, bit for bit as measured) and on 1 rank (the 2-rank partitions are converted to DeepSpeed's universal
  checkpoint; same result up to bfloat16 rounding, measured 1.2e-3 relative, bound 1e-2).
- ``llava/eval/model_vqa.py`` loads the 2-rank result with the tiny base and answers every question, in both
  answer modes.

Other changes to the documented command, for time only: ``--report_to none`` (wandb offline is covered in
test_train.py), ``--dataloader_num_workers 0``, ``--warmup_ratio 0`` (the 3 steps then all train).
On the CPU, DeepSpeed's collectives stay on gloo (``setup_environment``): no launch compiles its shared-memory op.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eeg_core import formats
from eeg_core.atomic import write_jsonl
from eeg_core.stages import STAGES

from builders import documented_argv, make_data

REPO = Path(__file__).resolve().parents[1]

PROJECTOR = [f"base_model.model.model.mm_projector.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
STEPS = 3


def flags(tiny: Path, data: Path, out: Path, per_device: int, *extra: str) -> list[str]:
    argv = documented_argv(tiny, data, out)
    argv[argv.index("--report_to") + 1] = "none"
    argv[argv.index("--dataloader_num_workers") + 1] = "0"
    argv[argv.index("--mm_projector_lr") + 1] = "1e-3"
    argv[argv.index("--warmup_ratio") + 1] = "0"
    return argv + ["--lora_dropout", "0", "--per_device_train_batch_size", str(per_device), "--max_steps",
                   str(STEPS), "--save_steps", "2", "--save_total_limit", "2", *extra]


def deepspeed_run(ranks: int, argv: list[str], tmp: Path) -> str:
    """``deepspeed --num_gpus <ranks> llava/train/train_mem.py <argv>`` on the CPU; returns its output."""
    with socket.socket() as s:  # a free port: another deepspeed job may hold the default 29500
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--master_port", str(port), "--num_gpus", str(ranks),
           "llava/train/train_mem.py", *argv]
    env = dict(os.environ, DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               WANDB_MODE="disabled", WANDB_DIR=str(tmp))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def trainables(folder: Path) -> dict[str, torch.Tensor]:
    """The saved projector (``non_lora_trainables.bin``) and LoRA weights of a checkpoint folder."""
    from safetensors.torch import load_file

    out = dict(torch.load(folder / "non_lora_trainables.bin", weights_only=True))
    out.update(load_file(folder / "adapter_model.safetensors"))
    return out


def assert_same_training(got: dict, want: dict, base: dict, rel: float) -> None:
    """Same keys and shapes; every tensor's change from its initial value agrees to ``rel`` (relative norm)."""
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        start = base.get(key.replace("base_model.model.", ""), None)
        if start is None:  # LoRA: compare the weights themselves (A starts random, B at zero)
            start = torch.zeros_like(want[key])
        change_got, change_want = got[key].float() - start.float(), want[key].float() - start.float()
        assert change_want.norm() > 0 and change_got.norm() > 0, f"{key} did not train"
        err = ((change_got - change_want).norm() / change_want.norm()).item()
        assert err < rel, f"{key}: relative difference {err:.2e} of the update (bound {rel:.0e})"


@pytest.fixture(scope="module")
def runs(tiny_llava, tmp_path_factory):
    """The shared runs: 2 ranks under DeepSpeed (3 steps, checkpoint-2 kept) and one process in-process."""
    from llava.train.train import train

    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("ranks")
    data = make_data(root / "data", n=8)  # 2 global batches of 4 per epoch: step 3 opens epoch 2
    # A pretrained projector (LLaVA's mm_projector.bin), unlike the base's: under ZeRO-3 it is loaded into
    # partitioned weights, so it must be gathered first.
    adapter = root / "mm_projector.bin"
    start = {k: v * 0.5 for k, v in load_file(tiny_llava / "model.safetensors").items() if "mm_projector." in k}
    torch.save(start, adapter)
    two = root / "two_ranks"
    log = deepspeed_run(2, flags(tiny_llava, data, two, 2, "--pretrain_mm_mlp_adapter", str(adapter)), root)
    one = root / "one_process"
    argv = flags(tiny_llava, data, one, 4, "--pretrain_mm_mlp_adapter", str(adapter))
    i = argv.index("--deepspeed")
    del argv[i : i + 2]
    train(argv)
    return {"root": root, "data": data, "two": two, "one": one, "log": log, "tiny": tiny_llava, "start": start,
            "adapter": adapter}


def test_two_ranks_save_whole_projector_equal_to_one_process(runs):
    from safetensors.torch import load_file

    two, one = runs["two"], runs["one"]
    assert "dist_world_size=2" in runs["log"] and "attention: sdpa" in runs["log"]
    for folder in (two, two / "checkpoint-2", two / "checkpoint-3"):
        for name in ("config.json", "adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin",
                     "tokenizer.model"):
            assert (folder / name).is_file(), f"{folder / name} missing"
    assert json.loads((two / "trainer_state.json").read_text())["global_step"] == STEPS
    # The documented command's layout, as LLaVA writes it: the settings in config.json, LoRA r128 on the
    # language model's layers only (never CLIP's), the tokenizer beside the weights.
    assert "--bf16 True kept, training in bfloat16 on the CPU" in runs["log"]
    for folder in (two, two / "checkpoint-2"):
        assert (folder / "tokenizer_config.json").is_file()
        config = json.loads((folder / "config.json").read_text())
        assert (config["mm_hl_fusion"], config["mm_hl_projector"], config["conv_version"]) == ("add", "shared", "v1")
        assert config["tokenizer_model_max_length"] == 4096 and config["tokenizer_padding_side"] == "right"
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["r"] == 128 and adapter["target_modules"]
        assert all(t.startswith("model.layers.") for t in adapter["target_modules"])

    # Really partitioned: each rank's ZeRO-3 optimizer partition holds about half of the trainable weights.
    saved = trainables(two)
    total = sum(t.numel() for t in saved.values())
    parts = sorted((two / "checkpoint-2" / "global_step2").glob("bf16_zero_pp_rank_*_optim_states.pt"))
    assert len(parts) == 2
    held = [sum(t.numel() for t in torch.load(p, map_location="cpu", weights_only=False)
                ["optimizer_state_dict"]["fp32_flat_groups"]) for p in parts]
    assert all(n < 0.6 * total for n in held) and sum(held) >= total, (held, total)

    # ... and the saved projector is whole, with the one-process run's values, after 2 and after 3 steps.
    assert sorted(k for k in saved if "lora_" not in k) == PROJECTOR
    assert saved[PROJECTOR[1]].shape == (128, 1024) and saved[PROJECTOR[3]].shape == (128, 128)
    base = runs["start"]  # the pretrained projector both runs started from (LoRA A is seeded, B starts at zero)
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}  # DeepSpeed trained (and saved) bfloat16 weights
    assert {t.dtype for t in trainables(one).values()} == {torch.float32}  # one process: float32 under autocast
    assert_same_training(trainables(two / "checkpoint-2"), trainables(one / "checkpoint-2"), base, rel=0.15)
    assert_same_training(saved, trainables(one), base, rel=0.15)
    losses = [[e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in e]
              for d in (two, one)]
    assert len(losses[0]) == STEPS and np.allclose(losses[0], losses[1], rtol=1e-3), losses
    assert losses[0][-1] < losses[0][0] - 0.1, losses  # it learns


@pytest.mark.parametrize("ranks", [2, 1])
def test_checkpoint_resumes_on_two_ranks_and_on_one(runs, ranks):
    """checkpoint-2 (written by 2 ranks) trained on to step 3 gives the uninterrupted run's weights."""
    out = runs["root"] / f"resumed_on_{ranks}"
    shutil.copytree(runs["two"] / "checkpoint-2", out / "checkpoint-2")
    argv = flags(runs["tiny"], runs["data"], out, 4 // ranks, "--resume_from_checkpoint", str(out / "checkpoint-2"),
                 "--pretrain_mm_mlp_adapter", str(runs["adapter"]))
    log = deepspeed_run(ranks, argv, runs["root"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == STEPS
    want, got = trainables(runs["two"]), trainables(out)
    assert sorted(got) == sorted(want)
    universal = "loading it as a universal checkpoint" in log
    assert universal == (ranks == 1)
    for key in want:  # same ranks: DeepSpeed's own partitions, bit for bit; 1 rank: the universal conversion
        if universal:
            err = ((got[key].float() - want[key].float()).norm() / want[key].float().norm()).item()
            assert err < 1e-2, f"{key}: relative difference {err:.2e} after resuming on 1 rank"
        else:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_model_vqa_answers_with_the_two_rank_result(runs):
    from llava.eval import model_vqa

    root = runs["root"] / "vqa"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    questions = []
    for i, stage in enumerate(STAGES):
        name = f"e{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "images" / name)
        questions.append(formats.make_question(f"q{i}", [name, name], "What is the sleep stage of this EEG epoch?",
                                               stage))
    write_jsonl(root / "eeg_eval.jsonl", questions)
    formats.save_features(root / "eval_high_level_features.npy",
                          rng.normal(size=(len(questions), 1, 1024)).astype(np.float32))
    for mode in ("generate", "choices"):
        answers = root / "answers" / f"eeg_answers_{mode}.jsonl"
        argv = ["--model-path", str(runs["two"]), "--model-base", str(runs["tiny"]), "--question-file",
                str(root / "eeg_eval.jsonl"), "--image-folder", str(root / "images"), "--answers-file", str(answers),
                "--max-new-tokens", "6", "--answer-mode", mode]
        assert model_vqa.main(argv) == 0
        rows = formats.read_jsonl(answers)
        assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions]
        assert all(r["text"].strip() for r in rows)
        if mode == "choices":  # five probabilities per answer, and the answer is the most likely stage
            for r in rows:
                probs = r["metadata"]["probabilities"]
                assert sorted(probs) == sorted(STAGES) and abs(sum(probs.values()) - 1) < 1e-5  # 6 decimals each
                assert r["text"].endswith(max(probs, key=probs.get))


def test_saved_world_size_counts_the_zero_partitions(tmp_path):
    from llava.train.zero_resume import checkpoint_tag, saved_world_size

    ckpt = tmp_path / "checkpoint-4"
    assert checkpoint_tag(ckpt) is None  # not a DeepSpeed checkpoint: nothing to convert
    (ckpt / "global_step4").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step4\n")
    for r in range(3):
        (ckpt / "global_step4" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").touch()
        (ckpt / "global_step4" / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").touch()
    (ckpt / "global_step4" / "bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt").touch()  # ZeRO-1/2 bf16 naming
    assert checkpoint_tag(ckpt) == "global_step4" and saved_world_size(ckpt, "global_step4") == 4


def test_real_deepspeed_checkpoints_pass_the_pickle_scan(runs, tmp_path):
    """The scan that refuses hostile pickles before a resume (``check_pickles``: every ``.pt`` under the folders
    DeepSpeed may load, at any depth) refuses nothing DeepSpeed writes: the 2-rank checkpoint, and its universal
    copy (``global_step2_universal``, its ``zero/`` tree and ``optimizer_state.pt``)."""
    from llava.train.checkpoints import check_pickles, pickled_files
    from llava.train.zero_resume import convert_to_universal, saved_param_groups

    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(runs["two"] / "checkpoint-2", ckpt)
    check_pickles(ckpt)
    convert_to_universal(ckpt, "global_step2")
    files = {str(p.relative_to(ckpt)) for p in pickled_files(ckpt)}
    assert "global_step2_universal/zero/optimizer_state.pt" in files
    assert any(f.startswith("global_step2_universal/zero/") and f.endswith("/fp32.pt") for f in files)
    check_pickles(ckpt)
    assert saved_param_groups(ckpt / "global_step2_universal" / "zero" / "optimizer_state.pt")
