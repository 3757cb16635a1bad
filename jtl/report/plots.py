"""The report's pictures (matplotlib, drawn off screen): accuracy with its intervals, the
paired differences, and the drift and CKA per stage.

>>> plot(rows, spec, diffs, "runs/seed_transfer/")   # doctest: +SKIP
['runs/seed_transfer/accuracy.png', 'runs/seed_transfer/differences.png']
"""

from __future__ import annotations

from typing import Sequence

from jtl.report.stats import METRIC, group_key, mean_ci, select, stage_mean


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _percent(values: Sequence[float]) -> tuple[float, list[float]]:
  """The mean in %, and its error bar below and above, the interval kept within 0-100 %
  as the table keeps it (RESULTS.md is in %, and so are the plots).

  >>> m, (below, above) = _percent([0.9, 1.0, 1.0]); round(m + above, 6)   # not 111.0
  100.0
  """
  m, lo, hi = mean_ci(list(values))
  if lo is None:
    return 100 * m, [0.0, 0.0]
  lo, hi = max(lo, 0.0), min(hi, 1.0)
  return 100 * m, [100 * (m - lo), 100 * (hi - m)]


def _against_x(ax, rows: list[dict], spec: dict, chosen: dict, order: list) -> None:
  """One line per compared value (and split) over spec["x"]."""
  by, x = list(spec["by"]), spec["x"]
  rest = [b for b in by if b != x]
  x_order = list(dict.fromkeys(r.get(x) for r in rows))   # Declared order (stem, stage1, ...).
  numeric = all(isinstance(v, (int, float)) for v in x_order)
  for name in order:
    for split in dict.fromkeys(group_key(r, rest) for r in rows):
      pts = sorted(((k[by.index(x)], c) for k, c in chosen.items()
                    if k[-1] == name and all(k[by.index(b)] == v for b, v in zip(rest, split))),
                   key=lambda p: p[0] if numeric else x_order.index(p[0]))
      if not pts:
        continue
      xs, ms, errs = [], [], []
      for xv, c in pts:
        m, err = _percent([r[METRIC] for r in c["rows"]])
        xs.append(xv), ms.append(m), errs.append(err)
      pos = list(range(len(xs))) if not all(isinstance(v, (int, float)) for v in xs) else xs
      label = f"{name}" + (f" ({', '.join(map(str, split))})" if rest else "")
      ax.errorbar(pos, ms, yerr=list(zip(*errs)), marker="o", capsize=3, label=label)
      if pos is not xs:
        ax.set_xticks(pos, [str(v) for v in xs])
  if all(isinstance(r.get(x), (int, float)) for r in rows) and x in ("shots",):
    ax.set_xscale("log")
  ax.set_xlabel(x)


def _per_value(ax, rows: list[dict], spec: dict, chosen: dict, order: list) -> None:
  """One point per compared value, side by side per split."""
  by = list(spec["by"])
  splits = list(dict.fromkeys(group_key(r, by) for r in rows))
  for j, split in enumerate(splits):
    ms, errs, names = [], [], []
    for name in order:
      c = chosen.get((*split, name))
      if c:
        m, err = _percent([r[METRIC] for r in c["rows"]])
        ms.append(m), errs.append(err), names.append(name)
    offset = (j - (len(splits) - 1) / 2) * 0.8 / max(len(splits), 1)
    ax.errorbar([order.index(n) + offset for n in names], ms,
                yerr=list(zip(*errs)) if errs else None, fmt="o", capsize=4,
                label=", ".join(f"{b}={v}" for b, v in zip(by, split)) or None)
  ax.set_xticks(range(len(order)), order, rotation=20, ha="right")


def _verdict_colour(d: dict) -> str:
  """Green where a beats b after the family's Holm adjustment, red where b beats a, else grey."""
  if d.get("p_holm") is None or d["p_holm"] >= 0.05:
    return "C7"
  return "C2" if d["mean"] > 0 else "C3"


def _differences(plt, diffs: list[dict], path: str) -> None:
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(diffs) + 1.2))
  for i, d in enumerate(diffs):
    err = None if d["lo"] is None else [[100 * (d["mean"] - d["lo"])],
                                        [100 * (d["hi"] - d["mean"])]]
    ax.errorbar([100 * d["mean"]], [i], xerr=err, fmt="o", capsize=4,
                color=_verdict_colour(d))
  ax.axvline(0, color="k", lw=0.8)
  ax.set_yticks(range(len(diffs)), [f"{d['a']} − {d['b']}" + (
      f" ({', '.join(f'{k}={v}' for k, v in d['split'].items())})" if d["split"] else "")
      + (f" [{d['metric']}]" if d.get("metric", "test_accuracy") != "test_accuracy" else "")
      for d in diffs], fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel("paired difference in test accuracy (or the result in brackets), points "
                "(95% CI, unadjusted; colour: Holm-adjusted verdict)")
  ax.grid(alpha=0.3, axis="x")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(rows: list[dict], spec: dict, diffs: list[dict], path_prefix: str,
         reference: Sequence[dict] = ()) -> list[str]:
  """Accuracy (mean ± 95% CI) per compared value, against `x` when it is given (the
  reference stage as a band); and the paired differences with their intervals.
  Returns the PNG paths written."""
  plt = _pyplot()
  chosen = select(rows, spec)
  order = list(dict.fromkeys(r[spec["compare"]] for r in rows))
  written = []
  fig, ax = plt.subplots(figsize=(7, 4))
  if spec.get("x"):
    _against_x(ax, rows, spec, chosen, order)
  else:
    _per_value(ax, rows, spec, chosen, order)
  if reference:
    m, (below, above) = _percent([r[METRIC] for r in reference])
    ax.axhline(m, color="k", ls="--", lw=1, label=f"{spec['reference']} (reference)")
    if below or above:
      ax.axhspan(m - below, m + above, color="k", alpha=0.08)
  ax.set_ylabel("target test accuracy, % (mean ± 95% CI)")
  ax.set_title(spec.get("title") or "test accuracy over seeds")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path_prefix + "accuracy.png", dpi=110)
  plt.close(fig)
  written.append(path_prefix + "accuracy.png")
  if diffs:
    _differences(plt, diffs, path_prefix + "differences.png")
    written.append(path_prefix + "differences.png")
  return written


def diagnostics(chosen: dict, kinds: dict, by: Sequence[str], path: str) -> None:
  """Weight drift, BatchNorm statistics drift and CKA per stage, a panel each, a row per
  split. `chosen`: (by..., compared) -> [(row, (folder, diagnostics))]; `kinds`: kind ->
  stage names."""
  plt = _pyplot()
  panels = [(k, label) for k, label in (("drift", "weight drift"),
                                        ("bn_drift", "BatchNorm statistics drift"),
                                        ("cka", "CKA vs source")) if kinds[k]]
  splits = list(dict.fromkeys(k[:-1] for k in chosen))
  fig, axes = plt.subplots(len(splits), len(panels), squeeze=False,
                           figsize=(4.5 * len(panels), 2.6 * len(splits) + 0.6))
  for i, split in enumerate(splits):
    for j, (kind, label) in enumerate(panels):
      ax, names = axes[i, j], kinds[kind]
      for key, cells in chosen.items():
        ys = [stage_mean(cells, kind, s) for s in names]
        if key[:-1] == split and any(y is not None for y in ys):
          ax.plot(range(len(names)), [float("nan") if y is None else y for y in ys],
                  marker="o", label=key[-1])
      ax.set_xticks(range(len(names)), names, fontsize=7)
      ax.set_ylabel(label + (f"\n{', '.join(f'{b}={v}' for b, v in zip(by, split))}"
                             if by else ""), fontsize=8)
      ax.grid(alpha=0.3)
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
