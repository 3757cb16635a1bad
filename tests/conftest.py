"""Fixtures shared by several test files."""

import pytest


@pytest.fixture(scope="session")
def source_run(tmp_path_factory):
  """A tiny source run (tiny_config, 2 steps): what transfer tests start from."""
  from jtl import train
  from test_train import tiny_config
  workdir = str(tmp_path_factory.mktemp("source"))
  train.train_and_evaluate(tiny_config(total_steps=2), workdir)
  return workdir
