r"""A sweep's results.jsonl -> RESULTS.md with mean ± 95% CI, paired differences and plots.

  jtl report runs/seed_transfer        # or ./launch.sh report DIR

Reads only DIR/results.jsonl and DIR/study.json (written by jtl/sweep.py), so a
table can be remade without JAX. Per compared value (e.g. strategy) and split
(e.g. shots), the selected hyperparameter (e.g. lr) is the one with the best mean
validation accuracy over seeds — never test accuracy — and the table shows it.
Intervals are Student t over seeds. Paired differences compare two strategies on
the same seeds; "A beats B" is written only where the 95% interval excludes 0.

>>> mean_ci([0.80, 0.82, 0.84])
(0.82, 0.0496..., 0.8696...)
"""

from __future__ import annotations

import collections
import json
import math
import os
import statistics
import sys
from typing import Sequence

RESULTS_MD = "RESULTS.md"
DIAGNOSTICS = "diagnostics.json"     # A cell's drift and CKA per stage (jtl/diagnose/after.py).
PICTURES = "features"                # The cells' feature pictures, copied beside RESULTS.md.
METRIC = "test_accuracy"
SELECT_ON = "val_accuracy"


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
  """Mean and the two ends of its Student-t interval; (mean, None, None) for one value."""
  from scipy import stats
  values = [float(v) for v in values]
  m = statistics.fmean(values)
  if len(values) < 2:
    return m, None, None
  half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
  return m, m - half, m + half


def verdict(a: str, b: str, lo: float | None, hi: float | None, n: int) -> str:
  """The words a paired difference a - b allows."""
  if lo is None:
    return f"no interval ({n} seed); no difference can be claimed"
  if lo > 0:
    return f"{a} beats {b}"
  if hi < 0:
    return f"{b} beats {a}"
  return "no difference detected"


def _key(row: dict, axes: Sequence[str]) -> tuple:
  return tuple(row.get(a) for a in axes)


def select(rows: list[dict], spec: dict) -> dict:
  """(by..., compared) -> {"choice": selected value or None, "rows": that choice's rows}.

  The choice maximizes the mean of spec["select_on"] (validation accuracy unless the
  study names another result) over seeds; ties: first declared.
  """
  on = spec.get("select_on") or SELECT_ON
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in rows:
    choice = r.get(spec["select"]) if spec.get("select") else None
    groups[_key(r, [*spec["by"], spec["compare"]])][choice].append(r)
  out = {}
  for key, by_choice in groups.items():
    def score(choice):
      vals = [r.get(on) for r in by_choice[choice]]
      return statistics.fmean(vals) if vals and None not in vals else -1.0
    best = max(by_choice, key=score)
    out[key] = {"choice": best, "rows": by_choice[best],
                "val": {c: score(c) for c in by_choice}}
  return out


def paired(a_rows: list[dict], b_rows: list[dict], metric: str = METRIC) -> dict:
  """a - b on the seeds both have: per-seed differences, mean and 95% CI."""
  a = {r["seed"]: r[metric] for r in a_rows}
  b = {r["seed"]: r[metric] for r in b_rows}
  common = sorted(set(a) & set(b))
  diffs = [a[s] - b[s] for s in common]
  m, lo, hi = mean_ci(diffs) if diffs else (float("nan"), None, None)
  return {"seeds": common, "diffs": diffs, "mean": m, "lo": lo, "hi": hi}


def _pct(x: float | None) -> str:
  return "–" if x is None else f"{100 * x:.1f}"


def _ci(m: float, lo: float | None, hi: float | None) -> str:
  if lo is None:
    return f"{_pct(m)} (n=1, no interval)"
  return f"{_pct(m)} ± {_pct((hi - lo) / 2)} [{_pct(lo)}, {_pct(hi)}]"


def _signed_ci(m: float, lo: float | None, hi: float | None) -> str:
  if lo is None:
    return f"{100 * m:+.1f} (n=1, no interval)"
  return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _baseline_rows(chosen: dict, split: tuple, spec: dict, reference: list[dict]):
  """The rows paired differences are taken against: the baseline value's in this split,
  or the reference stage's (e.g. a base model trained on the target alone)."""
  if spec.get("reference"):
    return reference or None
  b = chosen.get((*split, spec.get("baseline")))
  return b["rows"] if b else None


def tables(rows: list[dict], spec: dict, reference: Sequence[dict] = ()) -> tuple[str, list[dict]]:
  """The markdown tables of one report spec, and the paired differences as records.

  `reference`: rows of spec["reference"]'s stage, when differences are taken against it.
  """
  chosen = select(rows, spec)
  compare, by, sel = spec["compare"], list(spec["by"]), spec.get("select")
  on, columns = spec.get("select_on") or SELECT_ON, list(spec.get("columns") or ())
  order = list(dict.fromkeys(r[compare] for r in rows))
  splits = list(dict.fromkeys(_key(r, by) for r in rows))
  head = [*by, compare] + ([f"{sel} (chosen on {_words(on)})"] if sel else []) + [
      "seeds", f"{_words(on)} %", "test acc % (mean ± 95% CI)",
      *(f"{_words(c)} %" for c in columns), "trainable params", "train s / cell"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for split in splits:
    for name in order:
      c = chosen.get((*split, name))
      if not c:
        continue
      rs = c["rows"]
      m, lo, hi = mean_ci([r[METRIC] for r in rs])
      cells = [*map(str, split), str(name)] + ([_choice_text(c)] if sel else []) + [
          str(len(rs)), _pct(_mean_of(rs, on)), _ci(m, lo, hi),
          *(_pct(_mean_of(rs, k)) for k in columns), f"{rs[0].get('trainable_params') or 0:,}",
          f"{statistics.fmean(r.get('train_time_s') or 0 for r in rs):.0f}"]
      lines.append("| " + " | ".join(cells) + " |")
  diffs = []
  base = spec.get("reference") or spec.get("baseline")
  if base:
    dl = ["| " + " | ".join([*by, "difference", "seeds", "mean [95% CI], points", "verdict"]) + " |",
          "|" + "---|" * (len(by) + 4)]
    for split in splits:
      b_rows = _baseline_rows(chosen, split, spec, list(reference))
      if not b_rows:
        continue
      for name in order:
        a = chosen.get((*split, name))
        if name == base or not a:
          continue
        d = paired(a["rows"], b_rows)
        d |= {"split": dict(zip(by, split)), "a": name, "b": base,
              "verdict": verdict(name, base, d["lo"], d["hi"], len(d["seeds"]))}
        diffs.append(d)
        dl.append("| " + " | ".join([*map(str, split), f"{name} − {base}", str(len(d["seeds"])),
                                     _signed_ci(d["mean"], d["lo"], d["hi"]), d["verdict"]]) + " |")
    lines += ["", f"Paired differences against `{base}`"
              + (" (the reference stage)" if spec.get("reference") else "")
              + " on the same seeds (the same data draw); test accuracy, percentage points:", ""] + dl
  return "\n".join(lines), diffs


def _mean_of(rows: list[dict], key: str) -> float | None:
  vals = [r.get(key) for r in rows]
  return statistics.fmean(vals) if vals and None not in vals else None


def _words(key: str) -> str:
  """"target_val_accuracy" -> "target val acc"."""
  return key.replace("_accuracy", " acc").replace("_", " ")


def _choice_text(c: dict) -> str:
  others = ", ".join(f"{k}: {100 * v:.1f}" for k, v in c["val"].items())
  return f"{c['choice']} (val % — {others})" if len(c["val"]) > 1 else str(c["choice"])


def plot(rows: list[dict], spec: dict, diffs: list[dict], path_prefix: str,
         reference: Sequence[dict] = ()) -> list[str]:
  """Accuracy (mean ± 95% CI) per compared value, against `x` when it is given (the
  reference stage as a band); and the paired differences with their intervals.
  Returns the PNG paths written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  chosen = select(rows, spec)
  compare, by, x = spec["compare"], list(spec["by"]), spec.get("x")
  order = list(dict.fromkeys(r[compare] for r in rows))
  written = []
  fig, ax = plt.subplots(figsize=(7, 4))
  if x:
    rest = [b for b in by if b != x]
    x_order = list(dict.fromkeys(r.get(x) for r in rows))   # Declared order (stem, stage1, ...).
    numeric = all(isinstance(v, (int, float)) for v in x_order)
    for name in order:
      for split in dict.fromkeys(_key(r, rest) for r in rows):
        pts = sorted(((k[by.index(x)], c) for k, c in chosen.items()
                      if k[-1] == name and all(k[by.index(b)] == v for b, v in zip(rest, split))),
                     key=lambda p: p[0] if numeric else x_order.index(p[0]))
        if not pts:
          continue
        xs, ms, errs = [], [], []
        for xv, c in pts:
          m, lo, hi = mean_ci([r[METRIC] for r in c["rows"]])
          xs.append(xv), ms.append(m), errs.append(0 if lo is None else (hi - lo) / 2)
        pos = list(range(len(xs))) if not all(isinstance(v, (int, float)) for v in xs) else xs
        label = f"{name}" + (f" ({', '.join(map(str, split))})" if rest else "")
        ax.errorbar(pos, ms, yerr=errs, marker="o", capsize=3, label=label)
        if pos is not xs:
          ax.set_xticks(pos, [str(v) for v in xs])
    if all(isinstance(r.get(x), (int, float)) for r in rows) and x in ("shots",):
      ax.set_xscale("log")
    ax.set_xlabel(x)
  else:
    splits = list(dict.fromkeys(_key(r, by) for r in rows))
    for j, split in enumerate(splits):
      ms, errs, names = [], [], []
      for name in order:
        c = chosen.get((*split, name))
        if c:
          m, lo, hi = mean_ci([r[METRIC] for r in c["rows"]])
          ms.append(m), errs.append(0 if lo is None else (hi - lo) / 2), names.append(name)
      offset = (j - (len(splits) - 1) / 2) * 0.8 / max(len(splits), 1)
      ax.errorbar([order.index(n) + offset for n in names], ms, yerr=errs, fmt="o", capsize=4,
                  label=", ".join(f"{b}={v}" for b, v in zip(by, split)) or None)
    ax.set_xticks(range(len(order)), order, rotation=20, ha="right")
  if reference:
    m, lo, hi = mean_ci([r[METRIC] for r in reference])
    ax.axhline(m, color="k", ls="--", lw=1, label=f"{spec['reference']} (reference)")
    if lo is not None:
      ax.axhspan(lo, hi, color="k", alpha=0.08)
  ax.set_ylabel("target test accuracy (mean ± 95% CI)")
  ax.set_title(spec.get("title") or "test accuracy over seeds")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path_prefix + "accuracy.png", dpi=110)
  plt.close(fig)
  written.append(path_prefix + "accuracy.png")
  if diffs:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(diffs) + 1.2))
    for i, d in enumerate(diffs):
      err = None if d["lo"] is None else [[100 * (d["mean"] - d["lo"])], [100 * (d["hi"] - d["mean"])]]
      ax.errorbar([100 * d["mean"]], [i], xerr=err, fmt="o", capsize=4,
                  color="C2" if d["lo"] is not None and d["lo"] > 0 else
                  "C3" if d["hi"] is not None and d["hi"] < 0 else "C7")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(diffs)), [f"{d['a']} − {d['b']}" + (
        f" ({', '.join(f'{k}={v}' for k, v in d['split'].items())})" if d["split"] else "")
        for d in diffs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference in test accuracy, points (95% CI)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path_prefix + "differences.png", dpi=110)
    plt.close(fig)
    written.append(path_prefix + "differences.png")
  return written


def write_report(root: str) -> str:
  """Writes ROOT/RESULTS.md (and PNGs beside it) from results.jsonl; returns the text."""
  from jtl.sweep import RESULTS, STUDY_JSON, read_results
  for name in (RESULTS, STUDY_JSON):
    if not os.path.exists(os.path.join(root, name)):
      raise FileNotFoundError(f"{os.path.join(root, name)} does not exist; run the sweep "
                              "first (./launch.sh sweep STUDY.py --workdir DIR).")
  with open(os.path.join(root, STUDY_JSON)) as f:
    study = json.load(f)
  rows = read_results(root)
  spec = study.get("report")
  if not spec:
    raise ValueError(f"{root}/{STUDY_JSON} declares no report.")
  stage_rows = [r for r in rows if r["stage"] == spec["stage"]]
  reference = [r for r in rows if r["stage"] == spec.get("reference")]
  if not stage_rows:
    raise ValueError(f"{root}/{RESULTS} has no finished cell of stage {spec['stage']!r} yet.")
  text, diffs = tables(stage_rows, spec, reference)
  pngs = plot(stage_rows, spec, diffs, os.path.join(root, ""), reference)
  lines = [f"# {spec.get('title') or study['name']}", ""]
  if spec.get("notes"):
    lines += [spec["notes"].strip(), ""]
  lines += [f"Test accuracy in percent over seeds: mean ± half-width of the 95% Student-t "
            f"interval [low, high]. {'`' + spec['select'] + '` is chosen per row on mean ' + _words(spec.get('select_on') or SELECT_ON) + ' (never test); the means of every choice are shown. ' if spec.get('select') else ''}"
            "A claim that one strategy beats another is made only where the paired interval "
            "excludes 0.", "", text, ""]
  verdicts = [f"- {d['a']} − {d['b']}" + (f" at {', '.join(f'{k}={v}' for k, v in d['split'].items())}"
              if d["split"] else "") + f": {d['verdict']} ({_signed_ci(d['mean'], d['lo'], d['hi'])} points)"
              for d in diffs]
  if verdicts:
    lines += ["## What the intervals allow", ""] + verdicts + [""]
  lines += [f"![{os.path.basename(p)[:-4]}]({os.path.basename(p)})" for p in pngs] + [""]
  lines += diagnostics_section(root, stage_rows, spec)
  other = sorted({r["stage"] for r in rows} - {spec["stage"]})
  for stage in other:
    rs = [r for r in rows if r["stage"] == stage]
    m, lo, hi = mean_ci([r[METRIC] for r in rs])
    lines += [f"Stage `{stage}`: {len(rs)} cell(s), test accuracy {_ci(m, lo, hi)} %.", ""]
  lines += first_step_lines(rows)
  lines += ["## Provenance", "", f"Study `{study['name']}`" + (f"; budget: {study['budget']}" if study.get("budget") else "") + ".", ""]
  runs = study.get("runs", [])
  for run in runs[:1] + runs[1:][-2:]:   # The first (it ran the cells) and the latest.
    lines.append(f"- `{run['command']}` — {run['date']}, commit {run['commit']}, jax {run['jax']} / "
                 f"jaxlib {run['jaxlib']}, {run['device']}, {run['host']}")
  lines += ["", f"Cells: {len(rows)} rows in `{RESULTS}`; per-cell workdirs under `{{stage}}/{{cell}}/`. "
            "Float results differ across CPUs: another machine gives other numbers; a conclusion "
            "here is one whose interval excludes 0."]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(root, RESULTS_MD), "w") as f:
    f.write(text)
  return text


def _cell_diagnostics(root: str, row: dict) -> tuple[str, dict] | None:
  """(the cell's folder, its diagnostics.json) when `jtl sweep --diagnose` wrote one."""
  for folder in (os.path.join(root, row["stage"], row["cell"]), row.get("workdir") or ""):
    path = os.path.join(folder, DIAGNOSTICS)
    if folder and os.path.exists(path):
      with open(path) as f:
        return folder, json.load(f)
  return None


def diagnostics_section(root: str, rows: list[dict], spec: dict) -> list[str]:
  """Mean weight drift and CKA per stage for each compared value (and split; the `select`ed
  choice's cells), a plot of them, and links to the seed-0 feature pictures (copied under
  PICTURES/). A stage a cell does not report (not loaded from the source) is left out of
  its mean; "—" where no cell reports it."""
  import shutil
  chosen = {key: [(r, d) for r in c["rows"] if (d := _cell_diagnostics(root, r))]
            for key, c in select(rows, spec).items()}
  found = [rd for cells in chosen.values() for rd in cells]
  if not found:
    return []
  compare, by = spec["compare"], list(spec["by"])
  kinds = {kind: list(dict.fromkeys(s for _, (_, d) in found for s in d.get(kind, {})))
           for kind in ("drift", "bn_drift", "cka")}

  def mean(cells, kind, stage):
    values = [d[kind][stage] for _, (_, d) in cells if stage in d.get(kind, {})]
    return statistics.fmean(values) if values else None

  fmt = lambda v, digits: "—" if v is None else f"{v:.{digits}f}"
  lines = []
  if kinds["drift"]:
    lines = ["## What each strategy did to the network", "",
             "Weight drift ‖θ − θ_source‖ / ‖θ_source‖ per stage (0 exactly where frozen; the "
             "plot adds the same for the BatchNorm running statistics, which move with no "
             "gradient) and linear CKA between the source's and the trained model's features on "
             f"{found[0][1][1]['probe_examples']} fixed test images (1: unchanged), mean over "
             "seeds.", "",
             "| " + " | ".join([*by, compare] + [f"drift {s}" for s in kinds["drift"]]
                               + [f"CKA {s}" for s in kinds["cka"]]) + " |",
             "|" + "---|" * (len(by) + 1 + len(kinds["drift"]) + len(kinds["cka"]))]
    for key, cells in chosen.items():
      if any("drift" in d for _, (_, d) in cells):
        lines.append("| " + " | ".join([str(k) for k in key]
                                       + [fmt(mean(cells, "drift", s), 3) for s in kinds["drift"]]
                                       + [fmt(mean(cells, "cka", s), 2) for s in kinds["cka"]]) + " |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
          ys = [mean(cells, kind, s) for s in names]
          if key[:-1] == split and any(y is not None for y in ys):
            ax.plot(range(len(names)), [float("nan") if y is None else y for y in ys], marker="o",
                    label=key[-1])
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylabel(label + (f"\n{', '.join(f'{b}={v}' for b, v in zip(by, split))}"
                               if by else ""), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "diagnostics.png"), dpi=100)
    plt.close(fig)
    lines += ["", "![diagnostics](diagnostics.png)", ""]
  links = []
  for key, cells in chosen.items():
    for r, (folder, d) in cells:
      if r.get("seed", 0) == 0 and d.get("picture"):
        name = f"{r['stage']}-{r['cell']}.png"
        os.makedirs(os.path.join(root, PICTURES), exist_ok=True)
        shutil.copyfile(os.path.join(folder, d["picture"]), os.path.join(root, PICTURES, name))
        links.append(f"[{', '.join(map(str, key))}]({PICTURES}/{name})")
  if links:
    lines += ["Pre-logit features before and after transfer (PCA and t-SNE; by class and by "
              "domain), seed 0 of each cell:", "", " · ".join(links), ""]
  return lines


def first_step_lines(rows: list[dict]) -> list[str]:
  """Time to the end of the first step per stage: the first cell (a cold compile) against
  the median of the rest (served by the persistent compilation cache)."""
  lines = []
  for stage in dict.fromkeys(r["stage"] for r in rows):
    times = [r["first_step_s"] for r in rows
             if r["stage"] == stage and r.get("first_step_s") is not None]
    if len(times) > 1:
      lines.append(f"Stage `{stage}`: time to the end of the first step (set-up, data, "
                   f"compile) {times[0]:.1f} s in the first cell, median "
                   f"{statistics.median(times[1:]):.1f} s in the other {len(times) - 1}.")
  return lines + [""] if lines else []


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: jtl report DIR   (DIR: a sweep's workdir holding results.jsonl)", file=sys.stderr)
    return 2
  try:
    text = write_report(argv[0])
  except (ValueError, FileNotFoundError) as e:
    print(f"jtl: error: {e}", file=sys.stderr)
    return 2
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
