"""LLaVA-1.5, patched for EEG sleep staging with high-level features from a specialized vision module."""
