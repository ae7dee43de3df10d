"""sleep_eeg.evaluation.statistics against a hypnogram computed by hand."""
from __future__ import annotations

import pytest

from eeg_core.errors import FormatError
from sleep_eeg.evaluation.statistics import sleep_statistics

#            0    1    2     3     4     5    6     7     8     9      10     11   12    13   14
NIGHT = ["W", "W", "N1", "N2", "N2", "W", "N2", "N3", "N3", "REM", "REM", "W", "N2", "W", "W"]


def test_statistics_match_a_hand_computation():
    s = sleep_statistics(NIGHT)
    # 15 epochs of 0.5 min; sleep onset at epoch 2, last sleep epoch 12 (SPT = epochs 2..12)
    assert s["TIB"] == 7.5 and s["SOL"] == 1.0 and s["SPT"] == 5.5
    assert s["TST"] == 4.5  # 9 sleep epochs
    assert s["WASO"] == 1.0  # epochs 5 and 11
    assert s["SE"] == pytest.approx(60.0)
    assert s["REM_latency"] == 3.5  # epoch 9, 7 epochs after onset
    assert (s["W"], s["N1"], s["N2"], s["N3"], s["REM"]) == (3.0, 0.5, 2.0, 1.0, 1.0)
    assert s["N1_pct"] == pytest.approx(100 / 9) and s["N2_pct"] == pytest.approx(400 / 9)
    assert s["N3_pct"] == pytest.approx(200 / 9) and s["REM_pct"] == pytest.approx(200 / 9)
    assert s["awakenings"] == 2
    # N1>N2, N2>W, W>N2, N2>N3, N3>REM, REM>W, W>N2
    assert s["stage_shifts"] == 7
    assert s["unscored"] == 0 and s["epochs"] == 15


def test_lights_unscored_epochs_and_no_sleep():
    s = sleep_statistics(NIGHT, lights_off=1, lights_on=14)
    assert (s["TIB"], s["SOL"], s["SPT"], s["TST"]) == (6.5, 0.5, 5.5, 4.5)
    gap = NIGHT[:7] + [None] + NIGHT[8:]  # epoch 7 (N3) without a stage
    s = sleep_statistics(gap)
    assert (s["TST"], s["N3"], s["unscored"], s["SPT"]) == (4.0, 0.5, 0.5, 5.5)
    assert s["stage_shifts"] == 7  # N2, (none), N3: still one shift
    awake = sleep_statistics(["W"] * 4)
    assert awake["TST"] == 0 and awake["SOL"] is None and awake["REM_latency"] is None and awake["N2_pct"] is None
    assert awake["SE"] == 0.0
    with pytest.raises(FormatError, match="epoch 1: stage 'S2'"):
        sleep_statistics(["W", "S2"])
    with pytest.raises(FormatError, match="lights off"):
        sleep_statistics(NIGHT, lights_off=10, lights_on=3)
