"""Sweeps: grids as data, validated before any cell runs, resumable after a kill."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import pytest

from jtl import report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/tiny.py on three classes, 5 shots each: 4 steps.
TINY = "configs/tiny.py:classes=0-2,shots=5,batch=15,steps=4"
TINY_FIELDS = {"data.val_per_class": 5, "log_every": 2, "checkpoint_every": 2}


def write_study(tmp_path, grid="sweep.product(sweep.axis('strategy.name', ['linear_probe', "
                "'full_finetune']), sweep.seeds(2))"):
  study = tmp_path / "tiny_study.py"
  study.write_text(textwrap.dedent(f'''
      from jtl import sweep
      STUDY = sweep.Study(
          name="tiny",
          stages=(sweep.Stage("target", {TINY!r}, fixed={TINY_FIELDS!r}, grid={grid}),),
          report=sweep.Report(stage="target", compare="strategy", baseline="full_finetune"))
  '''))
  return str(study)


def test_grid_combinators_name_cells_and_fill_templates():
  grid = sweep.product(
      sweep.options("strategy", {"ft": {"strategy.name": "full_finetune"},
                                 "l2sp": {"strategy.name": "full_finetune", "reg.l2_sp": 0.1}}),
      sweep.zipit(sweep.axis("data.shots", [1, 5]), sweep.axis("optim.lr", [0.1, 0.01])),
      sweep.seeds(2))
  study = sweep.Study("s", [sweep.Stage("t", "configs/transfer.py", grid,
                                        fixed={"init": "{root}/source/seed={seed}"})])
  cells = sweep.cells(study, "R")
  assert len(cells) == 2 * 2 * 2
  assert cells[0].name == "strategy=ft,shots=1,lr=0.1,seed=0"
  assert cells[-1].fields == {"init": "R/source/seed=1", "strategy.name": "full_finetune",
                              "reg.l2_sp": 0.1, "data.shots": 5, "optim.lr": 0.01, "seed": 1}
  assert cells[-1].workdir == os.path.join("R", "t", "strategy=l2sp,shots=5,lr=0.01,seed=1")
  with pytest.raises(ValueError, match="equal length"):
    sweep.zipit(sweep.axis("optim.lr", [1]), sweep.seeds(2))


@pytest.mark.parametrize("grid, expected", [
    ("sweep.axis('optim.lrr', [0.1])", "optim.lrr"),
    ("sweep.axis('strategy.name', ['full_finetune', 'partial_2'])", "unknown strategy 'partial_2'"),
    ("sweep.axis('strategy.name', ['partial:9'])", "partial:9"),
    ("sweep.axis('optim.lr', [0.1, -1.0])", "optim.lr=-1.0 must be > 0"),
    ("sweep.axis('total_steps', ['many'])", "total_steps"),
])
def test_a_bad_grid_fails_before_any_cell_runs(tmp_path, grid, expected):
  study = sweep.load_study(write_study(tmp_path, grid))
  root = tmp_path / "out"
  with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
    sweep.run(study, str(root), log=lambda *_: None)
  assert not root.exists()


def test_print_commands_lists_one_launch_line_per_unfinished_cell(tmp_path, capsys):
  study = sweep.load_study(write_study(tmp_path))
  sweep.run(study, str(tmp_path / "out"), print_commands=True)
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  assert lines[0].startswith("./launch.sh ")
  assert "--config.strategy.name=linear_probe" in lines[0] and "--config.seed=0" in lines[0]
  assert lines[0].endswith(os.path.join(str(tmp_path / "out"), "target",
                                        "strategy=linear_probe,seed=0"))


@pytest.mark.slow
def test_a_sweep_killed_after_its_first_cell_does_not_redo_it(tmp_path):
  study_file = write_study(tmp_path)
  root = tmp_path / "out"
  results = root / sweep.RESULTS
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "jtl.cli", "sweep", study_file,
                           f"--workdir={root}", "--jobs=1"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if results.exists() and results.read_text().count("\n") >= 1:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = [json.loads(l) for l in results.read_text().splitlines()]
  assert len(first) == 1, "the sweep should have been killed after its first cell"
  first_dir = first[0]["workdir"]
  stamp = os.path.getmtime(os.path.join(first_dir, sweep.SUMMARY))
  metrics_before = open(os.path.join(first_dir, "metrics.jsonl")).read()

  messages = []
  rows = sweep.run(sweep.load_study(study_file), str(root), log=messages.append)
  assert "4 cells, 1 finished, 3 to run" in messages[0]
  assert os.path.getmtime(os.path.join(first_dir, sweep.SUMMARY)) == stamp
  assert open(os.path.join(first_dir, "metrics.jsonl")).read() == metrics_before
  assert sorted(r["cell"] for r in rows) == sorted(
      f"strategy={s},seed={k}" for s in ("linear_probe", "full_finetune") for k in (0, 1))
  text = report.write_report(str(root))
  assert text.count("| linear_probe |") == 1        # one row per strategy, over both seeds
  assert "| 2 |" in text                             # two seeds each


def test_a_finished_cell_whose_settings_changed_is_refused(tmp_path):
  study = sweep.load_study(write_study(tmp_path, "sweep.seeds(1)"))
  root = tmp_path / "out"
  [cell] = sweep.cells(study, str(root))
  os.makedirs(cell.workdir)
  stored = sweep.cell_config(cell)
  stored.optim.lr = 0.5                  # The run was made with another lr.
  (root / "target" / cell.name / "config.json").write_text(stored.to_json_best_effort())
  with pytest.raises(ValueError, match=r"seed=0: .* other settings \(optim.lr: 0.5 -> 0.1\)"):
    sweep.run(study, str(root), log=lambda *_: None)


def tuned_study():
  """A tuning stage (lr per strategy on seeds 100-101) and a stage that takes its choices."""
  arms = sweep.options("strategy", {"lp": {"strategy.name": "linear_probe"},
                                    "ft": {"strategy.name": "full_finetune"}})
  return sweep.Study("tuned", [
      sweep.Stage("tune", TINY, sweep.product(arms, sweep.axis("optim.lr", [0.01, 0.1, 1.0]),
                                              sweep.seeds([100, 101])), fixed=TINY_FIELDS),
      sweep.Stage("target", TINY, sweep.product(arms, sweep.seeds(3)),
                  fixed={**TINY_FIELDS, "optim.lr": sweep.Tuned("tune", "lr")})],
      report=sweep.Report(stage="target", compare="strategy", select="lr", baseline="ft",
                          tune_stage="tune"))


# Validation accuracy of a tuning cell: lp peaks at lr 1.0 (the grid's edge), ft at 0.1;
# test accuracy would pick otherwise, and is never looked at.
VAL = {("lp", 0.01): 0.5, ("lp", 0.1): 0.6, ("lp", 1.0): 0.7,
       ("ft", 0.01): 0.6, ("ft", 0.1): 0.8, ("ft", 1.0): 0.4}


def finish(root, cells, val=lambda c: VAL[c.labels["strategy"], c.labels["lr"]]):
  from jtl import results
  os.makedirs(root, exist_ok=True)
  for c in cells:
    results.append_result(str(root), results.result_row(
        c, {"val_accuracy": val(c), "test_accuracy": 1 - val(c) + 0.01 * c.labels["seed"] % 7}))


def test_a_tuned_field_waits_for_its_tuning_stage_then_takes_its_best_validation_choice(tmp_path):
  study, root = tuned_study(), str(tmp_path)
  before = [c for c in sweep.cells(study, root) if c.stage == "target"]
  assert all(c.pending and c.fields["optim.lr"] == 0.01 for c in before)   # Validated as such.
  tune = [c for c in sweep.cells(study, root) if c.stage == "tune"]
  finish(root, tune[:-1])   # One ft cell is missing: ft waits, lp is chosen.
  waiting = {c.labels["strategy"]: c.pending for c in sweep.cells(study, root)
             if c.stage == "target"}
  assert waiting == {"lp": False, "ft": True}
  finish(root, tune[-1:])
  after = {c.name: c for c in sweep.cells(study, root) if c.stage == "target"}
  assert not any(c.pending for c in after.values())
  assert after["strategy=lp,seed=0,lr=1"].fields["optim.lr"] == 1.0
  assert after["strategy=ft,seed=2,lr=0.1"].fields["optim.lr"] == 0.1
  assert len(after) == 6


def test_a_tuning_stage_shares_no_seed_with_the_reported_one(tmp_path):
  study = tuned_study()
  bad = sweep.Study(study.name, [study.stages[0], dataclasses.replace(
      study.stages[1], grid=sweep.product(sweep.options("strategy", {
          "lp": {"strategy.name": "linear_probe"}, "ft": {"strategy.name": "full_finetune"}}),
          sweep.seeds([0, 101])))], study.report)
  with pytest.raises(ValueError, match=r"seeds \[101\] are in both"):
    sweep.validate(bad, str(tmp_path))


def test_the_report_of_a_tuned_stage_shows_candidates_and_reports_only_other_seeds(tmp_path):
  study, root = tuned_study(), str(tmp_path)
  sweep.write_study_json(study, root, ["test"])
  finish(root, [c for c in sweep.cells(study, root) if c.stage == "tune"])
  finish(root, [c for c in sweep.cells(study, root) if c.stage == "target"])
  text = report.write_report(root)
  assert "made on seeds 100, 101 (stage `tune`)" in text
  lp_row = next(line for line in text.splitlines() if line.startswith("| lp"))
  assert "**edge of grid**" in lp_row and "| 3 |" in lp_row   # Seeds 0-2 only are reported.
  ft_row = next(line for line in text.splitlines() if line.startswith("| ft"))
  assert "0.1 (val %" in ft_row and "0.01: 60.0" in ft_row and "edge" not in ft_row
  assert "Stage `tune`" not in text


def test_a_sweep_runs_its_tuning_stage_first_and_a_diverged_setting_is_never_chosen(
    tmp_path, monkeypatch):
  from jtl import train
  ran = []

  def fake_run(config, workdir):   # The trainer's contract: a summary.json, or an error.
    arm = {"linear_probe": "lp", "full_finetune": "ft"}[config.strategy.name]
    ran.append((arm, config.optim.lr, config.seed))
    if config.optim.lr == 1.0:
      raise FloatingPointError("loss became nan at step 3; stopped.")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump({"val_accuracy": VAL[arm, config.optim.lr], "test_accuracy": 0.5}, f)

  monkeypatch.setattr(train, "train_and_evaluate", fake_run)
  cleared = []   # Compiled programs are let go after every cell (a long sweep ran out of maps).
  monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(len(ran)))
  rows = sweep.run(tuned_study(), str(tmp_path), log=lambda *_: None)
  assert cleared == list(range(1, 19))
  assert len(ran) == 12 + 6 and all(seed >= 100 for _, _, seed in ran[:12])
  chosen = {(arm, lr) for arm, lr, seed in ran[12:]}
  assert chosen == {("lp", 0.1), ("ft", 0.1)}   # lp's best, 1.0, diverged.
  assert sum(1 for r in rows if r.get("diverged")) == 4
  assert "1.0: diverged or missing" in report.write_report(str(tmp_path))


def test_leave_one_out_never_chooses_a_value_on_the_held_out_setting(tmp_path):
  shifts = sweep.axis("data.name", ["a", "b", "c"], name="shift")
  study = sweep.Study("loso", [
      sweep.Stage("tune", TINY, sweep.product(shifts, sweep.axis("optim.lr", [0.01, 0.1, 1.0]),
                                              sweep.seeds([100]))),
      sweep.Stage("target", TINY, sweep.product(shifts, sweep.seeds(2)),
                  fixed={"optim.lr": sweep.Tuned("tune", "lr", leave_out="shift")})])
  # Each shift's own best lr: a -> 0.01, b -> 0.1, c -> 1.0; c's own score is overwhelming,
  # so any choice that looked at the held-out shift's cells would differ.
  best = {"a": 0.01, "b": 0.1, "c": 1.0}
  finish(str(tmp_path), [c for c in sweep.cells(study, str(tmp_path)) if c.stage == "tune"],
         val=lambda c: (0.99 if c.labels["shift"] == "c" else 0.6)
         if best[c.labels["shift"]] == c.labels["lr"] else 0.5)
  chosen = {c.labels["shift"]: c.labels["lr"] for c in sweep.cells(study, str(tmp_path))
            if c.stage == "target"}
  # a: chosen on b and c (c's 0.99 at lr 1.0 wins); c: on a and b (a tie at 0.55, first met).
  assert chosen == {"a": 1.0, "b": 1.0, "c": 0.01}   # b and c never get their own best.


def test_a_tuned_field_can_borrow_another_arms_choice_and_a_label_only_choice_fills_templates(
    tmp_path):
  # LP-FT's probe lr is linear_probe's choice (lp peaks at 1.0, ft at 0.1 in VAL); a B model's
  # path names the base's chosen lr without setting any config field.
  study, root = tuned_study(), str(tmp_path)
  finish(root, [c for c in sweep.cells(study, root) if c.stage == "tune"])
  borrowed = sweep.Study("borrow", [study.stages[0], sweep.Stage(
      "lpft", TINY, sweep.seeds(2), fixed={
          **TINY_FIELDS, "strategy.name": "lp_ft",
          "strategy.lp_lr_mult": sweep.Tuned("tune", "lr", where={"strategy": "lp"},
                                             label="lp_lr"),
          "init": "{root}/base/lr={base_lr}",
          "label:base_lr": sweep.Tuned("tune", "lr", where={"strategy": "ft"})})])
  cells = {c.name: c for c in sweep.cells(borrowed, root) if c.stage == "lpft"}
  assert set(cells) == {"seed=0,lp_lr=1,base_lr=0.1", "seed=1,lp_lr=1,base_lr=0.1"}
  c = cells["seed=0,lp_lr=1,base_lr=0.1"]
  assert c.fields["strategy.lp_lr_mult"] == 1.0
  assert c.fields["init"] == f"{root}/base/lr=0.1" and "label:base_lr" not in c.fields
  sweep.cell_config(c)   # Every field is a config field.


def test_a_report_tuned_in_two_stages_with_contrasts_and_an_extra_metric_makes_three_families(
    tmp_path):
  """Two tuning stages (their seeds never reported), contrasts beside the baseline in one
  family, and an OOD result whose differences are a family of their own."""
  from jtl import results
  arms = sweep.options("strategy", {"lp": {"strategy.name": "linear_probe"},
                                    "ft": {"strategy.name": "full_finetune"},
                                    "sc": {"strategy.name": "scratch"}})
  lrs = sweep.axis("optim.lr", [0.01, 0.1, 1.0])
  study = sweep.Study("two", [
      sweep.Stage("tune", TINY, sweep.product(arms[:2], lrs, sweep.seeds([100, 101]))),
      sweep.Stage("tune_sc", TINY, sweep.product(arms[2:], lrs, sweep.seeds([100, 101]))),
      sweep.Stage("target", TINY, sweep.product(arms, sweep.seeds(4)), fixed={
          "optim.lr": sweep.Tuned("tune", "lr")})],
      report=sweep.Report(stage="target", compare="strategy", select="lr", baseline="sc",
                          tune_stage=("tune", "tune_sc"), contrasts=(("lp", "ft"),),
                          metrics=("test_accuracy@ood",)))
  # tune_sc's candidates: sc peaks at 0.01. (The target stage's Tuned names stage tune for
  # every arm, so sc's target cells are written by hand below at the tune_sc choice.)
  val = {**VAL, ("sc", 0.01): 0.9, ("sc", 0.1): 0.5, ("sc", 1.0): 0.3}
  root = str(tmp_path)
  sweep.write_study_json(study, root, ["test"])
  finish(root, [c for c in sweep.cells(dataclasses.replace(study, stages=study.stages[:2]),
                                         root)], val=lambda c: val[c.labels["strategy"],
                                                                  c.labels["lr"]])
  test = {"lp": 0.70, "ft": 0.60, "sc": 0.50}     # lp beats sc in distribution by 20 points,
  ood = {"lp": 0.40, "ft": 0.40, "sc": 0.40}      # and by nothing out of it.
  for arm, lr in (("lp", 1.0), ("ft", 0.1), ("sc", 0.01)):
    for seed in range(4):
      cell = sweep.Cell("target", f"strategy={arm},seed={seed},lr={lr}",
                        {"strategy": arm, "seed": seed, "lr": lr}, {}, TINY, "w")
      results.append_result(root, results.result_row(cell, {
          "val_accuracy": 0.5, "test_accuracy": test[arm] + 0.01 * (seed % 2),
          "test_accuracy@ood": ood[arm] + 0.01 * ((seed + (arm == "lp")) % 3)}))
  text = report.write_report(root)
  assert "made on seeds 100, 101 (stage `tune`, `tune_sc`)" in text
  sc_row = next(line for line in text.splitlines() if line.startswith("| sc"))
  assert "0.01 **edge of grid** (val % — 0.01: 90.0" in sc_row and "| 4 |" in sc_row
  assert "test acc@ood %" in text
  families = [line for line in text.splitlines() if line.startswith("Paired differences")]
  assert len(families) == 2 and "3 differences are one family" in families[0]
  assert "`lp` − `ft`" in families[0] and "`test_accuracy@ood`" in families[1]
  assert "- lp − ft: lp beats ft" in text
  assert "- lp − sc (test_accuracy@ood): no difference detected" in text


@pytest.mark.slow
def test_cells_run_side_by_side_give_the_serial_runs_rows_in_the_same_order(tmp_path):
  study = sweep.load_study(write_study(tmp_path))
  serial = sweep.run(study, str(tmp_path / "serial"), log=lambda *_: None)
  both = sweep.run(study, str(tmp_path / "jobs2"), jobs=2, log=lambda *_: None)
  keys = ("cell", "val_accuracy", "test_accuracy", "test_loss")
  assert [tuple(r[k] for k in keys) for r in both] == [tuple(r[k] for k in keys) for r in serial]
  assert len(both) == 4


STAND_IN_SBATCH = """#!/bin/bash
# A stand-in for SLURM's sbatch: runs the array's tasks here, one after another.
for script; do :; done
last=$(sed -n 's/^#SBATCH --array=0-//p' "$script")
for i in $(seq 0 "$last"); do
  SLURM_ARRAY_TASK_ID=$i bash "$script" > "$(dirname "$script")/task_$i.out" 2>&1 || exit 1
done
echo "$@" >> "$(dirname "$script")/sbatch_args"
echo "Submitted batch job 4242"
"""


@pytest.mark.slow
def test_slurm_submits_a_stage_as_a_job_array_and_a_rerun_collects_it(tmp_path, monkeypatch):
  from jtl import cli
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(STAND_IN_SBATCH)
  (bin_dir / "sbatch").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  study = tmp_path / "two_stages.py"
  study.write_text(textwrap.dedent(f'''
      from jtl import sweep
      STUDY = sweep.Study(name="two", stages=(
          sweep.Stage("a", {TINY!r}, fixed={TINY_FIELDS!r}, grid=sweep.product(
              sweep.axis("strategy.name", ["full_finetune"]), sweep.seeds(2))),
          sweep.Stage("b", {TINY!r}, grid=sweep.seeds([5]),
                      fixed={{**{TINY_FIELDS!r}, "strategy.name": "linear_probe",
                              "init": "{{root}}/a/strategy=full_finetune,seed=0"}})),
          report=sweep.Report(stage="a", compare="strategy"))
  '''))
  root = tmp_path / "out"
  args = ["sweep", str(study), f"--workdir={root}", "--slurm", "--sbatch=-p cpu -t 5"]
  assert cli.main(args) == 0   # Stage a: an array of two tasks, run by the stand-in.
  assert (root / "slurm" / "a.cmds").read_text().count("launch.sh") == 2
  assert "-p cpu -t 5" in (root / "slurm" / "sbatch_args").read_text()
  assert not (root / sweep.RESULTS).exists()   # Tasks never write results.jsonl.
  assert cli.main(args) == 0   # Collects a's two rows, submits b.
  rows = [json.loads(l) for l in (root / sweep.RESULTS).read_text().splitlines()]
  assert [r["cell"] for r in rows] == ["strategy=full_finetune,seed=0",
                                       "strategy=full_finetune,seed=1"]
  assert (root / "slurm" / "b.cmds").exists()
  assert cli.main(args) == 0   # Collects b; everything finished: the report is written.
  rows = [json.loads(l) for l in (root / sweep.RESULTS).read_text().splitlines()]
  assert [r["stage"] for r in rows] == ["a", "a", "b"]
  assert (root / "RESULTS.md").exists()
