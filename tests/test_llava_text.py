"""llava text side: tokenizer, conversation templates, <image> tokenization, label masking, image helpers."""

import json
import shutil
import warnings
from types import SimpleNamespace

import pytest
import sentencepiece as spm
import torch
from PIL import Image
from sentencepiece import sentencepiece_model_pb2
from transformers import CLIPImageProcessor

from eeg_core.errors import FormatError
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template, template_texts
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)
from llava.tokenizer import load_tokenizer, train_sentencepiece
from llava.train import preprocess as preprocess_module
from llava.train.preprocess import preprocess

REPLY_1 = "Sleep spindles and K-complexes are present.\nSleep stage: N2"
REPLY_2 = "Yes: slow waves fill 10% of the epoch, so N2."
CONVERSATION = [
    {"from": "human", "value": "<image>\n<image>\nWhich sleep stage is this 30-second EEG epoch?"},
    {"from": "gpt", "value": REPLY_1},
    {"from": "human", "value": "Are you sure?"},
    {"from": "gpt", "value": REPLY_2},
]


def training_texts():
    try:
        from sleep_eeg.images.cot import example_texts

        texts = list(example_texts())
    except ImportError:
        texts = []
    texts += [t["value"] for t in CONVERSATION] + template_texts()
    texts += [f"Epoch {i} of night {i % 3}: the EEG shows stage {s}." for i, s in enumerate(["W", "N1", "N3", "REM"] * 50)]
    return texts


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_sentencepiece(training_texts(), out, vocab_size=700)
    return out


@pytest.fixture(scope="module")
def legacy_dir(tok_dir, tmp_path_factory):
    """The same model with ``"legacy": true`` in tokenizer_config.json, as some Llama checkpoints ship it."""
    out = tmp_path_factory.mktemp("tok_legacy")
    shutil.copy(tok_dir / "tokenizer.model", out / "tokenizer.model")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["legacy"] = True
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def sp_processors(tok_dir):
    """The sentencepiece model itself, and a copy that adds no dummy-prefix space (text right after </s>)."""
    data = (tok_dir / "tokenizer.model").read_bytes()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=data), spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def reference_ids(prompt, sp, sp_no_prefix, legacy):
    """The ids LLaVA-1.5's scheme gives, from sentencepiece directly: one BOS; -200 per <image>; each text chunk
    encoded on its own; </s> as the EOS id, the text after it with (legacy) or without a dummy-prefix space."""
    ids = [1]
    for i, chunk in enumerate(prompt.split("<image>")):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        for j, piece in enumerate(chunk.split("</s>")):
            if j:
                ids.append(2)
            ids += (sp if j == 0 or legacy else sp_no_prefix).encode(piece)
    return ids


def supervised_segments(ids, labels):
    segments, current = [], []
    for i, label in zip(ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == i
            current.append(i)
        elif current:
            segments.append(current)
            current = []
    return segments + ([current] if current else [])


# ------------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------------
def test_train_sentencepiece_is_deterministic_and_llama_shaped(tok_dir, tmp_path):
    train_sentencepiece(training_texts(), tmp_path, vocab_size=700)
    assert (tmp_path / "tokenizer.model").read_bytes() == (tok_dir / "tokenizer.model").read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sp.pad_id() == -1
    ids = sp.encode("漢字 ü")  # never seen: byte fallback, no <unk>
    assert 0 not in ids and sp.decode(ids) == "漢字 ü"


def test_load_tokenizer_has_llava_settings_and_round_trips(tok_dir, tmp_path):
    tok = load_tokenizer(tok_dir, model_max_length=77)
    ids = tok("Sleep stage: N2").input_ids
    assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id not in ids
    assert (tok.pad_token, tok.pad_token_id, tok.padding_side, tok.model_max_length) == ("<unk>", 0, "right", 77)
    assert tok.decode(ids, skip_special_tokens=True) == "Sleep stage: N2"
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path, padding_side="left")
    assert again("Sleep stage: N2").input_ids == ids
    assert (again.pad_token_id, again.padding_side, again.model_max_length) == (0, "left", 77)


def test_load_tokenizer_errors_name_the_folder(tmp_path):
    with pytest.raises(FormatError, match="no tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FormatError, match="missing_dir"):
        load_tokenizer(tmp_path / "missing_dir")


# ------------------------------------------------------------------------------------------------------------
# Conversations and <image> tokenization
# ------------------------------------------------------------------------------------------------------------
def test_v1_prompt_layout():
    conv = get_conv_template("llava_v1")
    conv.append_message(conv.roles[0], "<image>\nQ1")
    conv.append_message(conv.roles[1], "A1")
    conv.append_message(conv.roles[0], "Q2")
    conv.append_message(conv.roles[1], None)
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
    assert conv.get_prompt() == system + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    assert get_conv_template("llava_v1").messages == []  # a copy: the template itself is untouched
    eeg = get_conv_template("eeg_vqa")
    eeg.append_message(eeg.roles[0], "Q")
    eeg.append_message(eeg.roles[1], None)
    assert eeg.get_prompt() == "This is a VQA task. Question: Q The answer is:"


def test_unknown_version_lists_known_ones():
    with pytest.raises(FormatError, match=r"unknown conversation version 'v9' \(known: .*llava_v1.*eeg_vqa"):
        get_conv_template("v9")
    with pytest.raises(FormatError, match="unknown conversation version 'v9'"):
        preprocess([CONVERSATION], None, has_image=True, version="v9")


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("version", ["v1", "eeg_vqa"])
def test_prompt_ids_equal_sentencepiece_encoding(tok_dir, legacy_dir, legacy, version):
    tok = load_tokenizer(legacy_dir if legacy else tok_dir)
    conv = get_conv_template(version)
    for j, turn in enumerate(CONVERSATION):
        conv.append_message(conv.roles[j % 2], turn["value"])
    prompt = conv.get_prompt()
    assert prompt.count("</s>") == 2 and prompt.count("<image>") == 2
    ids = tokenizer_image_token(prompt, tok)
    assert ids == reference_ids(prompt, *sp_processors(tok_dir), legacy=legacy)
    assert ids.count(tok.bos_token_id) == 1 and ids.count(IMAGE_TOKEN_INDEX) == 2
    tensor = tokenizer_image_token(prompt, tok, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.tolist() == ids


# ------------------------------------------------------------------------------------------------------------
# Label masking
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("version", ["v1", "eeg_vqa"])
def test_labels_cover_exactly_the_replies(tok_dir, legacy_dir, legacy, version):
    tok = load_tokenizer(legacy_dir if legacy else tok_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tokenization mismatch warning fails the test
        out = preprocess([CONVERSATION, CONVERSATION[:2]], tok, has_image=True, version=version)
    for n, (ids, labels) in enumerate(zip(out["input_ids"], out["labels"])):
        conv = get_conv_template(version)
        for j, turn in enumerate(CONVERSATION[: 4 if n == 0 else 2]):
            conv.append_message(conv.roles[j % 2], turn["value"])
        assert ids.tolist() == tokenizer_image_token(conv.get_prompt(), tok)
        assert labels[ids == IMAGE_TOKEN_INDEX].eq(IGNORE_INDEX).all() and labels[0] == IGNORE_INDEX
        segments = [tok.decode(s) for s in supervised_segments(ids, labels)]
        assert segments == [REPLY_1 + "</s>", REPLY_2 + "</s>"][: 2 if n == 0 else 1]


def test_text_only_sample_is_masked_the_same_way(tok_dir):
    tok = load_tokenizer(tok_dir)
    source = [{"from": "human", "value": "Which stage?"}, {"from": "gpt", "value": "N3"}]
    out = preprocess([source], tok, has_image=False, version="v1")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert IMAGE_TOKEN_INDEX not in ids.tolist()
    assert [tok.decode(s) for s in supervised_segments(ids, labels)] == ["N3</s>"]


def test_mismatch_masks_whole_sample_and_warns(tok_dir, monkeypatch):
    tok = load_tokenizer(tok_dir)
    real = preprocess_module.tokenizer_image_token

    def drifting(text, tokenizer):  # a tokenizer whose prefixes do not match the full prompt
        ids = real(text, tokenizer)
        return ids + [5] if text.endswith("</s>") else ids

    monkeypatch.setattr(preprocess_module, "tokenizer_image_token", drifting)
    with pytest.warns(UserWarning, match="tokenization mismatch"):
        out = preprocess([CONVERSATION], tok, has_image=True, version="v1", where="data.json: record 'r7'")
    assert out["labels"][0].eq(IGNORE_INDEX).all()


def test_plain_supervises_caption_only(tok_dir):
    tok = load_tokenizer(tok_dir)
    source = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "An N2 epoch."}]
    out = preprocess([source], tok, has_image=True, version="plain")
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids[:2].tolist() == [1, IMAGE_TOKEN_INDEX]  # the human text is replaced by the bare <image>
    assert labels[:2].tolist() == [IGNORE_INDEX] * 2 and labels[2:].tolist() == ids[2:].tolist()
    assert tok.decode(ids[2:]) == "An N2 epoch.\n"


def test_turn_order_error_names_the_record(tok_dir):
    tok = load_tokenizer(tok_dir)
    bad = [CONVERSATION[0], CONVERSATION[0]]
    with pytest.raises(FormatError, match=r"data.json: record 'r1': turn 1 is from 'human', expected 'gpt'"):
        preprocess([bad], tok, has_image=True, version="v1", where="data.json: record 'r1'")


# ------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------
def clip_processor():
    return CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})


def test_expand2square_centres_and_pads():
    wide = expand2square(Image.new("RGB", (40, 20), (255, 0, 0)), (1, 2, 3))
    assert wide.size == (40, 40)
    assert wide.getpixel((20, 0)) == (1, 2, 3) and wide.getpixel((20, 20)) == (255, 0, 0)
    assert wide.getpixel((20, 39)) == (1, 2, 3) and wide.getpixel((20, 10)) == (255, 0, 0)
    tall = expand2square(Image.new("RGB", (10, 30), (0, 255, 0)), (9, 9, 9))
    assert tall.size == (30, 30) and tall.getpixel((0, 15)) == (9, 9, 9) and tall.getpixel((15, 15)) == (0, 255, 0)


def test_process_images_pad_and_square():
    processor = clip_processor()
    red = Image.new("RGB", (56, 28), (255, 0, 0))
    padded = process_images([red, red, red], processor, SimpleNamespace(image_aspect_ratio="pad"))
    assert padded.shape == (3, 3, 28, 28) and padded.dtype == torch.float32
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    pad_colour = (torch.tensor([int(m * 255) for m in processor.image_mean]) / 255 - mean) / std
    assert torch.allclose(padded[0, :, 0, 14], pad_colour, atol=1e-4)  # top band: the mean colour
    assert torch.allclose(padded[0, :, 14, 14], (torch.tensor([1.0, 0, 0]) - mean) / std, atol=1e-4)
    cropped = process_images([red], processor, SimpleNamespace(image_aspect_ratio="square"))  # resize + crop
    assert cropped.shape == (1, 3, 28, 28)
    assert torch.allclose(cropped[0, :, 0, 14], (torch.tensor([1.0, 0, 0]) - mean) / std, atol=1e-4)
    # A config without the attribute: LLaVA's default (the processor's resize and crop), as "square".
    assert torch.equal(process_images([red], processor, SimpleNamespace()), cropped)
    with pytest.raises(FormatError, match="unknown image_aspect_ratio 'anyres'") as err:
        process_images([red], processor, SimpleNamespace(image_aspect_ratio="anyres"))
    assert "\n" not in str(err.value)
    with pytest.raises(FormatError, match="not the string 'pad': pass model.config"):  # the old third argument
        process_images([red], processor, "pad")


def test_load_image_errors_name_the_path(tmp_path):
    good = tmp_path / "epoch.png"
    Image.new("L", (8, 4), 7).save(good)
    image = load_image(good)
    assert image.mode == "RGB" and image.size == (8, 4)
    with pytest.raises(FormatError, match=r"missing\.png: image not found"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(FormatError, match=r"notes\.png: not a readable image"):
        load_image(text)


# ------------------------------------------------------------------------------------------------------------
# Generation helpers
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt_in_ids", [True, False])
def test_keywords_stopping_waits_for_every_sequence(tok_dir, prompt_in_ids):
    tok = load_tokenizer(tok_dir)
    keyword = "Sleep stage"
    prompt = torch.tensor([tok("ASSISTANT: Sleep stage").input_ids] * 2)  # the keyword in the prompt never counts
    criteria = KeywordsStoppingCriteria([keyword], tok, prompt)
    words = [tok(" x Sleep stage", add_special_tokens=False).input_ids, tok(" y y y Sleep stage", add_special_tokens=False).input_ids]
    steps = max(len(w) for w in words)
    words = [w + [tok.unk_token_id] * (steps - len(w)) for w in words]
    seen = prompt if prompt_in_ids else torch.zeros(2, 0, dtype=torch.long)
    flags = []
    for t in range(steps):
        seen = torch.cat([seen, torch.tensor([[words[0][t]], [words[1][t]]])], dim=1)
        flags.append(criteria(seen, None).tolist())
    assert flags[0] == [False, False]
    first = next(t for t, f in enumerate(flags) if f[0])
    assert first == len(tok(" x Sleep stage", add_special_tokens=False).input_ids) - 1
    assert not any(f[1] for f in flags[:first + 1]) and flags[-1] == [True, True]
    assert all(f[0] for f in flags[first:])  # a finished sequence stays finished


def test_get_model_name_from_path():
    assert get_model_name_from_path("/ckpt/llava-v1.5-13b/") == "llava-v1.5-13b"
    assert get_model_name_from_path("runs/eeg-lora/checkpoint-50") == "eeg-lora_checkpoint-50"


def test_original_llava_tokenizer_config_loads(tiny_llava, tmp_path):
    """liuhaotian/llava-v1.5-* ship tokenizer.model with a tokenizer_config.json of dict-style AddedTokens,
    ``pad_token: null`` and ``legacy: false``: it loads with BOS, no EOS, pad = unk, like our own."""
    import json
    import shutil

    from llava.tokenizer import load_tokenizer

    added = lambda content: {"__type": "AddedToken", "content": content, "lstrip": False,  # noqa: E731
                             "normalized": False, "rstrip": False, "single_word": False}
    shutil.copy(tiny_llava / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": added("<s>"), "eos_token": added("</s>"),
        "unk_token": added("<unk>"), "pad_token": None, "clean_up_tokenization_spaces": False, "legacy": False,
        "model_max_length": 2048, "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
    }))
    original = load_tokenizer(tmp_path)
    ours = load_tokenizer(tiny_llava)
    text = "USER: What is the sleep stage? ASSISTANT: Sleep stage: N2</s>USER: and now?"
    assert original(text).input_ids == ours(text).input_ids
    assert original(text).input_ids[0] == original.bos_token_id == 1
    assert original.pad_token_id == original.unk_token_id == 0
    assert original.eos_token_id == 2
