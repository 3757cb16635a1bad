"""The command line fails on bad input with one sentence and exit code 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, workdir):
  return subprocess.run([sys.executable, "-m", "jtl.main", *args, f"--workdir={workdir}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, expected", [
    (["--config=configs/source.py", "--config.optim.lrr=0.1"],
     "unknown config field 'lrr' (did you mean 'lr'?)"),
    (["--config=configs/source.py:modle=resnet18"], "unknown config argument 'modle'"),
    (["--config=configs/source.py:dataset=no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    (["--config=configs/no_such_config.py"], "config file configs/no_such_config.py does not exist"),
    (["--config=configs/transfer.py", "--config.optim.lr=-0.1"], "optim.lr=-0.1 must be > 0"),
    (["--config=configs/transfer.py:shots=-3"], "data.shots=-3 must be > 0"),
    (["--config=configs/transfer.py:steps=-5"], "total_steps=-5 must be > 0"),
    (["--config=configs/transfer.py:small_stem=maybe"], "small_stem='maybe' must be true or false"),
])
def test_bad_input_fails_with_one_sentence(args, expected, tmp_path):
  tmp_path = tmp_path / "run"
  result = run_main(*args, workdir=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("jtl: error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert "Traceback" not in result.stderr
  assert not tmp_path.exists()   # Refused before any work.


def test_a_run_killed_with_sigkill_resumes_to_the_same_parameters(tmp_path):
  """A real crash: the process gets SIGKILL mid-run; rerunning the command finishes it."""
  import signal
  import time

  import flax.traverse_util as tu
  import numpy as np

  from jtl import checkpoint
  args = [sys.executable, "-m", "jtl.main",
          "--config=configs/source.py:dataset=digits,size=8,width=0.125,steps=400,batch=16",
          "--config.data.channels=1", "--config.data.val_per_class=0",
          "--config.checkpoint_every=10", "--config.keep_checkpoints=2", "--config.progress=False"]
  run = lambda workdir, **kw: subprocess.Popen([*args, f"--workdir={workdir}"], cwd=ROOT,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
  killed = run(tmp_path / "killed")
  deadline = time.time() + 240
  ckpts = tmp_path / "killed" / "checkpoints"
  while time.time() < deadline and killed.poll() is None:
    steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if ckpts.exists() else []
    if steps and max(steps) >= 20:
      killed.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  assert killed.wait(60) == -signal.SIGKILL, "the run ended before it could be killed"
  at_kill = max(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert 20 <= at_kill < 400

  for workdir in ("killed", "clean"):
    p = run(tmp_path / workdir)
    assert p.wait(600) == 0, p.stderr.read().decode()[-2000:]
  flat = lambda d: tu.flatten_dict(checkpoint.load_model(str(tmp_path / d))[0], sep="/")
  resumed, clean = flat("killed"), flat("clean")
  for k in clean:
    np.testing.assert_array_equal(resumed[k], clean[k], err_msg=k)
