"""Synthetic Sleep-EDF-style nights calibrated on real figures, and the real-data judge's features."""
