"""Nucleus segmentation (2018 Data Science Bowl, stage 1 train layout)."""
