"""Sequence encoders: each epoch's feature reads the epochs around it in its night.

Sleep scorers read the epochs around the one they score (REM after REM, N1 after wake); every leading stager
reads long context (SleePyCo 10 epochs, SleepTransformer 21, U-Sleep the whole night). With
``eeg-vlm vision train --context K`` (or ``--context night``) the vision module gains a sequence encoder:

    image model, per epoch                      -> image feature [D]
    sequence encoder over the night's epochs    -> the epoch's feature [D] (what the VLM gets) and stage logits

trained together with the image model (after the image model's own epochs) on runs of consecutive epochs of the
training nights, never on frozen features that the image model has already fitted. ``K`` epochs either side: each epoch's
feature is the encoder's output at the centre of the window ``i-K .. i+K``; ``night``: the encoder reads the
whole night at once (trained on runs of a batch's length). The interface stays one ``[1, D]`` vector per epoch.

Neighbours are the records of the same night (the record's ``psg``, else its ``subject`` and ``night``) at
epoch ``i+j``. An epoch that is not among the records (dropped ``?`` / movement epochs, trimmed wake, the
night's edges) is absent: a zero vector with its flag off. So a feature never reads across a night boundary,
nor across a split boundary (train records and eval questions are separate files, extracted separately).

Encoders are registered by name, as vision modules are::

    from vision_modules.sequence import SequenceOutput, register_sequence_encoder

    @register_sequence_encoder("my_tcn")
    class MyTCN(nn.Module):
        def __init__(self, feature_dim=1024, num_classes=5, **kw): ...
        def forward(self, x, present):          # x [B, T, D] (absent epochs zero), present [B, T] bool
            ...
            return SequenceOutput(features, logits)   # [B, T, D], [B, T, C]

    # eeg-vlm vision train --context 10 --sequence my_tcn --import-module my_modules ...

Built-ins: ``gru`` (a bidirectional GRU, the default) and ``transformer`` (self-attention with a learned bias
per epoch distance, so it reads nights of any length).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from eeg_core.errors import FormatError
from eeg_core.formats import FEATURE_DIM, record_id
from eeg_core.stages import STAGES

SEQUENCE_WEIGHTS = "sequence.safetensors"
NIGHT = "night"  # --context night: the encoder reads the whole night
DEFAULT_SEQUENCE = "gru"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class SequenceOutput(NamedTuple):
    """What a sequence encoder's forward returns."""

    features: torch.Tensor  # [B, T, D]: each epoch's feature, handed to the VLM
    logits: torch.Tensor  # [B, T, num_classes]: each epoch's stage


def register_sequence_encoder(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a class or factory ``builder(feature_dim=..., num_classes=..., **kw)`` under ``name``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"sequence encoder {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_sequence_encoders() -> list[str]:
    return sorted(_REGISTRY)


def sequence_import_path(name: str) -> str | None:
    """The Python module that registered ``name`` (kept in checkpoints, imported again as vision modules are)."""
    builder = _REGISTRY.get(name)
    return getattr(builder, "__module__", None) if builder is not None else None


def create_sequence_encoder(name: str, feature_dim: int = FEATURE_DIM, num_classes: int = len(STAGES),
                            import_path: str | None = None, where: str = "", **kw: Any) -> nn.Module:
    """Build a registered encoder. ``import_path`` (from a checkpoint) is imported first when ``name`` is not
    registered, under the vision registry's rule: this package's own modules, or ones the user imported."""
    if name not in _REGISTRY and import_path and import_path != "__main__":
        from vision_modules.registry import import_known_module

        import_known_module(import_path, f"sequence encoder {name!r}", where)
    if name not in _REGISTRY:
        raise FormatError(f"{where + ': ' if where else ''}unknown sequence encoder {name!r}; registered: "
                          f"{', '.join(list_sequence_encoders())}")
    return _REGISTRY[name](feature_dim=feature_dim, num_classes=num_classes, **kw)


def parse_context(value: str | int) -> int | str:
    """``--context``: 0 (no encoder), K > 0 epochs either side, or ``night``."""
    if isinstance(value, str) and value.strip().lower() == NIGHT:
        return NIGHT
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise FormatError(f"--context {value!r}: give a number of epochs either side (0: none) or 'night'") from None
    if k < 0:
        raise FormatError(f"--context {k}: give 0 or more epochs either side, or 'night'")
    return k


@register_sequence_encoder("gru")
class GRUEncoder(nn.Module):
    """Reduce each epoch's feature, read the run both ways with a GRU, add what it read back onto the feature."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = len(STAGES), hidden: int = 128,
                 layers: int = 1, dropout: float = 0.3):
        super().__init__()
        self.reduce = nn.Sequential(nn.LayerNorm(feature_dim), nn.Dropout(dropout), nn.Linear(feature_dim, hidden),
                                    nn.GELU())
        self.gru = nn.GRU(hidden + 1, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.expand = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, feature_dim))
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> SequenceOutput:
        flag = present.to(x.dtype)[..., None]
        h, _ = self.gru(torch.cat([self.reduce(x) * flag, flag], dim=-1))
        features = x + self.expand(h)
        return SequenceOutput(features, self.classifier(features))


class _DistanceAttention(nn.Module):
    """Multi-head self-attention with a learned bias per head and epoch distance (clipped at ``max_distance``);
    absent epochs are never attended to."""

    def __init__(self, dim: int, heads: int, max_distance: int, dropout: float):
        super().__init__()
        self.heads, self.max_distance, self.dropout = heads, max_distance, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.bias = nn.Embedding(2 * max_distance + 1, heads)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(t, device=x.device)
        distance = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        mask = self.bias(distance).permute(2, 0, 1)[None]  # [1, heads, T, T]
        mask = mask.masked_fill(~present[:, None, None, :], float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


@register_sequence_encoder("transformer")
class TransformerEncoder(nn.Module):
    """Pre-norm Transformer blocks over the reduced features; attention is biased by epoch distance (no absolute
    positions, so a model trained on runs reads a whole night)."""

    def __init__(self, feature_dim: int = FEATURE_DIM, num_classes: int = len(STAGES), hidden: int = 128,
                 layers: int = 2, heads: int = 4, max_distance: int = 32, dropout: float = 0.2):
        super().__init__()
        self.reduce = nn.Sequential(nn.LayerNorm(feature_dim), nn.Dropout(dropout), nn.Linear(feature_dim, hidden))
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(norm1=nn.LayerNorm(hidden), attn=_DistanceAttention(hidden, heads, max_distance, dropout),
                               norm2=nn.LayerNorm(hidden), mlp=nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(),
                                                                             nn.Linear(2 * hidden, hidden))))
            for _ in range(layers))
        self.expand = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, feature_dim))
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> SequenceOutput:
        h = self.reduce(x) * present.to(x.dtype)[..., None]
        for block in self.blocks:
            h = h + block["attn"](block["norm1"](h), present)
            h = h + block["mlp"](block["norm2"](h))
        features = x + self.expand(h)
        return SequenceOutput(features, self.classifier(features))


# -- where each epoch's neighbours are --------------------------------------------------------------------------

def night_keys(records: Sequence[dict], where: str) -> list[tuple[str, int]]:
    """``(night, epoch)`` of every record: the neighbours of a record are the records of its night."""
    keys = []
    for i, rec in enumerate(records):
        epoch = rec.get("epoch")
        night = rec.get("psg") or (f"{rec['subject']}/{rec['night']}" if "subject" in rec and "night" in rec else None)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or night is None:
            raise FormatError(f"{where}: record {record_id(rec)!r} (#{i}) has no 'epoch' and night ('psg', or "
                              "'subject' and 'night'): a sequence encoder needs them to find its neighbours")
        keys.append((str(night), epoch))
    seen: dict[tuple[str, int], int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            raise FormatError(f"{where}: records #{seen[key]} and #{i} are both epoch {key[1]} of night {key[0]!r}")
        seen[key] = i
    return keys


def night_rows(keys: Sequence[tuple[str, int]], rows: Sequence[int] | None = None) -> list[np.ndarray]:
    """Per night (in order of first appearance), its epochs from first to last as row numbers, -1 where no record
    is. ``rows``: only these records are present (a split's)."""
    rows = range(len(keys)) if rows is None else rows
    nights: dict[str, dict[int, int]] = {}
    for i in rows:
        night, epoch = keys[i]
        nights.setdefault(night, {})[epoch] = i
    out = []
    for epochs in nights.values():
        first, last = min(epochs), max(epochs)
        dense = np.full(last - first + 1, -1, dtype=np.int64)
        for epoch, i in epochs.items():
            dense[epoch - first] = i
        out.append(dense)
    return out


def window_index(keys: Sequence[tuple[str, int]], k: int) -> np.ndarray:
    """``[N, 2k+1]`` row numbers of epochs ``i-k .. i+k`` of the same night, -1 where absent."""
    where = {key: i for i, key in enumerate(keys)}
    return np.array([[where.get((night, epoch + j), -1) for j in range(-k, k + 1)] for night, epoch in keys],
                    dtype=np.int64).reshape(len(keys), 2 * k + 1)


def training_runs(nights: Sequence[np.ndarray], length: int, generator: torch.Generator) -> np.ndarray:
    """``[M, length]`` runs of consecutive epochs that tile every night from a random offset (each record in one
    run, -1 where absent), in random order: one pass of end-to-end training."""
    runs = []
    for dense in nights:
        offset = int(torch.randint(length, (1,), generator=generator))
        padded = np.concatenate([np.full(offset, -1), dense, np.full(-(offset + len(dense)) % length, -1)])
        runs += [r for r in padded.reshape(-1, length) if (r >= 0).any()]
    order = torch.randperm(len(runs), generator=generator).numpy()
    return np.stack([runs[i] for i in order]) if runs else np.zeros((0, length), dtype=np.int64)


def gather(features: torch.Tensor, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., D]`` rows of ``features`` [N, D] at ``index`` (zero where -1) and the presence mask."""
    idx = torch.from_numpy(np.asarray(index))
    present = idx >= 0
    return features[idx.clamp(min=0)] * present[..., None].to(features.dtype), present


@torch.no_grad()
def encode(encoder: nn.Module, features: torch.Tensor, keys: Sequence[tuple[str, int]], context: int | str,
           batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Each record's ``(feature [N, D], logits [N, C])`` from the image features [N, D] of the records ``keys``:
    the encoder's output at the centre of the window ``i-K .. i+K``, or, for ``night``, over the whole night."""
    encoder.eval()
    out_f = torch.empty_like(features)
    out_l: torch.Tensor | None = None
    if context == NIGHT:
        for dense in night_rows(keys):
            x, present = gather(features, dense[None])
            f, logits = encoder(x, present)
            rows = torch.from_numpy(dense[dense >= 0])
            out_l = logits.new_empty(len(features), logits.shape[-1]) if out_l is None else out_l
            out_f[rows], out_l[rows] = f[0][present[0]], logits[0][present[0]]
        return out_f, out_l
    index = window_index(keys, int(context))
    for s in range(0, len(index), batch):
        x, present = gather(features, index[s : s + batch])
        f, logits = encoder(x, present)
        out_l = logits.new_empty(len(features), logits.shape[-1]) if out_l is None else out_l
        out_f[s : s + len(x)], out_l[s : s + len(x)] = f[:, int(context)], logits[:, int(context)]
    return out_f, out_l


def run_length(context: int | str, batch_size: int) -> int:
    """How many consecutive epochs one training run holds: the window (``2K+1``), or a batch for ``night``."""
    return max(2, batch_size) if context == NIGHT else 2 * int(context) + 1


def describe(context: int | str) -> str:
    return "the whole night" if context == NIGHT else f"epochs i-{context}..i+{context}"

