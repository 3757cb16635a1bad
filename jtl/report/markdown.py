"""The report's text: markdown tables of accuracy and paired differences, and RESULTS.md.

Named markdown.py rather than tables.py so that `jtl.report.tables` stays the function the
package exports, not a module it hides.

>>> text, diffs = tables(rows, {"compare": "strategy", "by": ["shots"], "select": "lr",
...                             "baseline": "scratch"})   # doctest: +SKIP
>>> diffs[0]["verdict"]                                    # doctest: +SKIP
'l2_sp beats scratch'
"""

from __future__ import annotations

import statistics
from typing import Sequence

from jtl.report.stats import (METRIC, SELECT_ON, family_verdicts, group_key, mean_ci, mean_of,
                              paired, select, stage_mean)
from jtl.results import RESULTS, tune_stages


def pct(x: float | None) -> str:
  """0.8123 -> "81.2"; None -> "–"."""
  return "–" if x is None else f"{100 * x:.1f}"


def ci(m: float, lo: float | None, hi: float | None) -> str:
  """"81.2 ± 1.3 [79.9, 82.5]", in percent. The ± is the t-interval's half-width; the
  brackets are clipped to [0, 100], where an accuracy lies ("63.3 ± 42.4 [21.0, 100.0]")."""
  if lo is None:
    return f"{pct(m)} (n=1, no interval)"
  return f"{pct(m)} ± {pct((hi - lo) / 2)} [{pct(max(lo, 0.0))}, {pct(min(hi, 1.0))}]"


def signed_ci(m: float, lo: float | None, hi: float | None) -> str:
  """"+2.1 [+0.4, +3.8]", in percentage points."""
  if lo is None:
    return f"{100 * m:+.1f} (n=1, no interval)"
  return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def words(key: str) -> str:
  """"target_val_accuracy" -> "target val acc"."""
  return key.replace("_accuracy", " acc").replace("_", " ")


def _choice_text(c: dict) -> str:
  others = ", ".join(f"{k}: {100 * v:.1f}" if v >= 0 else f"{k}: diverged or missing"
                     for k, v in c["val"].items())
  edge = " **edge of grid**" if c.get("edge") else ""
  return f"{c['choice']}{edge} (val % — {others})" if len(c["val"]) > 1 else str(c["choice"])


def _p(p: float | None) -> str:
  return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def _baseline_rows(chosen: dict, split: tuple, spec: dict, reference: list[dict]):
  """The rows paired differences are taken against: the baseline value's in this split,
  or the reference stage's (e.g. a base model trained on the target alone)."""
  if spec.get("reference"):
    return reference or None
  b = chosen.get((*split, spec.get("baseline")))
  return b["rows"] if b else None


def tables(rows: list[dict], spec: dict, reference: Sequence[dict] = ()
           ) -> tuple[str, list[dict]]:
  """The markdown tables of one report spec, and the paired differences as records.

  `reference`: rows of spec["reference"]'s stage, when differences are taken against it.
  """
  chosen = select(rows, spec)
  compare, by, sel = spec["compare"], list(spec["by"]), spec.get("select")
  on = spec.get("select_on") or SELECT_ON
  columns = list(dict.fromkeys([*(spec.get("columns") or ()), *(spec.get("metrics") or ())]))
  order = list(dict.fromkeys(r[compare] for r in rows))
  splits = list(dict.fromkeys(group_key(r, by) for r in rows))
  head = [*by, compare] + ([f"{sel} (chosen on {words(on)})"] if sel else []) + [
      "seeds", f"{words(on)} %", "test acc % (mean ± 95% CI)",
      *(f"{words(c)} %" for c in columns), "trainable params", "train s / cell"]
  lines = [_row(head), "|" + "---|" * len(head)]
  for split in splits:
    for name in order:
      c = chosen.get((*split, name))
      if not c:
        continue
      rs = c["rows"]
      m, lo, hi = mean_ci([r[METRIC] for r in rs])
      cells = [*map(str, split), str(name)] + ([_choice_text(c)] if sel else []) + [
          str(len(rs)), pct(mean_of(rs, on)), ci(m, lo, hi),
          *(pct(mean_of(rs, k)) for k in columns), f"{rs[0].get('trainable_params') or 0:,}",
          f"{statistics.fmean(r.get('train_time_s') or 0 for r in rs):.0f}"]
      lines.append(_row(cells))
  diffs = []
  for metric in [METRIC, *(spec.get("metrics") or ())]:
    family = _differences(chosen, splits, order, spec, list(reference), metric)
    if family:
      lines += ["", *_differences_table(family, spec, metric)]
      diffs += family
  return "\n".join(lines), diffs


def _differences(chosen: dict, splits: list, order: list, spec: dict, reference: list[dict],
                 metric: str) -> list[dict]:
  """One family: the paired differences of `metric` against the baseline (or reference
  stage) and the study's further contrasts, in every split, with Holm-adjusted verdicts."""
  by, base = list(spec["by"]), spec.get("reference") or spec.get("baseline")
  pairs = [(name, base) for name in order if base and name != base]
  pairs += [tuple(c) for c in spec.get("contrasts") or ()]
  diffs = []
  for split in splits:
    for a, b in pairs:
      a_choice = chosen.get((*split, a))
      if b == base:
        b_rows, b_choice = _baseline_rows(chosen, split, spec, reference), chosen.get((*split, b))
      else:
        b_choice = chosen.get((*split, b))
        b_rows = b_choice and b_choice["rows"]
      if not a_choice or not b_rows:
        continue
      d = paired(a_choice["rows"], b_rows, metric)
      edges = [n for n, c in ((a, a_choice), (b, b_choice)) if (c or {}).get("edge")]
      diffs.append(d | {"split": dict(zip(by, split)), "a": a, "b": b, "edge_arms": edges,
                        "metric": metric})
  family_verdicts(diffs, [(d["a"], d["b"]) for d in diffs], margin=spec.get("margin"))
  return diffs


def _differences_table(diffs: list[dict], spec: dict, metric: str) -> list[str]:
  by, margin = list(spec["by"]), spec.get("margin")
  base = spec.get("reference") or spec.get("baseline")
  head = [*by, "difference", "seeds", "mean [95% CI], points", "p", "Holm p"]
  head += ["TOST Holm p"] if margin else []
  lines = [_row(head + ["verdict"]), "|" + "---|" * (len(head) + 1)]
  for d in diffs:
    lines.append(_row([*map(str, d["split"].values()), f"{d['a']} − {d['b']}",
                       str(len(d["seeds"])), signed_ci(d["mean"], d["lo"], d["hi"]), _p(d["p"]),
                       _p(d["p_holm"])] + ([_p(d["tost_p_holm"])] if margin else [])
                      + [verdict_text(d)]))
  against = (f"against `{base}`" + (" (the reference stage)" if spec.get("reference") else "")
             if base else "")
  if spec.get("contrasts"):
    against += (" and " if against else "") + ", ".join(
        f"`{a}` − `{b}`" for a, b in spec["contrasts"])
  what = "test accuracy" if metric == METRIC else f"`{metric}`"
  return [f"Paired differences {against} on the same seeds (the same data draw); {what}, "
          f"percentage points. The {len(diffs)} differences are one family: verdicts use "
          "Holm-adjusted p-values (paired t-tests)" + (
              f", and 'indistinguishable' a Holm-adjusted TOST against ±{100 * margin:.1f} "
              "points" if margin else "") + ":", "", *lines]


def verdict_text(d: dict) -> str:
  """A difference's verdict, with a warning when an arm's choice sits at the edge of its grid."""
  if not d.get("edge_arms"):
    return d["verdict"]
  return (d["verdict"] + f" (rests on {', '.join(d['edge_arms'])} chosen at the edge of "
          "its grid)")


def _split_words(split: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in split.items())


def results_md(study: dict, spec: dict, rows: list[dict], table: str, diffs: list[dict],
               pngs: Sequence[str], diagnostics: Sequence[str] = ()) -> str:
  """RESULTS.md's text: `table` and `diffs` (from tables() on the report stage's rows), the
  verdicts, links to `pngs` (file names beside it), the `diagnostics` section's lines, a
  line per other stage of `rows` (every row of results.jsonl) and the study's provenance."""
  lines = [f"# {spec.get('title') or study['name']}", ""]
  if spec.get("notes"):
    lines += [spec["notes"].strip(), ""]
  chosen_on = (f"`{spec['select']}` is chosen per row on mean "
               f"{words(spec.get('select_on') or SELECT_ON)} (never test); the means of every "
               "choice are shown. ") if spec.get("select") else ""
  if spec.get("select") and spec.get("tune_seeds"):
    chosen_on += (f"The choice is made on seeds {', '.join(map(str, spec['tune_seeds']))}"
                  + (" (stage " + ", ".join(f"`{t}`" for t in tune_stages(spec.get("tune_stage")))
                     + ")" if spec.get("tune_stage") else "")
                  + ", which are not among the seeds reported. ")
  lines += ["Test accuracy in percent over seeds: mean ± half-width of the 95% Student-t "
            f"interval [low, high]. {chosen_on}"
            "A claim that one strategy beats another is made only where the paired difference's "
            "Holm-adjusted p-value (over the table's family of differences) is below 0.05; a "
            "choice at the edge of its grid is marked, and so is a verdict that rests on one.",
            "", table, ""]
  verdicts = [f"- {d['a']} − {d['b']}" + (f" at {_split_words(d['split'])}" if d["split"] else "")
              + (f" ({d['metric']})" if d.get("metric", METRIC) != METRIC else "")
              + f": {verdict_text(d)} ({signed_ci(d['mean'], d['lo'], d['hi'])} points, "
              f"Holm p {_p(d['p_holm'])})"
              for d in diffs]
  if verdicts:
    lines += ["## What the intervals allow", ""] + verdicts + [""]
  lines += [f"![{name[:-4]}]({name})" for name in pngs] + [""]
  lines += list(diagnostics)
  for stage in sorted({r["stage"] for r in rows} - {spec["stage"],
                                                    *tune_stages(spec.get("tune_stage"))}):
    rs = [r for r in rows if r["stage"] == stage]
    m, lo, hi = mean_ci([r[METRIC] for r in rs])
    lines += [f"Stage `{stage}`: {len(rs)} cell(s), test accuracy {ci(m, lo, hi)} %.", ""]
  lines += first_step_lines(rows)
  budget = f"; budget: {study['budget']}" if study.get("budget") else ""
  lines += ["## Provenance", "", f"Study `{study['name']}`{budget}.", ""]
  runs = study.get("runs", [])
  for run in runs[:1] + runs[1:][-2:]:   # The first (it ran the cells) and the latest.
    lines.append(f"- `{run['command']}` — {run['date']}, commit {run['commit']}, "
                 f"jax {run['jax']} / jaxlib {run['jaxlib']}, {run['device']}, {run['host']}")
  lines += ["", f"Cells: {len(rows)} rows in `{RESULTS}`; per-cell workdirs under "
            "`{stage}/{cell}/`. Float results differ across CPUs: another machine gives other "
            "numbers; a conclusion here is one whose family-adjusted verdict says so."]
  return "\n".join(lines) + "\n"


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


def diagnostics_table(chosen: dict, kinds: dict, spec: dict, probe_examples: int) -> list[str]:
  """The lines of the table of mean weight drift and CKA per stage. `chosen`: (by...,
  compared) -> [(row, (folder, diagnostics))]; `kinds`: "drift"/"cka" -> stage names."""
  def fmt(v, digits):
    return "—" if v is None else f"{v:.{digits}f}"

  compare, by = spec["compare"], list(spec["by"])
  lines = ["## What each strategy did to the network", "",
           "Weight drift ‖θ − θ_source‖ / ‖θ_source‖ per stage (0 exactly where frozen; the "
           "plot adds the same for the BatchNorm running statistics, which move with no "
           "gradient) and linear CKA between the source's and the trained model's features on "
           f"{probe_examples} fixed test images (1: unchanged), mean over seeds.", "",
           _row([*by, compare] + [f"drift {s}" for s in kinds["drift"]]
                + [f"CKA {s}" for s in kinds["cka"]]),
           "|" + "---|" * (len(by) + 1 + len(kinds["drift"]) + len(kinds["cka"]))]
  for key, cells in chosen.items():
    if any("drift" in d for _, (_, d) in cells):
      lines.append(_row([str(k) for k in key]
                        + [fmt(stage_mean(cells, "drift", s), 3) for s in kinds["drift"]]
                        + [fmt(stage_mean(cells, "cka", s), 2) for s in kinds["cka"]]))
  return lines
