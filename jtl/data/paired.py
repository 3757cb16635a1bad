"""Paired batches for domain adaptation: labeled source images plus unlabeled target images.

Each side has its own preprocessing and its own seeded order; the pair is one grain
iterator whose state (both positions) is checkpointed and resumed like a single one.
The target side reads images only: `Unlabeled` hides the target's labels, so they can
never reach a training step.

 it = iter(paired_dataset(labeled_ds, train_dataset(Unlabeled(target), labels=False, ...)))
 next(it)   # {"image": [B, ...], "label": [B], "target_image": [B_t, ...]}
"""

from __future__ import annotations

import grain
import numpy as np

TARGET_IMAGE = "target_image"


class Unlabeled:
  """The images of `source` and nothing else: `source[i]` -> {"image"}.

  >>> Unlabeled(src)[0].keys()   # doctest: +SKIP
  dict_keys(['image'])
  """

  def __init__(self, source):
    self._source = source
    self.name = f"{source.name} (unlabeled)"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    return {"image": self._source[i]["image"]}


def paired_dataset(labeled: grain.IterDataset, unlabeled: grain.IterDataset) -> grain.IterDataset:
  """Zips two batch streams into {"image", "label", "target_image"} batches."""
  def merge(pair):
    batch, target = pair
    return {**batch, TARGET_IMAGE: target["image"]}
  return grain.experimental.ZipIterDataset([labeled, unlabeled]).map(merge)


def target_seed(seed: int) -> int:
  """The target stream's seed: derived from the run's, independent of the source stream's.

  >>> target_seed(0) == target_seed(0) != target_seed(1)
  True
  """
  return int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])
