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


def carve(labels: np.ndarray, fraction: float, seed, class_names=None,
          field: str = "data.val_fraction") -> tuple[np.ndarray, np.ndarray]:
  """Splits positions into disjoint (kept, carved) indices, `fraction` of each class carved.

  Each class of n examples gives round(n * fraction) of them, at least 1 and at most
  n - 1, drawn by a permutation seeded from `seed` and the class, so the carve of one
  class does not depend on the others. Deterministic for a given seed.

  >>> kept, carved = carve(np.array([0, 0, 0, 0, 1, 1]), 0.25, seed=0)
  >>> len(kept), len(carved)
  (4, 2)
  """
  labels = np.asarray(labels)
  picked = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    if len(idx) < 2:
      name = repr(class_names[c]) if class_names is not None else int(c)
      raise ValueError(f"class {name} has {len(idx)} example; expected at least 2 so that "
                       f"{field}={fraction} leaves one for training; add images to it or "
                       "leave the class out (data.classes)")
    n = min(max(1, round(len(idx) * fraction)), len(idx) - 1)
    seq = [int(s) for s in np.atleast_1d(seed)] + [int(c)]
    picked.append(np.random.default_rng(seq).permutation(idx)[:n])
  carved = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
  return np.setdiff1d(np.arange(len(labels)), carved), carved


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
