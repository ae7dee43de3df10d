"""model_vqa.py --answer-mode choices: the five stages scored with a shared prompt cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eeg_core.answer import parse_stage
from eeg_core.atomic import write_jsonl
from eeg_core.errors import FormatError
from eeg_core.formats import make_question, read_jsonl, save_features
from eeg_core.stages import STAGES
from llava.eval import choices, model_vqa
from sleep_eeg.images.cot import QUESTIONS


@pytest.fixture(scope="module")
def stage_questions(stage_only_llava, tmp_path_factory):
    """Eight questions over the six images the stage-only checkpoint learned, features beside them."""
    _, images, features, labels = stage_only_llava
    root = tmp_path_factory.mktemp("choices")
    order = [0, 1, 2, 3, 4, 5, 2, 4]
    write_jsonl(root / "eeg_eval.jsonl", [
        make_question(f"q{k}", [images[i].name] * 2, QUESTIONS[0], labels[i], epoch=k) for k, i in enumerate(order)])
    save_features(root / "eval_high_level_features.npy", features[order])
    return root / "eeg_eval.jsonl", images[0].parent


@pytest.fixture(scope="module")
def stage_loaded(stage_only_llava):
    return model_vqa.load_model(str(stage_only_llava[0]), None, "cpu")


def run(ckpt, qfile, folder, loaded, out, **kw):
    return model_vqa.run(model_path=str(ckpt), question_file=str(qfile), answers_file=str(out),
                         image_folder=str(folder), device="cpu", loaded=loaded, progress=False, **kw)


def test_choices_gives_the_stage_of_greedy_generate(stage_only_llava, stage_questions, stage_loaded, tmp_path):
    ckpt = stage_only_llava[0]
    qfile, folder = stage_questions
    run(ckpt, qfile, folder, stage_loaded, tmp_path / "gen.jsonl", batch_size=8, max_new_tokens=8)
    run(ckpt, qfile, folder, stage_loaded, tmp_path / "ch.jsonl", batch_size=8, answer_mode="choices")
    run(ckpt, qfile, folder, stage_loaded, tmp_path / "ch1.jsonl", batch_size=1, answer_mode="choices")
    generated, chosen, one = (read_jsonl(tmp_path / f) for f in ("gen.jsonl", "ch.jsonl", "ch1.jsonl"))
    assert [parse_stage(a["text"]) for a in generated] == [a["text"].split(": ")[1] for a in chosen]
    assert all(a["text"] == f"Sleep stage: {a['metadata']['label']}" for a in chosen)  # the taught stages
    for a, b in zip(chosen, one):
        p = a["metadata"]["probabilities"]
        assert list(p) == list(STAGES) and sum(p.values()) == pytest.approx(1, abs=1e-4)
        assert max(p, key=p.get) == a["text"].split(": ")[1]
        assert a["metadata"]["answer_mode"] == "choices"
        assert a["text"] == b["text"]  # batched = one at a time
        np.testing.assert_allclose(list(p.values()), list(b["metadata"]["probabilities"].values()), atol=1e-4)


def test_shared_cache_scores_equal_whole_sequence_likelihoods(stage_only_llava, stage_loaded):
    """The cached, candidate-batched scores are the plain log-likelihood of each whole reply."""
    from llava.conversation import get_conv_template
    from llava.mm_utils import process_images, tokenizer_image_token

    tokenizer, model, processor = stage_loaded
    _, images, features, _ = stage_only_llava
    conv = get_conv_template("llava_v1")
    text = f"<image>\n<image>\n{QUESTIONS[1]}"
    pixels = process_images([Image.open(images[2]).convert("RGB")], processor, model.config)
    hl = [torch.from_numpy(features[2])]
    for reasoning in ("", "Wake: no alpha rhythm over most of the epoch, so it is not wake.\n"):
        cands = choices.candidates(conv, text, tokenizer, reasoning)
        scores, _ = choices.score_candidates(model, tokenizer, [cands], pixels, hl, check_greedy=False)
        for k, stage in enumerate(STAGES):
            prompt, start = choices.render_reply(conv, text, reasoning + f"Sleep stage: {stage}")
            ids = torch.tensor([tokenizer_image_token(prompt, tokenizer)])
            n = len(cands.suffixes[k])
            with torch.inference_mode():
                logits = model(input_ids=ids, images=pixels, high_level_features=hl).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            expected = sum(float(logp[-n - 1 + t, ids[0, -n + t]]) for t in range(n))
            assert scores[0, k] == pytest.approx(expected, abs=1e-4)


def test_candidates_never_copy_the_prompt_cache(stage_only_llava, stage_loaded, monkeypatch):
    """The KV cache holds each question's context once: never a copy per candidate (batch x 5), and never more
    than the context plus the longest candidate's tokens."""
    from transformers.cache_utils import DynamicLayer

    from llava.conversation import get_conv_template
    from llava.mm_utils import process_images

    tokenizer, model, processor = stage_loaded
    _, images, features, _ = stage_only_llava
    conv = get_conv_template("llava_v1")
    text = f"<image>\n<image>\n{QUESTIONS[0]}"
    batch = 3
    pixels = process_images([Image.open(images[i]).convert("RGB") for i in range(batch)], processor, model.config)
    hl = [torch.from_numpy(features[i]) for i in range(batch)]
    cands = [choices.candidates(conv, text, tokenizer, "Reasoning first.\n")] * batch
    shapes = []
    update = DynamicLayer.update

    def recording(self, key_states, value_states, *args, **kwargs):
        out = update(self, key_states, value_states, *args, **kwargs)
        shapes.append(tuple(self.keys.shape[:1]) + tuple(self.keys.shape[2:3]))
        return out

    monkeypatch.setattr(DynamicLayer, "update", recording)
    choices.score_candidates(model, tokenizer, cands, pixels, hl, check_greedy=False)
    context = shapes[0][1]
    longest = max(len(s) for s in cands[0].suffixes)
    assert len(shapes) > model.config.num_hidden_layers  # the candidates' tokens ran against the cache
    assert {b for b, _ in shapes} == {batch}
    assert max(n for _, n in shapes) <= context + longest - 1


def test_chain_of_thought_is_generated_then_the_stage_scored(tiny_llava, stage_questions, tmp_path):
    """The random tiny model does not start with the answer line: its greedy text comes first, then the stage."""
    qfile, folder = stage_questions
    loaded = model_vqa.load_model(str(tiny_llava), None, "cpu")
    run(tiny_llava, qfile, folder, loaded, tmp_path / "gen.jsonl", batch_size=4, max_new_tokens=10)
    run(tiny_llava, qfile, folder, loaded, tmp_path / "ch.jsonl", batch_size=4, max_new_tokens=10,
        answer_mode="choices")
    for g, c in zip(read_jsonl(tmp_path / "gen.jsonl"), read_jsonl(tmp_path / "ch.jsonl")):
        reasoning, _, last = c["text"].rpartition("\n")
        assert reasoning == g["text"].split("Sleep stage:")[0].strip()
        assert parse_stage(last) in STAGES and last == f"Sleep stage: {parse_stage(last)}"


def test_choices_resumes_and_never_mixes_with_generate(stage_only_llava, stage_questions, stage_loaded, tmp_path):
    ckpt = stage_only_llava[0]
    qfile, folder = stage_questions
    out = tmp_path / "a.jsonl"
    run(ckpt, qfile, folder, stage_loaded, out, answer_mode="choices", num_chunks=2, chunk_idx=0)
    with pytest.raises(FormatError, match="written with --answer-mode choices, this run is --answer-mode generate"):
        run(ckpt, qfile, folder, stage_loaded, out)
    summary = run(ckpt, qfile, folder, stage_loaded, out, answer_mode="choices", batch_size=3)
    assert (summary["answered"], summary["skipped"]) == (4, 4)
    assert [a["question_id"] for a in read_jsonl(out)] == [f"q{k}" for k in range(8)]
