"""The files a run and a study leave behind: their names, and the readers and writers of rows.

A study's root holds STUDY_JSON (what was declared and every run of it), RESULTS (one JSON
row per finished cell, appended by jtl/sweep.py), and what `jtl report` writes from them:
RESULTS_MD, its plots and PICTURES/. A cell's workdir holds SUMMARY (its final numbers) and,
after `jtl sweep --diagnose`, DIAGNOSTICS (jtl/diagnose/after.py). Nothing here imports JAX,
so a table can be remade on any machine.

>>> append_result("runs/demo", {"stage": "target", "cell": "seed=0", "test_accuracy": 0.8})
... # doctest: +SKIP
>>> read_results("runs/demo")[-1]["test_accuracy"]  # doctest: +SKIP
0.8
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

RESULTS = "results.jsonl"          # A study's rows, one finished cell each.
STUDY_JSON = "study.json"          # A study's declaration and the runs of it.
RESULTS_MD = "RESULTS.md"          # `jtl report`'s tables, beside its plots.
PICTURES = "features"              # The cells' feature pictures, copied beside RESULTS_MD.
SUMMARY = "summary.json"           # A finished run's numbers, in its workdir.
DIAGNOSTICS = "diagnostics.json"   # A cell's drift and CKA per stage (jtl/diagnose/after.py).

# What a row keeps of a run's summary.
ROW_KEYS = ("val_accuracy", "best_val_accuracy", "best_val_step", "test_accuracy", "test_loss",
            "train_time_s", "first_step_s", "images_per_sec", "trainable_params", "total_params",
            "optimizer_state_bytes", "steps", "train_examples", "test_examples",
            "source_test_accuracy", "target_val_accuracy",   # Domain adaptation's (jtl/adapt.py),
            # and its label-free scores on the unlabeled target images (jtl/adabn.py).
            "target_entropy", "target_diversity", "target_im",
            "diverged")   # A sweep cell whose loss diverged: its message.


def result_row(cell: Any, summary: Mapping[str, Any]) -> dict:
  """A cell's row: its stage, name, axis labels and fields, ROW_KEYS of its summary, workdir.

  `cell` is a jtl.sweep.Cell (anything with stage, name, labels, fields and workdir)."""
  extra = {k: v for k, v in summary.items() if k.startswith("test_accuracy@")}   # More test sets.
  return {"stage": cell.stage, "cell": cell.name, **cell.labels, "fields": cell.fields,
          **{k: summary.get(k) for k in ROW_KEYS}, **extra, "workdir": cell.workdir}


def read_results(root: str) -> list[dict]:
  """The rows of ROOT/RESULTS in the order they were written; [] when there is none yet."""
  path = os.path.join(root, RESULTS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def append_result(root: str, row: Mapping[str, Any]) -> None:
  """Appends `row` to ROOT/RESULTS, on disk before it returns (a killed sweep keeps it)."""
  with open(os.path.join(root, RESULTS), "a") as f:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_study(root: str) -> dict:
  """ROOT/STUDY_JSON as written by jtl/sweep.py."""
  with open(os.path.join(root, STUDY_JSON)) as f:
    return json.load(f)


def tune_stages(tune_stage) -> tuple[str, ...]:
  """A report's tune_stage as a tuple of stage names (it may name one, several or none)."""
  if not tune_stage:
    return ()
  return (tune_stage,) if isinstance(tune_stage, str) else tuple(tune_stage)
