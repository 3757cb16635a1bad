"""jtl.data: datasets by name, what a run trains on, and host input pipelines."""

from jtl.data.folder import SKIPPED_FILE, FolderSource
from jtl.data.pipeline import eval_batches, num_eval_batches, preprocess, random_crop_flip, train_dataset
from jtl.data.sources import ArraySource, Source, TfdsSource, load_source, read_idx
from jtl.data.splits import Subset, carve_validation, class_subset, k_shot, make_splits

__all__ = [
  "SKIPPED_FILE", "ArraySource", "FolderSource", "Source", "Subset", "TfdsSource",
  "carve_validation", "class_subset", "eval_batches", "k_shot", "load_source", "make_splits",
  "num_eval_batches", "preprocess", "random_crop_flip", "read_idx", "train_dataset",
]
