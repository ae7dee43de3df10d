"""The core every other part of EEG-VLM stands on: the data formats and the facts they share.

It imports nothing from the rest of the project (``tests/test_architecture.py`` checks it):

- ``errors``   ``FormatError``, the one-line error for bad input;
- ``stages``   the AASM stages and the 30-s epoch;
- ``answer``   the prompt layout and the answer line (``Sleep stage: N2``), written and parsed in one place;
- ``layout``   the names of the files in ``sleep_data/`` and in a vision-module checkpoint;
- ``atomic``   atomic writes (temporary file or folder, then rename): the one folder swap;
- ``formats``  train records, eval questions, answers (their metadata and ids), features, render settings;
- ``cli``      how every command runs: plain help, one line and exit status 2 on bad input.
"""
