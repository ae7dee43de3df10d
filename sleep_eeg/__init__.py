"""The EEG side: EDF nights to epoch images and LLaVA records, synthetic nights, and sleep-staging scores."""
