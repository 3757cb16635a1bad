"""What fair comparisons need of a run: more test sets scored at the end (data.extra_test,
e.g. out-of-distribution accuracy), and a random init drawn apart from the seed (init_seed)."""

import json
import os

import flax.traverse_util as tu
import jax
import numpy as np
import pytest

from jtl import results, train, writers
from jtl.models import build as model_build

from test_train import tiny_config


@pytest.mark.slow
def test_extra_test_sets_are_scored_logged_and_kept_in_the_results_row(tmp_path):
  shifted = "digits+shift:invert:1"
  config = tiny_config(total_steps=2, **{"data.extra_test": ("digits", shifted)})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  # The same split as the run's own test set scores exactly the same ...
  assert summary["test_accuracy@digits"] == summary["test_accuracy"]
  # ... and a corrupted copy is scored on its own.
  assert summary[f"test_accuracy@{shifted}"] != summary["test_accuracy"]
  rows = writers.read_metrics(str(tmp_path / "run"))
  assert any(f"test_extra/{shifted}/accuracy" in r for r in rows)
  with open(tmp_path / "run" / "summary.json") as f:
    assert json.load(f)[f"test_accuracy@{shifted}"] == summary[f"test_accuracy@{shifted}"]

  class Cell:
    stage, name, labels, fields, workdir = "target", "c", {"seed": 0}, {}, "w"
  row = results.result_row(Cell, summary)
  assert row[f"test_accuracy@{shifted}"] == summary[f"test_accuracy@{shifted}"]


def test_an_unknown_extra_test_set_fails_before_training(tmp_path):
  config = tiny_config(**{"data.extra_test": ("no_such_dataset_here",)})
  with pytest.raises((ValueError, FileNotFoundError), match="no_such_dataset_here"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_init_seed_draws_the_reinitialized_layers_apart_from_the_seed():
  # BnB as Yosinski ran it: a transfer from B (trained from seed s's init) must not re-draw
  # B's own initial upper layers. Same seed, another init_seed: other weights, same data order.
  def init(config):
    init_rng, step_rng = train.rngs(config)
    params = model_build.build(config, {}, 5, init_rng).variables["params"]
    return tu.flatten_dict(params, sep="/"), jax.random.key_data(step_rng)
  (b, b_steps), (same, _) = init(tiny_config()), init(tiny_config(init_seed=0))
  (other, other_steps) = init(tiny_config(init_seed=1000))
  assert all(np.array_equal(b[k], same[k]) for k in b)          # None: the seed's own init.
  assert not np.array_equal(b["stage4/block1/conv2/kernel"], other["stage4/block1/conv2/kernel"])
  assert not np.array_equal(b["head/kernel"], other["head/kernel"])
  np.testing.assert_array_equal(b_steps, other_steps)


def test_lp_ft_phases_have_their_own_lr_and_an_explicit_batchnorm_choice():
  from jtl import models, strategy
  params = model_build.build(tiny_config(), {}, 5).variables["params"]
  def phases(**knobs):
    return strategy.resolve(tiny_config(**{"strategy.name": "lp_ft", **{
        f"strategy.{k}": v for k, v in knobs.items()}}).strategy, params, 10).phases
  probe, tune = phases(lp_lr_mult=3.0, ft_lr_mult=0.05)
  assert probe.lr_mult == {"train": 3.0} and tune.lr_mult == {"train": 0.05}
  assert probe.bn_train() == ()                   # The probe sees the source's statistics ...
  assert tune.bn_train() == models.STAGES          # ... which "auto" then lets follow the target,
  assert phases(ft_bn="frozen")[1].bn_train() == ()   # ... and "frozen" keeps.
  with pytest.raises(ValueError, match="strategy.ft_bn"):
    phases(ft_bn="sometimes")
