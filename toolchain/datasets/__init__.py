"""Datasets for the toolchain: the torch-free index (``runtime.datasets``) and batches of preprocessed images."""

from clip_debias.runtime.datasets import FORMATS, SPLITS, DatasetIndex, ImageRecord, load_index
from clip_debias.toolchain.datasets.loader import Batch, BatchIterator, eval_transform, iter_batches

__all__ = ["FORMATS", "SPLITS", "DatasetIndex", "ImageRecord", "load_index", "Batch", "BatchIterator", "eval_transform",
           "iter_batches"]
