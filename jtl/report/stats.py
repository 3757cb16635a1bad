"""The report's statistics: Student-t intervals over seeds, paired differences, the choice of
a hyperparameter on validation accuracy, and the words a family of differences allows.

A table's paired differences are one family: each gets a paired t-test's p-value, Holm's
step-down adjustment over the family, and the words "A beats B" only where the adjusted
p-value is below 0.05. "Indistinguishable" is said only from an equivalence test (TOST)
against a margin the study declares; otherwise "no difference detected".

>>> mean_ci([0.80, 0.82, 0.84])
(0.82, 0.0496..., 0.8696...)
>>> holm([0.01, 0.04, 0.03])
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Any, Sequence

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


def paired_p(diffs: Sequence[float]) -> float | None:
  """Two-sided p-value of a paired t-test that the mean difference is 0 (None for < 2)."""
  from scipy import stats
  if len(diffs) < 2:
    return None
  if statistics.stdev(diffs) == 0:
    return 0.0 if statistics.fmean(diffs) != 0 else 1.0
  return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjustment of one family's p-values (family-wise error control),
  in the input order: the k-th smallest is multiplied by (m - k + 1), made monotone, capped at 1."""
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  adjusted, running = [0.0] * m, 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    adjusted[i] = running
  return adjusted


def tost_p(diffs: Sequence[float], margin: float) -> float | None:
  """p-value of two one-sided t-tests that the mean difference lies inside ±margin (Schuirmann's
  TOST): small means "equivalent within the margin". None for fewer than 2 seeds."""
  from scipy import stats
  if len(diffs) < 2:
    return None
  n, m = len(diffs), statistics.fmean(diffs)
  se = statistics.stdev(diffs) / math.sqrt(n)
  if se == 0:
    return 0.0 if abs(m) < margin else 1.0
  lower = stats.t.sf((m + margin) / se, n - 1)    # H0: mean <= -margin.
  upper = stats.t.cdf((m - margin) / se, n - 1)   # H0: mean >= +margin.
  return float(max(lower, upper))


def family_verdicts(diffs: list[dict], names: Sequence[tuple[str, str]], alpha: float = 0.05,
                    margin: float | None = None) -> None:
  """Sets p, p_holm, tost_p (with a margin) and verdict on each of one family's paired
  differences (records of `paired`); `names` holds each record's (a, b)."""
  ps = [paired_p(d["diffs"]) for d in diffs]
  tested = [i for i, p in enumerate(ps) if p is not None]
  adjusted = dict(zip(tested, holm([ps[i] for i in tested])))
  equivalent = {}
  if margin:
    tosts = {i: tost_p(diffs[i]["diffs"], margin) for i in tested}
    equivalent = dict(zip(tested, holm([tosts[i] for i in tested])))
  for i, (d, (a, b)) in enumerate(zip(diffs, names)):
    d["p"], d["p_holm"] = ps[i], adjusted.get(i)
    d["tost_p_holm"] = equivalent.get(i)
    d["verdict"] = verdict(a, b, d["mean"], d["p_holm"], len(d["diffs"]), alpha=alpha,
                           equivalence_p=d["tost_p_holm"], margin=margin)


def verdict(a: str, b: str, mean: float, p_adjusted: float | None, n: int, *,
            alpha: float = 0.05, equivalence_p: float | None = None,
            margin: float | None = None) -> str:
  """The words a paired difference a - b allows, from its family-adjusted p-value (and its
  family-adjusted TOST p-value against ±margin, if the study declares a margin)."""
  if p_adjusted is None:
    return f"no interval ({n} seed); no difference can be claimed"
  if p_adjusted < alpha:
    return f"{a} beats {b}" if mean > 0 else f"{b} beats {a}"
  if equivalence_p is not None and equivalence_p < alpha:
    return f"indistinguishable within ±{100 * margin:.1f} points (TOST)"
  return "no difference detected"


def interval_verdict(a: str, b: str, lo: float | None, hi: float | None, n: int) -> str:
  """The words one paired interval allows taken alone (no family adjustment)."""
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


def check_select_on(on: str) -> None:
  """A choice is made on validation, never on a test result."""
  if "test" in on.split("_"):
    raise ValueError(f"report select_on={on!r} chooses on a test result; choose on a "
                     "validation result (e.g. val_accuracy or target_val_accuracy).")


def choose(rows: Sequence[dict], axis: str | None, on: str = SELECT_ON) -> tuple[Any, dict]:
  """(the value of `axis` whose rows have the best mean `on`, each value's mean): the one
  rule by which a report selects and a sweep's `Tuned` field chooses. Ties go to the value
  met first; a value with a missing result scores -1."""
  check_select_on(on)
  by_value = {}
  for r in rows:
    by_value.setdefault(r.get(axis) if axis else None, []).append(r.get(on))
  means = {v: statistics.fmean(xs) if None not in xs else -1.0 for v, xs in by_value.items()}
  return max(means, key=means.get), means


def select(rows: list[dict], spec: dict) -> dict:
  """(by..., compared) -> {"choice": selected value or None, "rows": that choice's rows,
  "val": each candidate's mean, "edge": whether the choice is the grid's lowest or highest}.

  The choice maximizes the mean of spec["select_on"] (validation accuracy unless the
  study names another result) over seeds (`choose`). With spec["tune_seeds"], the choice is
  made on those seeds' rows only and "rows" holds the other seeds' rows (the reporting
  seeds), so no seed both tunes and reports.
  """
  on = spec.get("select_on") or SELECT_ON
  tune = set(spec.get("tune_seeds") or ())
  groups = collections.defaultdict(list)
  for r in rows:
    groups[group_key(r, [*spec["by"], spec["compare"]])].append(r)
  out = {}
  for key, group in groups.items():
    tuning = [r for r in group if not tune or r.get("seed") in tune]
    if not tuning:
      raise ValueError(f"{spec['compare']} {key}: no finished cell of the tuning seeds "
                       f"{sorted(tune)} to choose {spec.get('select')} on yet.")
    best, means = choose(tuning, spec.get("select"), on)
    grid = list(dict.fromkeys(r.get(spec["select"]) if spec.get("select") else None
                              for r in group))
    reported = [r for r in group if (r.get(spec["select"]) if spec.get("select") else None) == best
                and r.get("seed") not in tune]
    out[key] = {"choice": best, "rows": reported, "val": {c: means.get(c, -1.0) for c in grid},
                "edge": _at_edge(best, grid)}
  return out


def _at_edge(choice, grid: list) -> bool:
  """Whether a numeric `choice` is the smallest or largest value of its grid: the best value
  may lie beyond it. (With two candidates every choice is at an edge.)"""
  numbers = [g for g in grid if isinstance(g, (int, float)) and not isinstance(g, bool)]
  if len(numbers) < 2 or choice not in numbers:
    return False
  return choice in (min(numbers), max(numbers))


def stage_mean(cells: list[tuple[dict, tuple[str, dict]]], kind: str, stage: str
               ) -> float | None:
  """The mean over `cells` ((row, (folder, diagnostics)) pairs) of diagnostics[kind][stage],
  leaving out a cell that does not report it; None when none does."""
  values = [d[kind][stage] for _, (_, d) in cells if stage in d.get(kind, {})]
  return statistics.fmean(values) if values else None
