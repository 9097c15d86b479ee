"""Datasets and the tf.data input pipeline."""

from mrcnn.data.dataset import Dataset

__all__ = ["Dataset"]
