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
])
def test_bad_input_fails_with_one_sentence(args, expected, tmp_path):
  result = run_main(*args, workdir=tmp_path)
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("jtl: error:")]
  assert len(lines) == 1 and expected in lines[0], result.stderr
  assert "Traceback" not in result.stderr
