"""The pieces of the GPU path that a CPU can check: which attention kernel a run gets, where the evaluation model
is loaded, the splice across devices, and the weights' fingerprint that evaluation computes on every run.

The dtypes themselves run end to end elsewhere: the documented command in bfloat16 under ZeRO-3 on 2 ranks
(test_ranks.py), bfloat16 and float16 without DeepSpeed (test_train.py), answers in both modes (test_ranks.py).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image


# ---------------------------------------------------------------------------------------------
# Attention: flash-attention only where transformers can use it, and only in half precision
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("usable, bf16, fp16, want", [
    (True, True, False, "flash_attention_2"),
    (True, False, True, "flash_attention_2"),
    (True, False, False, "sdpa"),   # a float32 run: flash-attention has no float32 kernel
    (False, True, False, "sdpa"),   # flash_attn present on disk but not importable / no GPU
])
def test_attention_kernel_follows_usability_and_dtype(monkeypatch, usable, bf16, fp16, want):
    import importlib.util

    import transformers.utils

    from llava.train.train import attention_implementation

    # What used to decide: a GPU and a findable flash_attn module. Both say yes here.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: usable)
    impl, why = attention_implementation(bf16, fp16)
    assert impl == want and why


# ---------------------------------------------------------------------------------------------
# Evaluation loads straight onto the GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device_map, device, want_map", [
    (None, "cuda", {"": "cuda"}),          # model_vqa's call: never built in host memory first
    (None, "cuda:1", {"": "cuda:1"}),
    ("auto", "cuda:1", {"": "cuda:1"}),    # LLaVA's rule: a named device takes everything
    ("auto", "cuda", "auto"),              # LLaVA's default: accelerate spreads the layers
    (None, "cpu", None),
])
def test_a_gpu_model_is_loaded_onto_the_device(monkeypatch, device_map, device, want_map):
    from llava.model.builder import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(device_map, device) == (want_map, device)


# ---------------------------------------------------------------------------------------------
# The splice with the projector on one device and the embeddings on another
# ---------------------------------------------------------------------------------------------
def test_splice_moves_image_and_feature_slots_to_the_embeddings_device(tiny_llava):
    """``device_map="auto"`` can put ``embed_tokens`` and ``mm_projector`` on different cards. Here the
    embeddings live on the meta device (standing for a second card), the projector on the CPU: every slot must
    follow the embeddings, for both fusion modes."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images
    from llava.model.builder import load_pretrained_model

    _, model, processor, _ = load_pretrained_model(str(tiny_llava), None, "tiny", device="cpu")
    inner = model.get_model()
    weight = inner.embed_tokens.weight
    inner.embed_tokens = torch.nn.Embedding(*weight.shape, device="meta")
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 7, IMAGE_TOKEN_INDEX, 9]])
    pixels = process_images([Image.new("RGB", (60, 40))], processor, model.config)
    for fusion in ("add", "token"):
        model.config.mm_hl_fusion = fusion
        embeds, positions, mask, _ = model.splice(ids, None, None, pixels, [torch.randn(1, 1024)])
        assert embeds.device.type == "meta" and embeds.dtype == weight.dtype
        assert embeds.shape[1] == 4 + inner.get_vision_tower().num_patches * (2 if fusion == "add" else 1) + (
            0 if fusion == "add" else 1)


# ---------------------------------------------------------------------------------------------
# The fingerprint: a large weights file is read once, and again whenever it is rewritten
# ---------------------------------------------------------------------------------------------
def test_large_weights_are_hashed_once_and_again_after_a_rewrite(tmp_path, monkeypatch):
    import eeg_core.atomic
    from llava.model import builder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []
    real = eeg_core.atomic.file_sha256
    monkeypatch.setattr(eeg_core.atomic, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(np.arange(4096, dtype=np.float32).tobytes())
    first = builder.weights_sha256(weights, min_bytes=1024)
    assert builder.weights_sha256(weights, min_bytes=1024) == first and len(calls) == 1  # remembered
    # Other weights of the same size, the modification time put back: hashed again, and they differ.
    st = weights.stat()
    weights.write_bytes(np.arange(4096, dtype=np.float32)[::-1].copy().tobytes())
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = builder.weights_sha256(weights, min_bytes=1024)
    assert len(calls) == 2 and second != first and second == real(weights)
    # A small file (a config, an adapter) is simply hashed each time.
    assert builder.weights_sha256(weights, min_bytes=1 << 30) == second and len(calls) == 3


def test_the_fingerprint_of_a_lora_checkpoint_reads_its_adapter_settings_not_their_order(tmp_path, monkeypatch):
    """peft writes ``target_modules`` (a set) in an order that changes between runs: two trainings to the same
    weights get the same fingerprint, and a changed setting another one."""
    from llava.model.builder import model_fingerprint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fingerprints = []
    for i, settings in enumerate([{"r": 8, "target_modules": ["q_proj", "v_proj", "k_proj"]},
                                  {"target_modules": ["k_proj", "q_proj", "v_proj"], "r": 8},
                                  {"r": 16, "target_modules": ["k_proj", "q_proj", "v_proj"]}]):
        folder = tmp_path / f"lora{i}"
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llava_llama"}')
        (folder / "adapter_model.safetensors").write_bytes(b"same weights")
        (folder / "adapter_config.json").write_text(json.dumps(settings))
        fingerprints.append(model_fingerprint(folder))
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]
