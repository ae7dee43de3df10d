"""Classic sleep stagers beside the VLM: band-power and feature models, and YASA's pretrained stager."""
