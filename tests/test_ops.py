"""oneDNN convolutions (jtl/ops): the checks in tests/onednn_checks.py, in a fresh process.

oneDNN is on by default (JTL_ONEDNN=0 turns it off). While it was opt-in, one full test run
out of four aborted inside a oneDNN call after many other tests had run in the same process.
A fresh process keeps these checks apart from the rest of the suite, and an abort shows up
here with its output.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("value, expected", [(None, "True"), ("1", "True"), ("0", "False")])
def test_onednn_is_on_by_default_and_JTL_ONEDNN_0_turns_it_off(value, expected):
  env = {k: v for k, v in os.environ.items() if k != "JTL_ONEDNN"}
  if value is not None:
    env["JTL_ONEDNN"] = value
  run = subprocess.run([sys.executable, "-c", "from jtl import ops; print(ops.available())"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == [expected], run.stdout + run.stderr


@pytest.mark.slow   # A whole test session in a fresh process.
def test_onednn_convolutions_match_xla_in_a_fresh_process():
  run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-n", "0", "-p", "no:cacheprovider",
                        "tests/onednn_checks.py"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JTL_ONEDNN="1"), timeout=900)
  # A crash (the 2026-11-27 abort, a SIGSEGV in CI on 2026-12-07) names the check it was in
  # on stdout, and where each thread was at the top of the fault handler's report.
  crash = run.stderr.find("Fatal Python error")
  assert run.returncode == 0, (run.stdout[-1500:] + "\n" + run.stderr[max(crash, 0):][:6000]
                               if crash >= 0 else (run.stdout + run.stderr)[-4000:])
  assert " passed" in run.stdout and " failed" not in run.stdout


@pytest.mark.slow
def test_onednn_survives_a_stress_of_200_rounds_in_one_process():
  """tests/onednn_stress.py: 200 rounds of every direction and the trainer's step against
  XLA, with custom calls starting from several threads and 4 devices at once."""
  run = subprocess.run([sys.executable, "tests/onednn_stress.py", "200"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, JTL_ONEDNN="1"),
                       timeout=1800)
  assert run.returncode == 0, (f"exit code {run.returncode}\n" + run.stdout + run.stderr)[-4000:]
  assert "200 rounds with no abort and no mismatch" in run.stdout


@pytest.mark.slow
def test_a_new_kernel_at_the_memory_map_limit_is_an_error_not_a_crash():
  """oneDNN 2.6 crashes (SIGSEGV) creating a kernel when the process has used all its
  memory maps; jtl's handler refuses first, in a sentence that names the cause."""
  run = subprocess.run([sys.executable, "tests/onednn_stress.py", "maps"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, JTL_ONEDNN="1"),
                       timeout=600)
  assert run.returncode == 0, (f"exit code {run.returncode}\n" + run.stdout + run.stderr)[-4000:]
  assert "at the map limit: " in run.stdout and "vm.max_map_count" in run.stdout


def test_strided_1x1_weight_gradients_stay_right_over_repeated_calls():
  """oneDNN 2.6's 1x1 weight gradient with stride 2 and fewer input channels than its block
  (nhwc) writes past its workspace (oneDNN issue #6035): before jtl subsampled such inputs in
  XLA, all but the first of 300 calls here gave wrong weights, and it was the suite's abort."""
  import jax
  from jtl import ops
  from onednn_checks import assert_matches, value_and_grads, xla_conv
  assert ops.available(), "oneDNN is off (JTL_ONEDNN=0) or did not build (see stderr)"
  kx, kw, kr = jax.random.split(jax.random.key(12), 3)
  x, w = jax.random.normal(kx, (3, 10, 10, 5)), jax.random.normal(kw, (1, 1, 5, 6))
  r = jax.random.normal(kr, (3, 5, 5, 6))
  padding = ((0, 0), (0, 0))
  want = value_and_grads(xla_conv, x, w, r, (2, 2), padding)
  for call in range(20):
    assert_matches(value_and_grads(ops.conv, x, w, r, (2, 2), padding), want, f" of call {call}")
