"""Context: a small temporal head that makes each epoch's feature see its neighbours in the same night.

Sleep scorers read the epochs around the one they score (a REM epoch after REM, an N1 epoch after wake).
With ``eeg-vlm vision train --context K`` the module gains, after its image training, a head over the
per-epoch features of epochs ``i-K .. i+K``:

    per-epoch feature [D] -> LayerNorm, Linear(D, hidden), GELU      (each of the 2K+1 epochs, shared weights)
    2K+1 reduced vectors + a "present" flag each -> Linear -> GELU  -> the context feature [D] of epoch i
    context feature -> Linear -> stage logits

The interface stays one ``[1, D]`` vector per epoch. Neighbours are the records of the same night (the
record's ``psg``, else its ``subject`` and ``night``) at epoch ``i+j``; an epoch that is not among the
records (dropped ``?`` / movement epochs, trimmed wake, the night's edges) is absent: a zero vector with
its flag off. So a feature never reads across a night boundary, nor across a split boundary (train
records and eval questions are separate files, extracted separately).

The head is trained on the module's own features of the training records (frozen image model), with
the same subject-wise validation split and class weighting as the image training; the best epoch by
validation macro-F1 is kept in ``context_head.safetensors`` beside the module.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from eeg_core.errors import FormatError
from eeg_core.formats import record_id

HEAD_NAME = "context_head.safetensors"


class ContextHead(nn.Module):
    def __init__(self, feature_dim: int, k: int, num_classes: int, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.k, self.hidden = k, hidden
        self.reduce = nn.Sequential(nn.LayerNorm(feature_dim), nn.Dropout(dropout), nn.Linear(feature_dim, hidden),
                                    nn.GELU())
        self.mix = nn.Sequential(nn.Dropout(dropout), nn.Linear((2 * k + 1) * (hidden + 1), feature_dim), nn.GELU())
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, windows: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``windows`` [B, 2K+1, D] (absent epochs zero), ``present`` [B, 2K+1] -> (features [B, D], logits)."""
        flag = present.to(windows.dtype)[..., None]
        h = self.reduce(windows) * flag
        feature = self.mix(torch.cat([h, flag], dim=-1).flatten(1))
        return feature, self.classifier(feature)


def night_keys(records: Sequence[dict], where: str) -> list[tuple[str, int]]:
    """``(night, epoch)`` of every record: the neighbours of a record are the records of its night."""
    keys = []
    for i, rec in enumerate(records):
        epoch = rec.get("epoch")
        night = rec.get("psg") or (f"{rec['subject']}/{rec['night']}" if "subject" in rec and "night" in rec else None)
        if not isinstance(epoch, int) or night is None:
            raise FormatError(f"{where}: record {record_id(rec)!r} (#{i}) has no 'epoch' and night ('psg', or "
                              "'subject' and 'night'): a context head needs them to find its neighbours")
        keys.append((str(night), epoch))
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise FormatError(f"{where}: two records are epoch {dup[1]} of night {dup[0]!r}")
    return keys


def neighbour_index(keys: Sequence[tuple[str, int]], k: int) -> np.ndarray:
    """``[N, 2k+1]`` row numbers of epochs ``i-k .. i+k`` of the same night, -1 where absent."""
    where = {key: i for i, key in enumerate(keys)}
    return np.array([[where.get((night, epoch + j), -1) for j in range(-k, k + 1)] for night, epoch in keys],
                    dtype=np.int64).reshape(len(keys), 2 * k + 1)


def windows(features: torch.Tensor, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``[N, 2k+1, D]`` windows of ``features`` [N, D] and their presence mask."""
    idx = torch.from_numpy(index)
    present = idx >= 0
    gathered = features[idx.clamp(min=0)] * present[..., None].to(features.dtype)
    return gathered, present


@torch.no_grad()
def apply_head(head: ContextHead, features: torch.Tensor, index: np.ndarray, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Context features [N, D] and logits [N, C] of per-epoch features [N, D]."""
    head.eval()
    out_f, out_l = [], []
    for s in range(0, len(index), batch):
        w, p = windows(features, index[s : s + batch])
        f, logits = head(w, p)
        out_f.append(f)
        out_l.append(logits)
    return torch.cat(out_f), torch.cat(out_l)


def train_head(
    features: torch.Tensor,
    labels: np.ndarray,
    index: np.ndarray,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    k: int,
    num_classes: int,
    epochs: int = 40,
    lr: float = 1e-3,
    seed: int = 0,
) -> tuple[ContextHead, dict[str, Any]]:
    """Fit a :class:`ContextHead` on the records ``train_idx`` (their windows may hold any record's feature:
    neighbours are the same night's, and a night lies on one side of the subject split); keep the epoch with
    the best macro-F1 on ``val_idx`` (the last epoch without validation records)."""
    from sklearn.metrics import f1_score  # training only: extraction and staging start faster without it
    from sklearn.utils.class_weight import compute_class_weight

    torch.manual_seed(seed)
    head = ContextHead(features.shape[1], k, num_classes)
    y = torch.as_tensor(labels, dtype=torch.long)
    tr = np.asarray(train_idx)
    present = np.unique(labels[tr])
    weights = np.zeros(num_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels[tr])
    criterion = nn.CrossEntropyLoss(weight=torch.from_numpy(weights))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    best_state, best = None, None
    for epoch in range(epochs):
        head.train()
        order = tr[torch.randperm(len(tr), generator=generator).numpy()]
        for s in range(0, len(order), 128):
            rows = order[s : s + 128]
            w, p = windows(features, index[rows])
            _, logits = head(w, p)
            loss = criterion(logits, y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if len(val_idx):
            _, logits = apply_head(head, features, index[np.asarray(val_idx)])
            pred = logits.argmax(1).numpy()
            truth = labels[np.asarray(val_idx)]
            metrics = {"accuracy": float((pred == truth).mean()),
                       "macro_f1": float(f1_score(truth, pred, average="macro", zero_division=0)), "epoch": epoch + 1}
        else:
            metrics = {"accuracy": None, "macro_f1": None, "epoch": epoch + 1}
        if best is None or (metrics["macro_f1"] or 0.0) >= (best["macro_f1"] or 0.0):
            best = metrics
            best_state = {name: t.detach().clone() for name, t in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval(), best
