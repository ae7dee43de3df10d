"""EEG-VLM: the ``eeg-vlm`` command line that ties the pipeline together (the top layer; see docs/architecture.md).

``from eeg_vlm import stage_night`` stages a whole EDF night (see ``eeg_vlm.stage``); it is imported on first use,
so that importing ``eeg_vlm`` stays light.
"""


def __getattr__(name: str):
    if name in ("stage_night", "StageOptions", "Stager"):
        from eeg_vlm import stage

        return getattr(stage, name)
    if name == "StagedNight":
        from eeg_vlm.staged import StagedNight

        return StagedNight
    raise AttributeError(f"module 'eeg_vlm' has no attribute {name!r}")
