"""The report's statistics against a direct scipy computation, on hand-made per-seed numbers."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from jtl import report, results


def direct_ci(values):
  values = np.asarray(values, float)
  half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  return values.mean(), values.mean() - half, values.mean() + half


# strategy -> lr -> per-seed (val, test). "ft" at lr 0.1 has the better validation mean,
# though its test accuracy is worse than at lr 0.01: the report must pick 0.1 anyway.
NUMBERS = {
    "scratch": {0.01: [(0.70, 0.71), (0.72, 0.69), (0.69, 0.74)],
                0.1: [(0.60, 0.90), (0.61, 0.90), (0.62, 0.90)]},
    "ft": {0.01: [(0.75, 0.95), (0.74, 0.96), (0.73, 0.97)],
           0.1: [(0.80, 0.78), (0.79, 0.77), (0.81, 0.80)]},
    "probe": {0.01: [(0.71, 0.72), (0.70, 0.75), (0.72, 0.70)]},
}


def rows(numbers=NUMBERS, shots=5):
  out = []
  for strat, by_lr in numbers.items():
    for lr, per_seed in by_lr.items():
      for seed, (val, test) in enumerate(per_seed):
        out.append({"stage": "target", "cell": f"{strat},{lr},{seed},{shots}", "strategy": strat,
                    "lr": lr, "seed": seed, "shots": shots, "val_accuracy": val,
                    "test_accuracy": test, "trainable_params": 10, "train_time_s": 1.0,
                    "first_step_s": 2.0 + seed})
  return out


SPEC = {"stage": "target", "compare": "strategy", "select": "lr", "by": ["shots"],
        "baseline": "scratch", "x": None, "title": "t", "notes": ""}


def test_mean_ci_matches_scipy():
  values = [0.81, 0.79, 0.86, 0.84]
  m, lo, hi = report.mean_ci(values)
  assert (m, lo, hi) == pytest.approx(direct_ci(values), abs=1e-12)
  assert report.mean_ci([0.7]) == (0.7, None, None)


def test_selection_uses_validation_and_paired_differences_match_scipy():
  chosen = report.select(rows(), SPEC)
  assert chosen[(5, "ft")]["choice"] == 0.1          # best val, not best test
  assert chosen[(5, "scratch")]["choice"] == 0.01
  _, diffs = report.tables(rows(), SPEC)
  d = {x["a"]: x for x in diffs}
  ft = [t for _, t in NUMBERS["ft"][0.1]]
  sc = [t for _, t in NUMBERS["scratch"][0.01]]
  m, lo, hi = direct_ci(np.subtract(ft, sc))
  assert (d["ft"]["mean"], d["ft"]["lo"], d["ft"]["hi"]) == pytest.approx((m, lo, hi), abs=1e-12)
  assert d["ft"]["verdict"] == "ft beats scratch"           # lo > 0 here
  assert d["probe"]["verdict"] == "no difference detected"  # interval spans 0
  assert d["ft"]["lo"] > 0 and d["probe"]["lo"] < 0 < d["probe"]["hi"]


def test_paired_differences_use_only_common_seeds():
  a = [{"seed": s, "test_accuracy": v} for s, v in [(0, 0.9), (1, 0.8), (2, 0.7)]]
  b = [{"seed": s, "test_accuracy": v} for s, v in [(1, 0.5), (2, 0.6), (3, 0.0)]]
  d = report.paired(a, b)
  assert d["seeds"] == [1, 2] and d["diffs"] == pytest.approx([0.3, 0.1])


def test_one_seed_has_no_interval_and_the_report_says_so(tmp_path):
  one = {k: {lr: v[:1] for lr, v in by.items()} for k, by in NUMBERS.items()}
  write(tmp_path, rows(one))
  text = report.write_report(str(tmp_path))
  assert "n=1, no interval" in text
  assert "no difference can be claimed" in text
  assert "ft beats" not in text and "scratch beats" not in text


def write(root, result_rows, spec=SPEC):
  with open(os.path.join(root, results.RESULTS), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in result_rows)
  with open(os.path.join(root, results.STUDY_JSON), "w") as f:
    json.dump({"name": "hand", "report": spec, "runs": [
        {"command": "x", "date": "d", "commit": "c", "jax": "j", "jaxlib": "j", "device": "cpu",
         "host": "h"}]}, f)


def test_report_file_shows_chosen_lr_intervals_verdicts_and_plots(tmp_path):
  spec = dict(SPEC, x="shots")
  cells = rows(shots=5) + rows(shots=10)
  cells[0]["first_step_s"] = 9.0   # A cold compile; the others hit the cache.
  write(tmp_path, cells, spec)
  text = report.write_report(str(tmp_path))
  m, lo, hi = direct_ci([t for _, t in NUMBERS["ft"][0.1]])
  assert f"{100 * m:.1f} ± {100 * (hi - lo) / 2:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in text
  assert "0.1 (val %" in text                   # the choice and what it was chosen on
  assert "ft beats scratch" in text
  assert os.path.getsize(tmp_path / "accuracy.png") > 0
  assert os.path.getsize(tmp_path / "differences.png") > 0
  assert (tmp_path / report.RESULTS_MD).read_text() == text
  assert ("Stage `target`: time to the end of the first step (set-up, data, compile) 9.0 s in "
          "the first cell, median 3.0 s in the other 29.") in text


def test_a_study_can_select_on_another_result_and_show_more_columns():
  # Domain adaptation selects on a labeled target carve and shows the source's accuracy.
  cells = rows()
  for r in cells:
    r["target_val_accuracy"] = r["test_accuracy"]   # Here the carve agrees with test ...
    r["source_test_accuracy"] = 0.5 + r["lr"]
  spec = dict(SPEC, select_on="target_val_accuracy", columns=["source_test_accuracy"])
  chosen = report.select(cells, spec)
  assert chosen[(5, "ft")]["choice"] == 0.01        # ... so it picks what val_accuracy would not.
  text, _ = report.tables(cells, spec)
  assert "lr (chosen on target val acc)" in text and "| source test acc % |" in text
  assert "| 51.0 |" in text                         # ft at lr 0.01: source test 0.51
