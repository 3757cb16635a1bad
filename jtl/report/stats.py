"""The report's statistics: Student-t intervals over seeds, paired differences, the choice of
a hyperparameter on validation accuracy, and the words an interval allows.

>>> mean_ci([0.80, 0.82, 0.84])
(0.82, 0.0496..., 0.8696...)
>>> verdict("l2_sp", "scratch", 0.01, 0.05, 3)
'l2_sp beats scratch'
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Sequence

METRIC = "test_accuracy"
SELECT_ON = "val_accuracy"


def mean_ci(values: Sequence[float], level: float = 0.95
            ) -> tuple[float, float | None, float | None]:
  """Mean and the two ends of its Student-t interval; (mean, None, None) for one value."""
  from scipy import stats
  values = [float(v) for v in values]
  m = statistics.fmean(values)
  if len(values) < 2:
    return m, None, None
  t = stats.t.ppf(0.5 + level / 2, len(values) - 1)
  half = t * statistics.stdev(values) / math.sqrt(len(values))
  return m, m - half, m + half


def paired(a_rows: list[dict], b_rows: list[dict], metric: str = METRIC) -> dict:
  """a - b on the seeds both have: per-seed differences, mean and 95% CI."""
  a = {r["seed"]: r[metric] for r in a_rows}
  b = {r["seed"]: r[metric] for r in b_rows}
  common = sorted(set(a) & set(b))
  diffs = [a[s] - b[s] for s in common]
  m, lo, hi = mean_ci(diffs) if diffs else (float("nan"), None, None)
  return {"seeds": common, "diffs": diffs, "mean": m, "lo": lo, "hi": hi}


def verdict(a: str, b: str, lo: float | None, hi: float | None, n: int) -> str:
  """The words a paired difference a - b allows."""
  if lo is None:
    return f"no interval ({n} seed); no difference can be claimed"
  if lo > 0:
    return f"{a} beats {b}"
  if hi < 0:
    return f"{b} beats {a}"
  return "no difference detected"


def group_key(row: dict, axes: Sequence[str]) -> tuple:
  """The row's values on `axes`, in order (None where it has none)."""
  return tuple(row.get(a) for a in axes)


def mean_of(rows: list[dict], key: str) -> float | None:
  """The mean of `key` over `rows`; None when a row lacks it."""
  vals = [r.get(key) for r in rows]
  return statistics.fmean(vals) if vals and None not in vals else None


def select(rows: list[dict], spec: dict) -> dict:
  """(by..., compared) -> {"choice": selected value or None, "rows": that choice's rows}.

  The choice maximizes the mean of spec["select_on"] (validation accuracy unless the
  study names another result) over seeds; ties: first declared.
  """
  on = spec.get("select_on") or SELECT_ON
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    choice = r.get(spec["select"]) if spec.get("select") else None
    groups[group_key(r, [*spec["by"], spec["compare"]])][choice].append(r)
  out = {}
  for key, by_choice in groups.items():
    def score(choice):
      vals = [r.get(on) for r in by_choice[choice]]
      return statistics.fmean(vals) if vals and None not in vals else -1.0
    best = max(by_choice, key=score)
    out[key] = {"choice": best, "rows": by_choice[best],
                "val": {c: score(c) for c in by_choice}}
  return out


def stage_mean(cells: list[tuple[dict, tuple[str, dict]]], kind: str, stage: str
               ) -> float | None:
  """The mean over `cells` ((row, (folder, diagnostics)) pairs) of diagnostics[kind][stage],
  leaving out a cell that does not report it; None when none does."""
  values = [d[kind][stage] for _, (_, d) in cells if stage in d.get(kind, {})]
  return statistics.fmean(values) if values else None
