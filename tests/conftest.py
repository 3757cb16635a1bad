"""Fixtures shared by several test files: this session's caches, and the tiny runs that
several tests start from or compare with.

Two tiers: `./launch.sh test -m "not slow"` leaves out the tests marked slow (see
pyproject.toml); `./launch.sh test` runs them all, as CI does.
"""

import collections
import os

import pytest

# A finished run: its workdir and the summary train_and_evaluate returned.
Run = collections.namedtuple("Run", "workdir summary")


@pytest.fixture(scope="session", autouse=True)
def caches(tmp_path_factory):
  """Every cache a run reads or writes: the XLA compilation cache (kept between sessions;
  on from the first test, so no result depends on which test turned it on), and, in a
  folder of this session's own, the frozen-prefix activations and the TFDS label cache.
  The first two are set in os.environ, so that the processes the tests start use them too."""
  from jtl import runtime
  from jtl.data import sources
  # Under pytest-xdist (-n), the workers of one session share one folder: a program one
  # worker compiled, another reads. The caches' writes are atomic renames.
  base = tmp_path_factory.getbasetemp()
  root = base.parent / "caches" if os.environ.get("PYTEST_XDIST_WORKER") else base / "caches"
  root.mkdir(exist_ok=True)
  with pytest.MonkeyPatch.context() as mp:
    # Compiled programs outlive the session (~/.cache/jtl/xla-tests, or $JTL_TEST_XLA_CACHE):
    # entries are keyed by the program, jax's version and the flags, so a rerun of the suite
    # reads what the last one compiled instead of compiling it again. The fast tier took
    # 4:06 from an empty cache and 2:21 on the rerun (2-core Zen 3, 2026-12-07).
    mp.setenv("JTL_COMPILATION_CACHE", os.environ.get("JTL_TEST_XLA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "jtl", "xla-tests"))
    mp.setenv("JTL_PREFIX_CACHE", str(root / "prefix"))
    # A module constant, not an environment variable: processes the tests start still
    # use ~/.cache/jtl/labels (none of them reads a TFDS dataset).
    mp.setattr(sources, "LABELS_CACHE", str(root / "labels"))
    runtime.enable_compilation_cache()
    yield root


@pytest.fixture(scope="session")
def source_run(tmp_path_factory):
  """A tiny source run (tiny_config, 2 steps): what transfer tests start from."""
  from jtl import train
  from test_train import tiny_config
  workdir = str(tmp_path_factory.mktemp("source"))
  train.train_and_evaluate(tiny_config(total_steps=2), workdir)
  return workdir


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """tiny_config() trained without a break (8 steps, checkpoints at 4 and 8): what the
  crash and SIGTERM resumes must equal, and a source to transfer from. Read it; never
  write into it."""
  from jtl import train
  from test_train import tiny_config
  workdir = str(tmp_path_factory.mktemp("reference"))
  return Run(workdir, train.train_and_evaluate(tiny_config(), workdir))
