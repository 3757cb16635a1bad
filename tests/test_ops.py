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
