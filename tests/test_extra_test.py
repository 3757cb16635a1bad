"""More test sets scored at the end of a run (data.extra_test): out-of-distribution accuracy."""

import json
import os

import pytest

from jtl import results, train, writers

from test_train import tiny_config


def test_extra_test_sets_are_scored_logged_and_kept_in_the_results_row(tmp_path):
  shifted = "digits+shift:invert:1"
  config = tiny_config(total_steps=2, **{"data.extra_test": ("digits", shifted)})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  # The same split as the run's own test set scores exactly the same ...
  assert summary["test_accuracy@digits"] == summary["test_accuracy"]
  # ... and a corrupted copy is scored on its own.
  assert summary[f"test_accuracy@{shifted}"] != summary["test_accuracy"]
  rows = writers.read_metrics(str(tmp_path / "run"))
  assert any(f"test_extra/{shifted}/accuracy" in r for r in rows)
  with open(tmp_path / "run" / "summary.json") as f:
    assert json.load(f)[f"test_accuracy@{shifted}"] == summary[f"test_accuracy@{shifted}"]

  class Cell:
    stage, name, labels, fields, workdir = "target", "c", {"seed": 0}, {}, "w"
  row = results.result_row(Cell, summary)
  assert row[f"test_accuracy@{shifted}"] == summary[f"test_accuracy@{shifted}"]


def test_an_unknown_extra_test_set_fails_before_training(tmp_path):
  config = tiny_config(**{"data.extra_test": ("no_such_dataset_here",)})
  with pytest.raises((ValueError, FileNotFoundError), match="no_such_dataset_here"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
