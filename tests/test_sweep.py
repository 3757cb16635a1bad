"""Sweeps: grids as data, validated before any cell runs, resumable after a kill."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

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
                           f"--workdir={root}"], cwd=ROOT, env=env,
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
