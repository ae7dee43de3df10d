"""The EEG side, in the order the data flows: ``recording`` (EDF nights, channel names, hypnograms) and
``signal`` (filters, epochs, bands) below; ``images`` (epoch images, chain-of-thought, records and questions),
``synthetic`` (calibrated synthetic nights) and ``baselines`` (classic stagers, YASA's) on them; ``evaluation``
(metrics, plots, sleep statistics, the score command) on top."""
