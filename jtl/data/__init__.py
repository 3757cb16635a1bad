"""jtl.data: datasets by name, what a run trains on, and host input pipelines."""

from jtl.data.base import Source
from jtl.data.folder import SKIPPED_FILE, SPLIT_FILE, FolderSource, write_split_file
from jtl.data.paired import TARGET_IMAGE, Unlabeled, paired_dataset, target_seed
from jtl.data.pipeline import (eval_batches, num_eval_batches, preprocess, random_crop_flip,
                               train_dataset)
from jtl.data.sources import ArraySource, TfdsSource, image_shape, load_source, read_idx
from jtl.data.shift import CORRUPTIONS, ShiftedSource, corrupt, parse_shift
from jtl.data.splits import Subset, carve_validation, class_subset, k_shot, make_splits

__all__ = [
  "CORRUPTIONS", "SKIPPED_FILE", "SPLIT_FILE", "TARGET_IMAGE", "ArraySource", "FolderSource",
  "ShiftedSource", "Source", "Subset", "TfdsSource", "carve_validation", "class_subset",
  "corrupt", "eval_batches", "image_shape", "k_shot", "load_source", "make_splits",
  "num_eval_batches", "paired_dataset", "parse_shift", "preprocess", "random_crop_flip", "read_idx", "target_seed",
  "train_dataset", "Unlabeled", "write_split_file",
]
