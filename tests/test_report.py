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
  assert "0.1 **edge of grid** (val %" in text   # the choice, what it was chosen on, its edge
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


def test_holm_on_known_p_values():
  # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone).
  assert report.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert report.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])   # Capped at 1.
  assert report.holm([0.02]) == [0.02]


def test_a_family_of_differences_is_judged_on_holm_adjusted_p_values():
  # Three differences whose raw p-values are all below 0.05; after Holm only the clearest
  # survives, so only it may be called a win.
  diffs = [report.paired([{"seed": s, "test_accuracy": a} for s, a in enumerate(vals)],
                         [{"seed": s, "test_accuracy": 0.0} for s in range(3)])
           for vals in ([0.10, 0.11, 0.12], [0.03, 0.06, 0.04], [0.04, 0.07, 0.04])]
  raw = [stats.ttest_1samp(d["diffs"], 0).pvalue for d in diffs]
  assert all(p < 0.05 for p in raw)
  report.family_verdicts(diffs, [("a", "base"), ("b", "base"), ("c", "base")])
  assert [d["p"] for d in diffs] == pytest.approx(raw)
  assert [d["p_holm"] for d in diffs] == pytest.approx(report.holm(raw))
  assert [d["verdict"] for d in diffs] == ["a beats base", "no difference detected",
                                           "no difference detected"]


def test_tost_says_equivalent_exactly_when_the_90_percent_interval_is_inside_the_margin():
  diffs = [0.01, 0.0, 0.02, -0.01]
  m, lo, hi = report.mean_ci(diffs, level=0.90)
  for margin in (0.005, 0.015, 0.0199, 0.0201, 0.03, 0.1):
    inside = -margin < lo and hi < margin
    assert (report.tost_p(diffs, margin) < 0.05) == inside, margin
  rows_a = [{"seed": s, "test_accuracy": 0.5 + d} for s, d in enumerate(diffs)]
  rows_b = [{"seed": s, "test_accuracy": 0.5} for s in range(4)]
  d = report.paired(rows_a, rows_b)
  report.family_verdicts([d], [("a", "b")], margin=0.05)
  assert d["verdict"] == "indistinguishable within ±5.0 points (TOST)"
  report.family_verdicts([d], [("a", "b")])   # No declared margin: no equivalence words.
  assert d["verdict"] == "no difference detected"


def test_a_choice_at_the_edge_of_its_grid_is_flagged_and_so_is_the_verdict_on_it():
  numbers = {"scratch": {0.01: [(0.70, 0.70)] * 3, 0.1: [(0.72, 0.71)] * 3,
                         1.0: [(0.60, 0.60)] * 3},
             "ft": {0.01: [(0.75, 0.80), (0.74, 0.81), (0.73, 0.82)],
                    0.1: [(0.70, 0.70)] * 3, 1.0: [(0.65, 0.60)] * 3}}
  chosen = report.select(rows(numbers), SPEC)
  assert chosen[(5, "scratch")]["choice"] == 0.1 and not chosen[(5, "scratch")]["edge"]
  assert chosen[(5, "ft")]["choice"] == 0.01 and chosen[(5, "ft")]["edge"]
  text, diffs = report.tables(rows(numbers), SPEC)
  assert "0.01 **edge of grid**" in text
  assert diffs[0]["edge_arms"] == ["ft"]
  assert "rests on ft chosen at the edge of its grid" in text


def test_tuning_seeds_choose_and_never_report():
  spec = {**SPEC, "tune_seeds": (0,)}
  numbers = {"scratch": {0.01: [(0.9, 0.1), (0.5, 0.70), (0.5, 0.72)],
                         0.1: [(0.1, 0.9), (0.9, 0.60), (0.9, 0.61)]}}
  chosen = report.select(rows(numbers), spec)[(5, "scratch")]
  assert chosen["choice"] == 0.01   # Seed 0's validation alone decides ...
  assert sorted(r["seed"] for r in chosen["rows"]) == [1, 2]   # ... and seed 0 is not reported.


def test_a_choice_on_a_test_result_is_refused():
  for on in ("test_accuracy", "source_test_accuracy"):
    with pytest.raises(ValueError, match="chooses on a test result"):
      report.select(rows(), {**SPEC, "select_on": on})
  report.select(rows(), {**SPEC, "select_on": "target_val_accuracy"})   # Validation: fine.
