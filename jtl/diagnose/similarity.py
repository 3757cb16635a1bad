"""What training did to each stage: weight drift from the source and linear CKA.

Drift is ‖θ − θ_source‖ / ‖θ_source‖ over a stage's loaded parameters: exactly 0 for
a stage the strategy froze. Linear CKA (Kornblith et al. 2019) compares two sets of
features of the same examples: 1 for identical features, unchanged by isotropic
scaling and orthogonal transforms, near 0 for unrelated ones.

>>> weight_drift(trained["params"], source["params"])   # doctest: +SKIP
{'stem': 0.0, 'stage1': 0.0, 'stage2': 0.0, 'stage3': 0.041, 'stage4': 0.063}
>>> linear_cka(x, 3.0 * x)                              # doctest: +SKIP
1.0
"""

from __future__ import annotations

import re
from typing import Sequence

import flax.traverse_util as tu
import numpy as np

from jtl import models


def linear_cka(x, y) -> float:
  """Linear CKA between features `x` (n, ...) and `y` (n, ...) of the same n examples.

  Computed from the n x n Gram matrices, so wide convolutional features (flattened
  here) cost n² d rather than d²."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  if len(x) != len(y):
    raise ValueError(f"linear_cka needs features of the same examples; got {len(x)} and "
                     f"{len(y)} rows.")
  x, y = x - x.mean(0), y - y.mean(0)
  kx, ky = x @ x.T, y @ y.T
  # ‖yᵀx‖²_F / (‖xᵀx‖_F ‖yᵀy‖_F), each as a sum over the Gram matrices.
  denom = np.sqrt((kx * kx).sum() * (ky * ky).sum())
  return float((kx * ky).sum() / denom) if denom > 0 else float("nan")


def weight_drift(params, source, skip: Sequence[str] = ()) -> dict[str, float]:
  """Per stage (stem, stage1..stage4, head), ‖θ − θ_source‖ / ‖θ_source‖ over the
  parameters both trees hold with the same shape. `skip`: regexes of paths that
  were not loaded from the source (config.dont_load, e.g. a re-initialized head),
  left out. A stage with nothing left to compare is absent."""
  rx = [re.compile(p) for p in skip]
  flat = tu.flatten_dict(params, sep="/")
  flat_source = tu.flatten_dict(source, sep="/")
  diff, norm = {}, {}
  for path, value in flat.items():
    ref = flat_source.get(path)
    if ref is None or np.shape(ref) != np.shape(value) or any(r.fullmatch(path) for r in rx):
      continue
    stage = models.stage_of(path)
    delta = np.asarray(value, np.float64) - np.asarray(ref, np.float64)
    diff[stage] = diff.get(stage, 0.0) + float((delta * delta).sum())
    norm[stage] = norm.get(stage, 0.0) + float(np.square(np.asarray(ref, np.float64)).sum())
  order = (*models.STAGES, "head")
  # A stage whose source weights are all zero has no scale: any change is infinite drift.
  return {s: float(np.sqrt(diff[s] / norm[s]) if norm[s] else (np.inf if diff[s] else 0.0))
          for s in order if s in diff}
