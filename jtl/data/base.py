"""What every jtl source is: the `Source` base class and the split names it may have.

A source is what `grain.MapDataset.source` reads: `len(src)` and
`src[i] -> {"image": uint8 HxWxC, "label": int}`. Every source also carries
`labels` (all labels in index order, so subsets and k-shot draws never decode
an image), `class_names`, `num_classes` and `name`.

The concrete sources (sources.py, folder.py, shift.py, splits.py) import this
module; sources.py's `load_source` picks one by name.

>>> check_split("digits", "val")
Traceback (most recent call last):
ValueError: digits: unknown split 'val'; expected one of ('train', 'test')
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "test")


def check_split(name: str, split: str) -> None:
  """Raises a ValueError naming `name` unless `split` is one of SPLITS."""
  if split not in SPLITS:
    raise ValueError(f"{name}: unknown split {split!r}; expected one of {SPLITS}")


class Source:
  """Base of jtl sources: subclasses set `name`, `split`, `labels`, `class_names`."""

  name: str
  split: str | None
  labels: np.ndarray
  class_names: list[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.labels)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}({self.name!r}, {len(self)} examples, "
            f"{self.num_classes} classes)")
