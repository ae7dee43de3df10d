"""Sequence encoders (vision_modules.sequence): the runs they train on, the windows they read, their registry."""
import numpy as np
import pytest
import torch
from torch import nn

from eeg_core.errors import FormatError
from vision_modules.sequence import (
    SequenceOutput,
    create_sequence_encoder,
    encode,
    list_sequence_encoders,
    night_keys,
    night_rows,
    parse_context,
    register_sequence_encoder,
    training_runs,
    window_index,
)


def keys_of(nights: dict[str, list[int]]) -> list[tuple[str, int]]:
    """Records of several nights, interleaved in file order (as eval questions may be)."""
    keys = [(night, e) for night, epochs in nights.items() for e in epochs]
    return keys[::2] + keys[1::2]


def test_training_runs_hold_every_record_once_each_within_one_night_in_epoch_order():
    keys = keys_of({"A": list(range(0, 50)), "B": [0, 1, 2, 5, 6, 7, 8], "C": list(range(3, 40))})
    train = [i for i, (night, _) in enumerate(keys) if night != "C"]  # C lies on the other side of the split
    for seed in range(3):
        runs = training_runs(night_rows(keys, train), 8, torch.Generator().manual_seed(seed))
        rows = runs[runs >= 0]
        assert sorted(rows.tolist()) == sorted(train)  # each training record once, no other
        for run in runs:
            present = run[run >= 0]
            assert len({keys[i][0] for i in present}) == 1  # one night per run
            epochs = [keys[i][1] for i in present]
            assert epochs == sorted(epochs) and epochs[-1] - epochs[0] < 8  # consecutive epochs, in order
            positions = np.flatnonzero(run >= 0)
            assert (np.diff(positions) == np.diff(epochs)).all()  # a dropped epoch is a gap, not a shift
    a = training_runs(night_rows(keys, train), 8, torch.Generator().manual_seed(0))
    b = training_runs(night_rows(keys, train), 8, torch.Generator().manual_seed(1))
    assert not np.array_equal(a, b)  # the tiling and the order change from pass to pass


def test_windows_stop_at_the_night_and_at_missing_epochs():
    keys = [("A", 0), ("A", 1), ("A", 3), ("B", 2)]
    np.testing.assert_array_equal(window_index(keys, 1), [[-1, 0, 1], [0, 1, -1], [-1, 2, -1], [-1, 3, -1]])
    with pytest.raises(FormatError, match=r"q.json: records #0 and #2 are both epoch 4 of night 'x.edf'"):
        night_keys([{"id": "a", "psg": "x.edf", "epoch": 4}, {"id": "b", "psg": "x.edf", "epoch": 5},
                    {"id": "c", "psg": "x.edf", "epoch": 4}], "q.json")


@pytest.mark.parametrize("name", ["gru", "transformer"])
def test_an_absent_epoch_is_nothing_and_a_run_reads_no_other_night(name):
    torch.manual_seed(0)
    encoder = create_sequence_encoder(name, feature_dim=16, num_classes=5).eval()
    x = torch.randn(1, 9, 16)
    present = torch.ones(1, 9, dtype=torch.bool)
    present[0, 4] = False
    with torch.no_grad():
        base = encoder(x, present)
        other = x.clone()
        other[0, 4] = 100.0  # whatever sits in an absent slot is never read by another epoch
        moved = encoder(other, present)
    torch.testing.assert_close(base.features[present], moved.features[present])
    torch.testing.assert_close(base.logits[present], moved.logits[present])
    feats = torch.randn(30, 16)
    keys = [("A", e) for e in range(15)] + [("B", e) for e in range(15)]
    for context in (3, "night"):
        f, logits = encode(encoder, feats, keys, context)
        changed = feats.clone()
        changed[20] += 1.0  # night B only
        g, _ = encode(encoder, changed, keys, context)
        torch.testing.assert_close(f[:15], g[:15])
        assert not torch.allclose(f[15:], g[15:]) and logits.shape == (30, 5)


def test_context_values_and_the_registry():
    assert parse_context("night") == "night" and parse_context("10") == 10 and parse_context(0) == 0
    for bad in ("-1", "all"):
        with pytest.raises(FormatError, match="--context"):
            parse_context(bad)
    assert {"gru", "transformer"} <= set(list_sequence_encoders())
    with pytest.raises(FormatError, match=r"unknown sequence encoder 'nope'; registered: .*gru"):
        create_sequence_encoder("nope")

    @register_sequence_encoder("test_mean_pool")
    class MeanPool(nn.Module):
        def __init__(self, feature_dim=1024, num_classes=5):
            super().__init__()
            self.classifier = nn.Linear(feature_dim, num_classes)

        def forward(self, x, present):
            mean = (x.sum(1, keepdim=True) / present.sum(1, keepdim=True)[..., None]).expand_as(x)
            return SequenceOutput(mean, self.classifier(mean))

    try:
        feats = torch.randn(6, 8)
        keys = [("A", e) for e in range(6)]
        f, _ = encode(create_sequence_encoder("test_mean_pool", feature_dim=8), feats, keys, "night")
        torch.testing.assert_close(f, feats.mean(0, keepdim=True).expand(6, 8))
    finally:
        from vision_modules import sequence

        sequence._REGISTRY.pop("test_mean_pool")
