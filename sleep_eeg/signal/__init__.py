"""Signal processing shared by images, baselines and synthetic nights: filters, 30-s epochs, EEG bands."""
