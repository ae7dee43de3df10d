"""The LLaVA model core: the multimodal splice with high-level features, loading checkpoints, generation."""
import json
import shutil

import pytest
import torch

from eeg_core.errors import FormatError
from llava.constants import IGNORE_INDEX
from llava.constants import IMAGE_TOKEN_INDEX as IMG

PATCHES = 16  # (56 / 14) ** 2, CLS dropped


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    from llava.model import load_pretrained_model

    return load_pretrained_model(str(tiny_llava), None, "tiny", device="cpu")


@pytest.fixture
def model(loaded):
    return loaded[1]


@pytest.fixture
def clip_calls(model):
    """Batch sizes of every CLIP forward during the test."""
    calls = []
    hook = model.get_vision_tower().vision_tower.register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[0]))
    yield calls
    hook.remove()


def mixed_batch():
    """A: two <image> + a feature; B: one <image>; C: text only. Right-padded with 0."""
    rows = [[1, 10, IMG, 11, IMG, 12], [1, 20, IMG, 21], [1, 30, 31, 32]]
    input_ids = torch.zeros(3, 6, dtype=torch.long)
    attention_mask = torch.zeros(3, 6, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    labels = input_ids.masked_fill((input_ids == IMG) | (attention_mask == 0), IGNORE_INDEX)
    torch.manual_seed(1)
    images = torch.randn(2, 3, 56, 56)  # A's Image1, B's image: the placeholder is not passed
    features = [torch.randn(1, 1024), None, None]
    return input_ids, attention_mask, labels, images, features


@pytest.mark.parametrize("fusion", ["add", "token"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_splice_mixed_batch(model, clip_calls, monkeypatch, fusion, padding_side):
    monkeypatch.setattr(model.config, "mm_hl_fusion", fusion)
    input_ids, attention_mask, labels, images, features = mixed_batch()
    calls = clip_calls
    with torch.no_grad():
        embeds, position_ids, mask, new_labels = model.splice(input_ids, attention_mask, labels, images, features,
                                                              padding_side=padding_side)
        clip = model.get_model().mm_projector(model.get_vision_tower()(images))  # [2, 16, hidden]
        hl = model.get_model().mm_projector(features[0])  # [1, hidden]
        text = model.get_model().embed_tokens
    assert calls[0] == 2 and len(calls) == 2  # the splice ran CLIP once on the 2 real images (+ our own call)

    slot = clip[0] + hl if fusion == "add" else hl
    assert slot.shape[0] == (PATCHES if fusion == "add" else 1)
    expected = [
        torch.cat([text(torch.tensor([1, 10])), clip[0], text(torch.tensor([11])), slot, text(torch.tensor([12]))]),
        torch.cat([text(torch.tensor([1, 20])), clip[1], text(torch.tensor([21]))]),
        text(torch.tensor([1, 30, 31, 32])),
    ]
    lengths = [4 + PATCHES + (PATCHES if fusion == "add" else 1), 3 + PATCHES, 4]
    assert [e.shape[0] for e in expected] == lengths
    assert embeds.shape[:2] == (3, max(lengths))
    for i, (exp, n) in enumerate(zip(expected, lengths)):
        span = slice(embeds.shape[1] - n, None) if padding_side == "left" else slice(0, n)
        assert torch.allclose(embeds[i, span], exp, atol=1e-6)
        assert mask[i].sum() == n and bool(mask[i, span].all())
        assert position_ids[i, span].tolist() == list(range(n))
        real = new_labels[i, span]
        assert (new_labels[i].ne(IGNORE_INDEX).sum()) == real.ne(IGNORE_INDEX).sum()  # nothing supervised in padding
    # Labels: text keeps its ids, every image position is IGNORE_INDEX.
    a = new_labels[0, embeds.shape[1] - lengths[0]:] if padding_side == "left" else new_labels[0, : lengths[0]]
    assert a[:2].tolist() == [1, 10] and a[2 + PATCHES].item() == 11 and a[-1].item() == 12
    assert (a[2: 2 + PATCHES] == IGNORE_INDEX).all() and (a[3 + PATCHES: -1] == IGNORE_INDEX).all()
    assert (a != IGNORE_INDEX).sum() == 4


def test_token_fusion_adds_exactly_one_position(model, monkeypatch):
    input_ids, attention_mask, labels, images, features = mixed_batch()
    lengths = {}
    for fusion in ("add", "token"):
        monkeypatch.setattr(model.config, "mm_hl_fusion", fusion)
        with torch.no_grad():
            _, _, mask, _ = model.splice(input_ids[:1], attention_mask[:1], None, images[:1], features[:1])
        lengths[fusion] = int(mask.sum())
    without_feature = 6 - 2 + PATCHES  # the same sample with its placeholder left out
    assert lengths["token"] == without_feature + 1
    assert lengths["add"] == without_feature + PATCHES


def test_a_fusion_mode_is_one_entry_of_the_table(model, monkeypatch):
    """A mode added to ``FUSIONS`` alone is a valid config choice, fills the slot, and is held to its own rule
    (a mode that reads Image1 refuses a sample whose only <image> is the placeholder)."""
    from llava.model.config import LlavaConfig
    from llava.model.fusion import FUSIONS, Fusion

    monkeypatch.setitem(FUSIONS, "half", Fusion(True, "the mean of P(CLIP(Image1)) and P(h)",
                                                lambda image1, hl: (image1.to(hl.device) + hl) / 2))
    assert LlavaConfig(mm_hl_fusion="half").mm_hl_fusion == "half"
    input_ids, attention_mask, _, images, features = mixed_batch()
    embeds = {}
    for fusion in ("add", "half"):
        monkeypatch.setattr(model.config, "mm_hl_fusion", fusion)
        with torch.no_grad():
            embeds[fusion] = model.splice(input_ids[:1], attention_mask[:1], None, images[:1], features[:1])[0][0]
        with pytest.raises(FormatError, match=f"sample 0: fusion '{fusion}' needs a real image"):
            model.splice(torch.tensor([[1, 10, IMG, 11]]), None, None, None, features[:1])
    slot = slice(3 + PATCHES, 3 + 2 * PATCHES)  # [1, 10] Image1 [11] slot [12]
    assert torch.allclose(embeds["half"][slot], embeds["add"][slot] / 2, atol=1e-6)
    assert torch.equal(embeds["half"][: 3 + PATCHES], embeds["add"][: 3 + PATCHES])
    assert not torch.allclose(embeds["half"][slot], embeds["add"][slot], atol=1e-3)


def test_separate_feature_projector_and_cls_patch(model, monkeypatch):
    import copy

    input_ids, attention_mask, labels, images, features = mixed_batch()
    hl_projector = copy.deepcopy(model.get_model().mm_projector)
    with torch.no_grad():
        for p in hl_projector.parameters():
            p.mul_(-2.0)
    monkeypatch.setattr(model.get_model(), "mm_hl_projector", hl_projector)
    monkeypatch.setattr(model.config, "mm_hl_projector", "separate")
    monkeypatch.setattr(model.config, "mm_hl_fusion", "token")
    monkeypatch.setattr(model.get_vision_tower(), "select_feature", "cls_patch")  # keeps CLS: 17 tokens per image
    with torch.no_grad():
        embeds, _, mask, _ = model.splice(input_ids[:1], attention_mask[:1], None, images[:1], features[:1])
        expected = hl_projector(features[0])[0]
    assert int(mask.sum()) == 4 + (PATCHES + 1) + 1
    assert torch.allclose(embeds[0, 3 + PATCHES + 1], expected, atol=1e-6)


def test_truncation_to_model_max_length(model, monkeypatch):
    monkeypatch.setattr(model.config, "tokenizer_model_max_length", 10)
    input_ids, attention_mask, labels, images, features = mixed_batch()
    with torch.no_grad():
        embeds, position_ids, mask, new_labels = model.splice(input_ids, attention_mask, labels, images, features)
    assert embeds.shape[1] == 10
    assert mask.sum(dim=1).tolist() == [10, 10, 4]
    assert new_labels[0, :2].tolist() == [1, 10] and (new_labels[0, 2:] == IGNORE_INDEX).all()


def test_forward_counts_clip_once_and_matches_labels(model, clip_calls):
    input_ids, attention_mask, labels, images, features = mixed_batch()
    calls = clip_calls
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, images=images,
                    high_level_features=features)
    assert calls == [2]
    assert out.logits.shape[:2] == (3, 4 + 2 * PATCHES) and torch.isfinite(out.loss)


def test_feature_size_mismatch_is_one_line(model):
    input_ids, attention_mask, labels, images, features = mixed_batch()
    features[0] = torch.randn(1, 1, 512)
    with pytest.raises(FormatError) as err:
        model(input_ids=input_ids, attention_mask=attention_mask, images=images, high_level_features=features)
    message = str(err.value)
    assert "512" in message and "1024" in message and "\n" not in message


def test_images_as_per_sample_list_and_features_as_tensor(model):
    input_ids, attention_mask, labels, images, features = mixed_batch()
    stacked = torch.stack([features[0], torch.zeros(1, 1024)])  # [B,1,D]: every sample carries a feature
    with torch.no_grad():
        ref = model.splice(input_ids[:2], attention_mask[:2], labels[:2], images, features[:2])
        got = model.splice(input_ids[:2], attention_mask[:2], labels[:2], [images[:1], images[1]],
                           [features[0].reshape(1, 1, 1024), None])
        with pytest.raises(FormatError, match="sample 1 carries a high-level feature but has no <image>"):
            model.splice(input_ids[[0, 2]], attention_mask[[0, 2]], labels[[0, 2]], images[:1], stacked)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_image_count_mismatch_is_an_error(model):
    input_ids, attention_mask, labels, images, features = mixed_batch()
    extra = torch.cat([images, images[:1]])  # the placeholder passed as a real image
    with pytest.raises(FormatError, match="3 images given for 2 real <image> tokens"):
        model.splice(input_ids, attention_mask, labels, extra, features)


def test_uncached_hub_id_is_one_line_naming_it(tiny_llava, tmp_path):
    from llava.model import load_pretrained_model

    ckpt = tmp_path / "hub_tower"
    shutil.copytree(tiny_llava, ckpt, ignore=shutil.ignore_patterns("clip"))
    config = json.loads((ckpt / "config.json").read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError) as err:
        load_pretrained_model(str(ckpt), None, "tiny", device="cpu")
    message = str(err.value)
    assert "\n" not in message
    assert "openai/clip-vit-large-patch14-336" in message and "mm_vision_tower" in message


def test_tiny_config_matches_its_tokenizer(loaded):
    tokenizer, model, image_processor, context_len = loaded
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == \
        (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_vision_tower().hidden_size == model.config.mm_hidden_size == 1024
    assert image_processor.crop_size["height"] == 56 and context_len == 2048


def test_tiny_build_is_byte_identical(tiny_llava, tmp_path):
    from eeg_vlm.tiny import main

    again = tmp_path / "again"
    main(["--out", str(again), "--seed", "0"])  # the command line, same defaults as the fixture's build
    files = sorted(p.relative_to(tiny_llava) for p in tiny_llava.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert "model.safetensors" in {str(f) for f in files} and "clip/model.safetensors" in {str(f) for f in files}
    for f in files:
        assert (tiny_llava / f).read_bytes() == (again / f).read_bytes(), f


def prompt_ids(tokenizer, question):
    from llava.conversation import get_conv_template
    from llava.mm_utils import tokenizer_image_token

    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], "<image>\n<image>\n" + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")


def test_generate_two_images_and_a_feature_batched_left_padded(loaded):
    tokenizer, model, _, _ = loaded
    prompts = [prompt_ids(tokenizer, "What is the sleep stage?"), prompt_ids(tokenizer, "Stage?")]
    torch.manual_seed(2)
    images = torch.randn(2, 3, 56, 56)
    features = torch.randn(2, 1, 1024)
    alone = [model.generate(p[None], images=images[i: i + 1], high_level_features=features[i: i + 1],
                            max_new_tokens=4, do_sample=False, min_new_tokens=4)[0] for i, p in enumerate(prompts)]
    assert all(len(a) == 4 for a in alone)
    # Right-padded input batch: generate re-pads left; the answers must not depend on batching.
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(2, width, dtype=torch.long)
    attention_mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, : len(p)], attention_mask[i, : len(p)] = p, 1
    batched = model.generate(input_ids, attention_mask=attention_mask, images=images, high_level_features=features,
                             max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert batched.shape == (2, 4)
    assert [b.tolist() for b in batched] == [a.tolist() for a in alone]
    # The feature matters: another feature gives other logits.
    with torch.no_grad():
        a = model(prompts[0][None], images=images[:1], high_level_features=features[:1]).logits
        b = model(prompts[0][None], images=images[:1], high_level_features=-features[:1]).logits
    assert not torch.allclose(a, b)


def test_model_type_llava_checkpoint_loads_through_our_classes(tiny_llava, loaded, tmp_path):
    from llava.model import LlavaLlamaForCausalLM, load_pretrained_model

    ckpt = tmp_path / "llava-v1.5-tiny"
    shutil.copytree(tiny_llava, ckpt, ignore=shutil.ignore_patterns("clip"))
    config = json.loads((ckpt / "config.json").read_text())
    for key in ("mm_hl_fusion", "mm_hl_projector", "conv_version", "tokenizer_padding_side", "dtype"):
        config.pop(key)
    config.update(model_type="llava", mm_vision_tower=str(tiny_llava / "clip"), rope_scaling=None,
                  torch_dtype="float16", max_sequence_length=4096)
    (ckpt / "config.json").write_text(json.dumps(config))
    _, model, _, context_len = load_pretrained_model(str(ckpt), None, "llava-v1.5-tiny", device="cpu")
    assert type(model) is LlavaLlamaForCausalLM and model.config.mm_hl_fusion == "add"
    assert context_len == 4096 and model.dtype == torch.float32
    input_ids, attention_mask, labels, images, features = mixed_batch()
    with torch.no_grad():
        ours = model(input_ids=input_ids, attention_mask=attention_mask, images=images, high_level_features=features)
        ref = loaded[1](input_ids=input_ids, attention_mask=attention_mask, images=images, high_level_features=features)
    assert torch.equal(ours.logits, ref.logits)


@pytest.mark.parametrize("non_lora_file", ["non_lora_trainables.bin", "non_lora_trainables.safetensors"])
def test_lora_checkpoint_loads_with_base_and_gives_the_same_logits(tiny_llava, tmp_path, non_lora_file):
    from peft import LoraConfig, get_peft_model

    from llava.model import load_pretrained_model

    _, base, _, _ = load_pretrained_model(str(tiny_llava), None, "tiny", device="cpu")
    torch.manual_seed(3)
    # LoRA on the language model only, as training makes it (CLIP is never adapted, as in LLaVA-1.5).
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                 target_modules=r"model\.layers\.\d+\.self_attn\.[qkvo]_proj"))
    with torch.no_grad():
        for p in peft_model.base_model.model.model.mm_projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # the projector was trained too
    out = tmp_path / "run_7"  # no "lora" in the name: recognised by adapter_config.json
    peft_model.save_pretrained(out)
    non_lora = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "mm_projector" in n}
    assert all(k.startswith("base_model.model.model.mm_projector.") for k in non_lora)
    if non_lora_file.endswith(".bin"):
        torch.save(non_lora, out / non_lora_file)
    else:
        from safetensors.torch import save_file

        save_file(non_lora, str(out / non_lora_file))
    peft_model.base_model.model.config.save_pretrained(out)

    input_ids, attention_mask, labels, images, features = mixed_batch()
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids, attention_mask=attention_mask, images=images,
                              high_level_features=features).logits
    with pytest.raises(FormatError, match="model_base"):
        load_pretrained_model(str(out), None, "tiny", device="cpu")
    tokenizer, merged, _, _ = load_pretrained_model(str(out), str(tiny_llava), "tiny", device="cpu")
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        got = merged(input_ids=input_ids, attention_mask=attention_mask, images=images,
                     high_level_features=features).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_projector_only_checkpoint_loads_with_base(tiny_llava, loaded, tmp_path):
    from llava.model import load_pretrained_model

    projector = loaded[1].get_model().mm_projector
    state = {f"model.mm_projector.{k}": v + 1.0 for k, v in projector.state_dict().items()}
    out = tmp_path / "pretrain"
    out.mkdir()
    torch.save(state, out / "mm_projector.bin")
    shutil.copy(tiny_llava / "config.json", out / "config.json")
    _, model, _, _ = load_pretrained_model(str(out), str(tiny_llava), "tiny", device="cpu")
    got = model.get_model().mm_projector.state_dict()
    assert all(torch.equal(got[k], projector.state_dict()[k] + 1.0) for k in got)


def test_lora_run_with_its_own_feature_projector_loads_it_and_says_when_it_is_absent(tiny_llava, tmp_path, caplog):
    """A run with ``mm_hl_projector: separate`` trained a projector the base does not have: it comes from
    non_lora_trainables.bin, silently; without it the loader warns that it is left random."""
    import logging
    import warnings

    from peft import LoraConfig, get_peft_model

    from llava.model import LlavaLlamaForCausalLM, load_pretrained_model
    from llava.model.config import load_config

    config = load_config(tiny_llava)
    config.mm_hl_projector = "separate"
    torch.manual_seed(5)
    model = LlavaLlamaForCausalLM.from_pretrained(str(tiny_llava), config=config)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "run"
    peft_model.save_pretrained(out)
    model.config.save_pretrained(out)
    trained = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "mm_" in n and "projector" in n}
    assert any("mm_hl_projector" in n for n in trained)
    torch.save(trained, out / "non_lora_trainables.bin")

    caplog.clear()
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, merged, _, _ = load_pretrained_model(str(out), str(tiny_llava), "tiny", device="cpu")
    assert "MISSING" not in caplog.text and "left random" not in caplog.text
    # Short target names (q_proj, v_proj, as LLaVA-1.5's LoRA checkpoints have) never reach CLIP's layers.
    # (peft warns of the adapter keys it found no weights for; logged instead when warnings are captured)
    assert "adapter keys" not in caplog.text
    assert not [str(w.message) for w in caught if "adapter keys" in str(w.message)]
    expected = model.get_model().mm_hl_projector.state_dict()
    for key, value in merged.get_model().mm_hl_projector.state_dict().items():
        assert torch.equal(value, expected[key])

    torch.save({n: p for n, p in trained.items() if "mm_hl_projector" not in n}, out / "non_lora_trainables.bin")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_pretrained_model(str(out), str(tiny_llava), "tiny", device="cpu")
    assert "left random" in caplog.text and "mm_hl_projector" in caplog.text


def test_llava_style_calls_of_the_public_api(tiny_llava, loaded, caplog):
    """LLaVA's scripts: ``load_pretrained_model(path, None, name, device=...)`` positionally, then
    ``process_images(images, processor, model.config)``; ``device="cuda"`` without a GPU falls back to the CPU."""
    import inspect

    from PIL import Image

    from llava.conversation import conv_templates
    from llava.mm_utils import (
        KeywordsStoppingCriteria,
        get_model_name_from_path,
        process_images,
        tokenizer_image_token,
    )
    from llava.model.builder import load_pretrained_model

    params = list(inspect.signature(load_pretrained_model).parameters.values())
    assert [p.name for p in params[:7]] == ["model_path", "model_base", "model_name", "load_8bit", "load_4bit",
                                            "device_map", "device"]
    assert (params[5].default, params[6].default) == ("auto", "cuda")
    assert list(inspect.signature(process_images).parameters) == ["images", "image_processor", "model_cfg"]
    name = get_model_name_from_path(str(tiny_llava))
    assert name == tiny_llava.name

    tokenizer, model, processor, context_len = loaded  # the fixture's LLaVA-style call, device="cpu"
    # LLaVA's prompt: the llava_v1 template, one <image> made IMAGE_TOKEN_INDEX after BOS, stopped at its sep2
    conv = conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is the sleep stage of this EEG epoch?")
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMG, return_tensors="pt").unsqueeze(0)
    assert input_ids[0, 0] == tokenizer.bos_token_id and input_ids[0].tolist().count(IMG) == 1
    stop = KeywordsStoppingCriteria([conv.sep2], tokenizer, input_ids)
    answer = tokenizer("Sleep stage: W", add_special_tokens=False, return_tensors="pt").input_ids
    steps = [torch.cat([input_ids, answer[:, : k + 1]], dim=1) for k in range(answer.shape[1])]
    steps.append(torch.cat([steps[-1], torch.tensor([[tokenizer.eos_token_id]])], dim=1))
    assert [bool(stop(ids, None)[0]) for ids in steps] == [False] * answer.shape[1] + [True]
    assert model.device.type == "cpu" and model.dtype == torch.float32 and context_len > 0
    pixels = process_images([Image.new("RGB", (60, 40), (10, 200, 30))], processor, model.config)
    assert model.config.image_aspect_ratio == "pad" and pixels.shape == (1, 3, 56, 56)

    with caplog.at_level("WARNING", logger="llava.model.builder"):
        _, cpu_model, _, _ = load_pretrained_model(str(tiny_llava), None, name)  # LLaVA's defaults: cuda, auto
    assert cpu_model.device.type == "cpu" and cpu_model.dtype == torch.float32
    assert "no GPU is available" in caplog.text
