"""COCO instance segmentation with the paper's 1x schedule."""
