r"""A sweep's results.jsonl -> RESULTS.md with mean ± 95% CI, paired differences and plots.

  jtl report runs/seed_transfer        # or ./launch.sh report DIR

Reads only DIR/results.jsonl and DIR/study.json (written by jtl/sweep.py; file names in
jtl/results.py), so a table can be remade without JAX. Per compared value (e.g. strategy)
and split (e.g. shots), the selected hyperparameter (e.g. lr) is the one with the best mean
validation accuracy over seeds — never test accuracy — and the table shows it. Intervals
are Student t over seeds. Paired differences compare two strategies on the same seeds; a
table's differences are one family, and "A beats B" is written only where the paired
t-test's Holm-adjusted p-value is below 0.05 ("indistinguishable" only from a TOST against
the study's declared margin). A choice at the edge of its grid is marked, and so is every
verdict that rests on one; with tune_seeds, the choice is made on seeds that are not reported.

  stats.py     intervals, paired differences, verdicts, the choice on validation accuracy
  markdown.py  the tables and RESULTS.md's text
  plots.py     the pictures
  here         reading a study's files, writing RESULTS.md and copying the cells' pictures

>>> mean_ci([0.80, 0.82, 0.84])
(0.82, 0.0496..., 0.8696...)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Sequence

from jtl import results
from jtl.report import plots
from jtl.report.markdown import (diagnostics_table, first_step_lines, results_md, signed_ci,
                                 tables)
from jtl.report.plots import plot
from jtl.report.stats import (METRIC, SELECT_ON, family_verdicts, holm, mean_ci, paired, select,
                              tost_p, verdict)
from jtl.results import DIAGNOSTICS, PICTURES, RESULTS_MD

__all__ = [
  "DIAGNOSTICS", "METRIC", "PICTURES", "RESULTS_MD", "SELECT_ON", "diagnostics_section",
  "family_verdicts", "first_step_lines", "holm", "main", "mean_ci", "paired", "plot", "select",
  "signed_ci", "tables", "tost_p", "verdict", "write_report",
]


def write_report(root: str) -> str:
  """Writes ROOT/RESULTS.md (and PNGs beside it) from results.jsonl; returns the text."""
  for name in (results.RESULTS, results.STUDY_JSON):
    if not os.path.exists(os.path.join(root, name)):
      raise FileNotFoundError(f"{os.path.join(root, name)} does not exist; run the sweep "
                              "first (./launch.sh sweep STUDY.py --workdir DIR).")
  study = results.read_study(root)
  rows = results.read_results(root)
  spec = study.get("report")
  if not spec:
    raise ValueError(f"{root}/{results.STUDY_JSON} declares no report.")
  stage_rows = [r for r in rows if r["stage"] == spec["stage"]]
  reference = [r for r in rows if r["stage"] == spec.get("reference")]
  if not stage_rows:
    raise ValueError(f"{root}/{results.RESULTS} has no finished cell of stage "
                     f"{spec['stage']!r} yet.")
  tune_stages = results.tune_stages(spec.get("tune_stage"))
  if tune_stages:   # Their cells chose; their seeds tune and are never reported.
    tuning = [r for r in rows if r["stage"] in tune_stages]
    spec = {**spec, "tune_seeds": sorted({r.get("seed") for r in tuning})}
    stage_rows = tuning + stage_rows
  table, diffs = tables(stage_rows, spec, reference)
  pngs = plot(stage_rows, spec, diffs, os.path.join(root, ""), reference)
  text = results_md(study, spec, rows, table, diffs, [os.path.basename(p) for p in pngs],
                    diagnostics_section(root, stage_rows, spec))
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
  chosen = {key: [(r, d) for r in c["rows"] if (d := _cell_diagnostics(root, r))]
            for key, c in select(rows, spec).items()}
  found = [rd for cells in chosen.values() for rd in cells]
  if not found:
    return []
  kinds = {kind: list(dict.fromkeys(s for _, (_, d) in found for s in d.get(kind, {})))
           for kind in ("drift", "bn_drift", "cka")}
  lines = []
  if kinds["drift"]:
    lines = diagnostics_table(chosen, kinds, spec, found[0][1][1]["probe_examples"])
    plots.diagnostics(chosen, kinds, list(spec["by"]), os.path.join(root, "diagnostics.png"))
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
