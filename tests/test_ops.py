"""oneDNN convolutions (jtl/ops): the checks in tests/onednn_checks.py, in a fresh process.

oneDNN is opt-in (JTL_ONEDNN=1): one full test run out of four aborted inside a oneDNN
call after many other tests had run in the same process. A fresh process keeps these
checks apart from the rest of the suite, and an abort shows up here with its output.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow   # A whole test session in a fresh process.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_onednn_convolutions_match_xla_in_a_fresh_process():
  run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/onednn_checks.py"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JTL_ONEDNN="1"), timeout=900)
  assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
  assert " passed" in run.stdout and " failed" not in run.stdout


def test_onednn_survives_a_stress_of_200_rounds_in_one_process():
  """tests/onednn_stress.py: 200 rounds of every direction and the trainer's step against
  XLA, with custom calls starting from several threads and 4 devices at once."""
  run = subprocess.run([sys.executable, "tests/onednn_stress.py", "200"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, JTL_ONEDNN="1"),
                       timeout=1800)
  assert run.returncode == 0, (f"exit code {run.returncode}\n" + run.stdout + run.stderr)[-4000:]
  assert "200 rounds with no abort and no mismatch" in run.stdout


def test_a_new_kernel_at_the_memory_map_limit_is_an_error_not_a_crash():
  """oneDNN 2.6 crashes (SIGSEGV) creating a kernel when the process has used all its
  memory maps; jtl's handler refuses first, in a sentence that names the cause."""
  run = subprocess.run([sys.executable, "tests/onednn_stress.py", "maps"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, JTL_ONEDNN="1"),
                       timeout=600)
  assert run.returncode == 0, (f"exit code {run.returncode}\n" + run.stdout + run.stderr)[-4000:]
  assert "at the map limit: " in run.stdout and "vm.max_map_count" in run.stdout
