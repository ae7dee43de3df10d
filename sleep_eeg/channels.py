"""PSG channel names: the default EEG channel and what a channel's label says it records."""
from __future__ import annotations

DEFAULT_CHANNEL = "EEG Fpz-Cz"


def channel_role(label: str) -> str:
    """``eog`` or ``emg`` when the channel's name says so, else ``eeg``."""
    upper = label.upper()
    return "eog" if "EOG" in upper else "emg" if "EMG" in upper else "eeg"
