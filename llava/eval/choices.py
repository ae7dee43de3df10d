"""Closed-set answers: the five stage answers scored by their log-likelihood, the prompt encoded once.

``choices`` answers a question the way greedy decoding would, except at the stage: the model's text up to the
answer line ``Sleep stage:`` (``eeg_core.answer.ANSWER_STAGE_PREFIX``) is greedy, and the five stages that can
end the line are scored instead of decoded.

- A stage-only checkpoint (answers ``Sleep stage: X``) writes the answer line first: one forward pass over the
  prompt and the answer line's shared tokens (``Sleep stage:``) checks that greedy decoding would write them, and
  its cache (the KV cache) is shared by the five candidates: one candidate after another, only the tokens where
  the candidates differ (``W``, ``N 1``, ..., ``REM`` and the closing ``</s>``) run through the model after it,
  and the cache is cropped back after each (never copied per candidate).
- A chain-of-thought checkpoint starts with its reasoning instead: for those questions the reasoning is
  generated greedily up to the answer line, then the five stages are scored after it in the same way.

Each candidate is the assistant reply ``<reasoning>\\nSleep stage: X`` rendered with the conversation template
and tokenized exactly as training tokenizes replies (``llava.train.preprocess``), ``sep2`` included. The five
log-likelihoods, softmaxed, are the answer's probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from eeg_core.answer import ANSWER_STAGE_PREFIX, stage_line
from eeg_core.stages import STAGES
from llava.padding import pad_sequences


@dataclass
class Candidates:
    """One question's candidates as token ids: the shared context (prompt, reasoning and the answer line's
    shared tokens), each candidate's own tokens after it, and how many of the context's last tokens are the
    reply's (checked against greedy decoding when no reasoning was generated)."""

    context: list[int]
    suffixes: list[list[int]]
    reply_tokens: int


def render_reply(conv_template, user_text: str, reply: str | None) -> tuple[str, int]:
    """The conversation with ``user_text`` and the assistant ``reply`` (None leaves it open), and where the
    reply starts in the rendered text."""
    conv = conv_template.copy()
    conv.append_message(conv.roles[0], user_text)
    conv.append_message(conv.roles[1], reply)
    prompt, spans = conv.get_prompt_and_spans()
    return prompt, (spans[-1][0] if reply else len(prompt))


def candidates(conv_template, user_text: str, tokenizer, reasoning: str = "",
               stages: Sequence[str] = STAGES) -> Candidates:
    """Token ids of the five replies ``reasoning + "Sleep stage: X"`` after the prompt, split into their shared
    context and their own suffixes."""
    from llava.mm_utils import tokenizer_image_token

    full = []
    for stage in stages:
        prompt, start = render_reply(conv_template, user_text, reasoning + stage_line(stage))
        full.append(tokenizer_image_token(prompt, tokenizer))
    head = len(tokenizer_image_token(prompt[:start], tokenizer))
    shared = 0
    while all(len(ids) > shared for ids in full) and len({ids[shared] for ids in full}) == 1:
        shared += 1
    return Candidates(full[0][:shared], [ids[shared:] for ids in full], max(0, shared - head))


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


@torch.inference_mode()
def score_candidates(model, tokenizer, cands: Sequence[Candidates], images, high_level_features,
                     check_greedy: bool) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihoods ``[B, K]`` of every question's K candidate suffixes, and (``check_greedy``) whether greedy
    decoding would write each context's reply tokens (the answer line's shared part) itself.

    One forward pass over the left-padded contexts (images and features spliced in) fills the KV cache. Then each
    candidate in turn runs its own tokens after the first (whose log-probability the first pass already gives)
    against that cache, which is cropped back to the shared context after each: the cache is never copied per
    candidate, so it holds the prompt's keys and values once plus a few tokens (a copy per candidate would hold
    K times the prompt: about 150 GiB for LLaVA-1.5-13B in float16 at batch 32 and 1,224 prompt tokens)."""
    device = model.device
    batch, n_cand = len(cands), len(cands[0].suffixes)
    input_ids, mask = pad_sequences([torch.tensor(c.context, dtype=torch.long) for c in cands],
                                    tokenizer.pad_token_id, "left")
    spliced = model.splice(input_ids.to(device), mask.long().to(device), None, images, high_level_features,
                           padding_side="left")
    mask = spliced.attention_mask
    keep = 1 + (max(c.reply_tokens for c in cands) if check_greedy else 0)
    out = model(inputs_embeds=spliced.inputs_embeds, attention_mask=mask, position_ids=spliced.position_ids,
                use_cache=True, logits_to_keep=keep)
    logits = out.logits  # [B, keep, V]: the last ``keep`` positions of every (left-padded) context
    greedy = np.ones(batch, dtype=bool)
    if check_greedy:
        for b, c in enumerate(cands):
            if c.reply_tokens:
                predicted = logits[b, keep - 1 - c.reply_tokens : keep - 1].argmax(-1).tolist()
                greedy[b] = predicted == c.context[-c.reply_tokens:]
    first = _log_softmax(logits[:, -1])  # [B, V]
    scores = torch.zeros((batch, n_cand), dtype=torch.float32)
    longest = max(len(s) for c in cands for s in c.suffixes)
    for b, c in enumerate(cands):
        for k, s in enumerate(c.suffixes):
            scores[b, k] = first[b, s[0]]
    if longest > 1:  # the candidates' later tokens, each candidate in turn after the shared cache
        cache, past = out.cache, mask
        prompt_len = cache.get_seq_length()
        start = past.sum(dim=1, keepdim=True)
        for k in range(n_cand):
            steps = max(len(c.suffixes[k]) for c in cands) - 1
            if steps == 0:
                continue
            ids = torch.full((batch, steps), tokenizer.pad_token_id, dtype=torch.long)
            for b, c in enumerate(cands):
                s = c.suffixes[k]
                ids[b, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
            pos = start + torch.arange(steps, device=device)[None, :]
            full_mask = torch.cat([past, torch.ones((batch, steps), dtype=past.dtype, device=device)], dim=1)
            more = _log_softmax(model(input_ids=ids.to(device), attention_mask=full_mask, position_ids=pos,
                                      cache=cache, use_cache=True).logits).cpu()
            cache.crop(prompt_len - cache.get_seq_length())  # back to the shared context for the next candidate
            for b, c in enumerate(cands):
                s = c.suffixes[k]
                scores[b, k] += sum(float(more[b, t, s[t + 1]]) for t in range(len(s) - 1))
    return scores.numpy(), greedy


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax of log-likelihoods over the candidates (last axis)."""
    z = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def reasoning_of(generated: str) -> str:
    """The reasoning part of a generated reply (cut before its answer line), ending in a newline; "" if none."""
    text = generated
    if ANSWER_STAGE_PREFIX in text:
        text = text[: text.rindex(ANSWER_STAGE_PREFIX)]
    text = text.strip()
    return text + "\n" if text else ""
