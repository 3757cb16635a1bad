"""Domain adaptation: gradient reversal, CORAL / MMD, DANN's step, paired target batches."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jtl import adapt, data, strategy, train
from jtl.models import build as model_build
from jtl.config import base_config, check

from test_train import assert_trees_equal, fixed_batch, tiny_config


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
  x = jnp.array([1.0, -2.0, 3.0])
  np.testing.assert_array_equal(adapt.grad_reverse(x, 0.7), x)
  g = jax.jit(jax.grad(lambda x, lam: jnp.sum(adapt.grad_reverse(x, lam) * jnp.array([1., 2., 3.]))))
  np.testing.assert_allclose(g(x, 0.7), -0.7 * np.array([1., 2., 3.]), rtol=1e-6)
  assert float(adapt.dann_lambda(0, 100)) == 0.0
  assert 0.99 < float(adapt.dann_lambda(100, 100)) <= 1.0


def numpy_mmd(xs, xt, bandwidths):
  x = np.concatenate([xs, xt]).astype(np.float64)
  sq = ((x[:, None] - x[None]) ** 2).sum(-1)
  k = sum(np.exp(-sq / (2 * a * sq.mean())) for a in bandwidths)
  n = len(xs)
  return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def test_coral_and_mmd_are_zero_on_identical_batches_and_grow_with_a_shift():
  x = jax.random.normal(jax.random.key(0), (64, 8))
  assert float(adapt.coral(x, x)) == pytest.approx(0.0, abs=1e-7)
  assert float(adapt.mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
  other = jax.random.normal(jax.random.key(1), (64, 8))
  mean_shift = [float(adapt.mmd(x, other + s)) for s in (0.0, 0.5, 1.0, 2.0)]
  scale_shift = [float(adapt.coral(x, other * s)) for s in (1.0, 1.5, 2.0, 3.0)]
  assert mean_shift == sorted(mean_shift) and mean_shift[-1] > 10 * mean_shift[0]
  assert scale_shift == sorted(scale_shift) and scale_shift[-1] > 10 * scale_shift[0]
  # CORAL sees second-order statistics only: a mean shift leaves it unchanged.
  assert float(adapt.coral(x, x + 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_mmd_matches_a_direct_numpy_computation():
  rng = np.random.default_rng(0)
  xs, xt = rng.normal(size=(5, 3)), rng.normal(0.5, 1.5, size=(7, 3))
  bandwidths = (0.5, 1.0, 2.0)
  got = adapt.mmd(jnp.asarray(xs, jnp.float32), jnp.asarray(xt, jnp.float32), bandwidths)
  assert float(got) == pytest.approx(numpy_mmd(xs, xt, bandwidths), rel=1e-4)


def dann_state(method="dann", name="full_finetune", lr=0.05):
  """tiny_state with a domain head, its strategy's frozen set, and the reversal at full weight."""
  c = tiny_config(**{"optim.name": "sgd", "optim.lr": lr, "optim.weight_decay": 0.0,
                      "optim.schedule": "constant", "strategy.name": name, "strategy.bn": "train",
                      "adapt.method": method, "adapt.hidden": 16, "total_steps": 10})
  built = model_build.build(c, {}, num_classes=3, rng=jax.random.key(0))
  params = adapt.add_head(c.adapt, built.variables["params"], jax.random.key(1))
  strat = strategy.resolve(c.strategy, params, 10)
  state, _ = train.create_state(c, built.forward, {**built.variables, "params": params},
                                strat.phases[0], num_classes=3)
  return state.replace(step=jnp.asarray(10, jnp.int32)), strat


def shifted_batch():
  batch = fixed_batch()
  return {**batch, data.TARGET_IMAGE: 255 - batch["image"]}   # Inverted: a plain shift.


def domain_loss(state, params, head, images, num_labeled):
  """The domain classifier's loss with backbone `params` and head `head` (train mode)."""
  return float(_domain_loss(state.apply_fn, params, state.batch_stats, head, images, num_labeled))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _domain_loss(apply_fn, params, batch_stats, head, images, num_labeled):
  _, out, _ = apply_fn({"params": params, "batch_stats": batch_stats}, images, train=True)
  logits = adapt.DomainHead(16).apply({"params": head}, out["pre_logits"])
  is_source = (jnp.arange(len(images)) < num_labeled).astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits, is_source).mean()


@pytest.mark.slow   # The fast tier's slowest test (30 DANN steps); it keeps test_every_method_adds_its_term_and_trains.
def test_dann_steps_teach_the_head_and_confuse_it_through_the_features():
  state, _ = dann_state()
  batch = shifted_batch()
  images = jnp.concatenate([batch["image"], batch[data.TARGET_IMAGE]])
  n = len(batch["label"])
  head0, params0 = state.params[adapt.HEAD], state.params
  step = jax.jit(train.train_step)
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(0))
  assert {"adapt/dann", "adapt/lambda", "adapt/domain_accuracy"} <= set(metrics)
  before = domain_loss(state, params0, head0, images, n)
  # The head, on the old features, separates the domains better ...
  assert domain_loss(state, params0, state.params[adapt.HEAD], images, n) < before
  # ... and the features, under the old head, have moved to make the domains harder to tell.
  assert domain_loss(state, state.params, head0, images, n) > before


def test_presets_train_the_domain_head_and_frozen_stages_stay_put():
  state, strat = dann_state(name="partial:2")
  labels = strat.phases[0].labels
  assert set(jax.tree.leaves(labels[adapt.HEAD])) == {strategy.TRAIN}
  assert labels["stage1"]["block0"]["conv1"]["kernel"] == strategy.FREEZE
  new, _ = jax.jit(train.train_step)(state, shifted_batch(), jax.random.key(0))
  for stage in ("stem", "stage1", "stage2"):
    assert_trees_equal(new.params[stage], state.params[stage])
  assert not np.allclose(new.params[adapt.HEAD]["out"]["kernel"],
                         state.params[adapt.HEAD]["out"]["kernel"])
  assert not np.allclose(new.params["stage3"]["block0"]["conv1"]["kernel"],
                         state.params["stage3"]["block0"]["conv1"]["kernel"])


@pytest.mark.parametrize("method", ["coral", "mmd", "cdan"])
def test_every_method_adds_its_term_and_trains(method):
  state, _ = dann_state(method)
  new, metrics = jax.jit(train.train_step)(state, shifted_batch(), jax.random.key(0))
  assert float(metrics[f"adapt/{method}"]) > 0
  assert float(metrics["total_loss"]) > float(metrics["loss"])


def test_adapt_settings_are_checked_before_any_work():
  c = base_config()
  c.adapt.method = "dann"
  with pytest.raises(ValueError, match="adapt.method='dann' needs unlabeled target images"):
    check(c)
  c.adapt.target, c.adapt.method = "digits", "dan"
  with pytest.raises(ValueError, match="adapt.method='dan'; expected one of none, dann"):
    check(c)


def test_the_paired_stream_resumes_exactly_and_holds_no_target_labels():
  src = data.load_source("digits", "train")
  target = data.Unlabeled(PoisonedLabels(data.load_source("digits", "test")))

  def stream():
    kw = dict(batch_size=8, image_size=8, channels=1, augment=True)
    return iter(data.paired_dataset(data.train_dataset(src, seed=0, **kw),
                                    data.train_dataset(target, seed=data.target_seed(0),
                                                       labels=False, **kw)))
  it = stream()
  first = [next(it) for _ in range(3)]
  assert set(first[0]) == {"image", "label", data.TARGET_IMAGE}
  assert first[0][data.TARGET_IMAGE].shape == (8, 8, 8, 1)
  saved = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = stream()
  resumed.set_state(json.loads(json.dumps(saved)))   # As a checkpoint stores it.
  for a, b in zip(expected, (next(resumed) for _ in range(4))):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


class PoisonedLabels(data.Source):
  """A target whose labels fail loudly when anything reads them."""

  def __init__(self, source):
    self.parent, self.name, self.split = source, source.name, source.split
    self.class_names = source.class_names

  @property
  def labels(self):
    raise AssertionError("the target's labels were read")

  def __len__(self):
    return len(self.parent)

  def __getitem__(self, i):
    return {"image": self.parent[i]["image"], "label": "not a label"}


@pytest.mark.slow
def test_a_dann_run_never_reads_target_labels(tmp_path, monkeypatch):
  real = adapt.target_splits
  monkeypatch.setattr(adapt, "target_splits", lambda config, n: {
      **real(config, n), "train": PoisonedLabels(real(config, n)["train"])})
  config = tiny_config(**{"adapt.target": "digits", "adapt.method": "dann",
                          "adapt.target_batch_size": 8, "adapt.hidden": 16,
                          "adapt.target_val_per_class": 2})
  full = train.train_and_evaluate(config, str(tmp_path / "full"))
  assert full["adapt_method"] == "dann" and full["target_train_examples"] > 0
  assert full["test_examples"] == 180   # The target's test split (digits 0-4).
  # Killed after its last checkpoint: the rerun redoes only the final evaluation, and its
  # summary still has the target validation it ran before. (Paired-stream resume is tested
  # above; the trainer checkpoints it as it does any stream.)
  os.remove(tmp_path / "full" / "summary.json")
  again = train.train_and_evaluate(config, str(tmp_path / "full"))
  assert again["target_val_accuracy"] == full["target_val_accuracy"]
  assert again["test_accuracy"] == full["test_accuracy"]
