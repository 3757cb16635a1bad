"""Faults a run must survive, a fast subset of experiments/faults.py: kill -9 mid-checkpoint
write and during validation, a rerun after the final evaluation, a full disk. Each resumed
run must equal an uninterrupted one bit for bit, with every metrics row logged once.

tests/test_train.py has the in-process crash and SIGTERM resumes and the lock; these kill
real `python -m jtl.main` processes (their whole group) at moments read off the workdir.
"""

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import faults  # noqa: E402

STEPS = 6   # Checkpoints at steps 2, 4, 6; validation at 4 and 6.
NO_LOSS = {"missing": [], "duplicated": [], "changed": [], "unexpected": []}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
  """One uninterrupted reference run that every test compares with."""
  lab = faults.Lab(str(tmp_path_factory.mktemp("faults")), steps=STEPS, own_caches=False)
  faults.reference(lab)
  return lab


def assert_recovered_identically(trial):
  assert trial["recovered"], trial["problems"]
  assert trial["params_identical"], trial["problems"]
  assert trial["summary_diff"] == {}
  assert trial["data"] == NO_LOSS
  assert trial["problems"] == []


@pytest.mark.slow
def test_kill9_mid_checkpoint_write_leaves_nothing_that_blocks_an_identical_resume(lab):
  trial, shot = faults.inject(lab, "kill -9", "kill_ckpt", signal.SIGKILL,
                              faults.writing_checkpoint(4))
  assert shot["rc"] == -signal.SIGKILL and shot["survivors"] == []
  # The kill landed mid-write: orbax's temporary folder is there, step 4 is not.
  assert faults.saved_steps(trial["workdir"]) == [2]
  assert any(n.startswith("4.") for n in faults.checkpoint_entries(trial["workdir"]))
  assert_recovered_identically(faults.recover(lab, trial["workdir"], trial, "kill_ckpt"))


@pytest.mark.slow
def test_kill9_during_validation_resumes_identically_and_logs_each_row_once(lab):
  trial, shot = faults.inject(lab, "kill -9", "kill_eval", signal.SIGKILL,
                              faults.logged(4, "train"))
  assert trial["moment"] == "validation at step 4" and shot["rc"] == -signal.SIGKILL
  assert not faults.logged(4, "val")(trial["workdir"], 0)   # Killed before its row.
  assert_recovered_identically(faults.recover(lab, trial["workdir"], trial, "kill_eval"))


@pytest.mark.slow
def test_a_run_killed_after_its_test_row_reruns_to_the_same_summary_and_rows(lab):
  # What a kill between the final test row and summary.json leaves (or a finished run,
  # rerun): the rerun redoes the final evaluation only, keeping the validation it
  # logged before (val_accuracy, best_val_*) and writing the test row once.
  workdir = lab.path("trials/after_test_row")
  shutil.copytree(os.path.join(lab.root, "reference"), workdir)
  os.remove(os.path.join(workdir, "summary.json"))
  trial = faults.new_trial("kill -9 after the test row", name="after_test_row")
  assert_recovered_identically(faults.recover(lab, workdir, trial, "after_test_row"))
  assert trial["rerun_rc"] == [0]


def can_mount_tmpfs(path) -> bool:
  ok = faults.mount_tmpfs(str(path), 1024)
  faults.unmount(str(path))
  return ok


@pytest.mark.slow
def test_a_full_disk_fails_naming_the_path_keeps_the_last_checkpoint_and_resumes(lab, tmp_path):
  if not can_mount_tmpfs(tmp_path / "probe"):
    pytest.skip("mount -t tmpfs is not permitted (needs root)")
  trial = faults.disk_full(lab, str(tmp_path / "small"))   # Mounts and unmounts its tmpfs.
  assert trial["rc"] == 2
  assert "no space left on device" in trial["error"] and trial["workdir"] in trial["error"]
  assert trial["moment"].endswith("(step 2 kept)")
  assert_recovered_identically(trial)


def test_json_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  from jtl import writers
  path = str(tmp_path / "summary.json")
  writers.write_atomic(path, "old")
  def killed(*args):
    raise KeyboardInterrupt("killed before the rename")
  monkeypatch.setattr(writers.os, "replace", killed)
  with pytest.raises(KeyboardInterrupt):
    writers.write_atomic(path, "new, but only half of it made it")
  assert open(path).read() == "old"
  monkeypatch.undo()
  writers.write_atomic(path, "new")
  assert open(path).read() == "new"
