"""Synthetic stick figures with 7 keypoints (Keypoint R-CNN demo and tests)."""
