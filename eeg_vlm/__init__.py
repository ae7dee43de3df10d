"""EEG-VLM: the shared data formats and the ``eeg-vlm`` command line that ties the pipeline together."""
