"""Answers to scores: metrics, plots, AASM sleep statistics and the score command."""
