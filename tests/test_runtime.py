"""What a run holds of the process: signal handlers, the workdir lock, the checkpoint manager."""

import os
import platform
import shutil
import signal
import sys

import pytest

from jtl import runtime, train, workdir

from test_train import tiny_config


def test_preemption_turns_sigterm_into_a_flag_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with runtime.Preemption() as preemption:
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested == "SIGTERM"
    stop = preemption.stop(7, "runs/x")
    assert stop.code == 143 and "SIGTERM at step 7" in str(stop)
  assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_a_failed_restore_releases_the_workdir(source_run, tmp_path):
  # A checkpoint of another width cannot be restored into this model: the run fails, and
  # the lock it took is given back, so the next run on the workdir is not refused.
  run = str(tmp_path / "run")
  shutil.copytree(source_run, run)
  wider = tiny_config(total_steps=2, **{"model.width": 0.25, "allow_changed": ("model.width",)})
  with pytest.raises(Exception):
    train.train_and_evaluate(wider, run)
  assert not os.path.exists(os.path.join(run, workdir.LOCK))
  workdir.lock(run)()   # Free to take.


@pytest.mark.parametrize("before, after", [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", None),   # The caller's own setting stays.
    ("glibc.malloc.hugetlb=1", None),   # Started again already: no loop.
])
def test_jtl_starts_itself_again_with_malloc_on_huge_pages(before, after, monkeypatch):
  from jtl import cli, start
  if platform.libc_ver()[0] != "glibc":
    after = None   # A glibc setting: elsewhere jtl starts once.
  environ = {} if before is None else {"GLIBC_TUNABLES": before}
  monkeypatch.setattr(os, "environ", environ)
  execs = []
  monkeypatch.setattr(os, "execve", lambda path, argv, env: execs.append((path, argv, env)))
  monkeypatch.setattr(sys, "orig_argv", ["python", "/venv/bin/jtl", "sweep", "study.py"])
  monkeypatch.setattr(cli, "main", lambda: 0)
  assert start.main() == 0
  if after is None:
    assert execs == []
  else:
    assert execs == [(sys.executable, [sys.executable, "/venv/bin/jtl", "sweep", "study.py"],
                      {"GLIBC_TUNABLES": after})]


def test_the_metric_writer_writes_tensorboard_without_importing_torch(tmp_path):
  """tensorboardX imports torch whenever it is installed (1.7 s of a run's start); jtl's
  writer keeps it out, the events are still written, and torch still imports afterwards.
  A fresh process: pytest's own may have imported torch already."""
  import subprocess
  from jtl import writers
  code = ("import sys; from jtl import writers; w = writers.MetricWriter(sys.argv[1]); "
          "w.write(1, {'loss': 0.5}); w.close(); print('torch' in sys.modules); "
          "import torch; print(torch.__name__)")
  run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == ["False", "torch"]
  events = [p for p in (tmp_path / writers.TENSORBOARD).iterdir() if "tfevents" in p.name]
  assert events and events[0].stat().st_size > 0
