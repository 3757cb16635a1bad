"""AdaBN, test-time adaptation (TENT, SHOT-IM) and the label-free scores: exact statistics,
what each method trains, and that no target label is ever read."""

import json
import os

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import adabn, adapt, checkpoint, cli, convert, data, report, results, strategy, train
from jtl.config import check
from jtl.models import STAGES
from jtl.models import build as model_build

from test_adapt import PoisonedLabels
from test_train import tiny_config


class NoLabels(data.Source):
  """Images only: reading a label in any way raises."""

  def __init__(self, images):
    self.images, self.name, self.split = images, "no_labels", "train"
    self.class_names = ["a", "b", "c"]

  @property
  def labels(self):
    raise AssertionError("a target label was read")

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i]}   # ["label"] raises KeyError.


def target_images(n=37, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


def tiny_model(seed=0):
  """A 3-class tiny model whose BatchNorm statistics are far from any data's."""
  c = tiny_config()
  built = model_build.build(c, {}, num_classes=3, rng=jax.random.key(seed))
  stats = jax.tree.map(lambda x: x + 3.0, built.variables["batch_stats"])
  return built, {**built.variables, "batch_stats": stats}


def bn_inputs(built, variables, images, train):
  """Each BatchNorm's input (the conv before it), by BatchNorm path, via Flax's own capture."""
  _, state = built.model.apply(variables, built.forward.normalize(images), train=train,
                               bn_train=STAGES, capture_intermediates=True,
                               mutable=["batch_stats", "intermediates"])
  flat = tu.flatten_dict(state["intermediates"], sep="/")
  out = {}
  for path, value in flat.items():   # e.g. stage2/block0/conv1/__call__/0
    conv = path.split("/__call__")[0]
    parent, _, name = conv.rpartition("/")
    if parent and name.startswith("conv"):
      out[f"{parent}/{name.replace('conv', 'bn')}"] = np.asarray(value[0] if isinstance(
          value, tuple) else value, np.float64)
  return out


def numpy_moments(chunks):
  """Per path: (mean, variance) over every example and position of the chunks, in float64."""
  out = {}
  for path in chunks[0]:
    x = np.concatenate([c[path] for c in chunks]).reshape(-1, chunks[0][path].shape[-1])
    out[path] = (x.mean(0), x.var(0))
  return out


def test_adabn_statistics_are_the_exact_mean_and_variance_of_each_batchnorm_input():
  built, variables = tiny_model()
  images = target_images()   # 37 images in batches of 16: 16, 16 and 5 real + 11 padding.
  stats = adabn.recompute_batch_stats(built.forward, variables, NoLabels(images),
                                      batch_size=16, image_size=8, channels=1)
  # The pass normalizes each batch with its own real images' statistics (training mode).
  chunks = [bn_inputs(built, variables, images[i:i + 16], train=True) for i in (0, 16, 32)]
  expected = numpy_moments(chunks)
  flat = tu.flatten_dict(stats, sep="/")
  assert len(expected) == 20
  assert {f"{p}/{k}" for p in expected for k in ("mean", "var")} == set(flat)
  for path, (mean, var) in expected.items():
    np.testing.assert_allclose(flat[f"{path}/mean"], mean, rtol=1e-4, atol=1e-5, err_msg=path)
    np.testing.assert_allclose(flat[f"{path}/var"], var, rtol=1e-4, atol=1e-5, err_msg=path)
  # With one batch holding every image, they are exactly what each BatchNorm then meets at
  # test time (inference mode, the new statistics in place).
  one = adabn.recompute_batch_stats(built.forward, variables, NoLabels(images), batch_size=64,
                                    image_size=8, channels=1)
  seen = numpy_moments([bn_inputs(built, {**variables, "batch_stats": one}, images, train=False)])
  flat = tu.flatten_dict(one, sep="/")
  for path, (mean, var) in seen.items():
    np.testing.assert_allclose(flat[f"{path}/mean"], mean, rtol=1e-4, atol=1e-4, err_msg=path)
    np.testing.assert_allclose(flat[f"{path}/var"], var, rtol=1e-4, atol=1e-4, err_msg=path)


def test_label_free_scores_match_numpy_and_read_no_label():
  built, variables = tiny_model()
  images = target_images(21)
  scores = adabn.label_free_scores(built.forward, variables, NoLabels(images), batch_size=8,
                                   image_size=8, channels=1)
  logits, _, _ = built.forward(variables, images, train=False)
  p = np.asarray(jax.nn.softmax(np.asarray(logits, np.float64)))
  entropy = -(p * np.log(p)).sum(-1).mean()
  diversity = -(p.mean(0) * np.log(p.mean(0))).sum()
  assert scores["target_entropy"] == pytest.approx(entropy, rel=1e-4)
  assert scores["target_diversity"] == pytest.approx(diversity, rel=1e-4)
  assert scores["target_im"] == pytest.approx(diversity - entropy, rel=1e-3, abs=1e-5)


def tta_state(method, lr=0.1):
  """A 3-class tiny TrainState for a source-free method: its strategy preset and loss term."""
  c = tiny_config(**{"optim.name": "sgd", "optim.lr": lr, "optim.weight_decay": 0.0,
                     "optim.schedule": "constant", "strategy.name": method,
                     "adapt.method": method})
  built = model_build.build(c, {}, num_classes=3, rng=jax.random.key(0))
  phase = strategy.resolve(c.strategy, built.variables["params"], c.total_steps).phases[0]
  return train.create_state(c, built.forward, built.variables, phase, num_classes=3)[0]


def target_batch(n=24):
  """A source-free step's batch: target images only, no label anywhere."""
  batch = adapt._target_only({"image": target_images(n, seed=1)})
  assert batch["label"].shape == (0,) and batch["image"].shape[0] == 0
  return batch


def im_terms(state, images):
  """(mean entropy, diversity) of the predictions in training mode (as the steps see them)."""
  logits, _, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                images, train=True)
  return tuple(float(x) for x in adapt.information_maximization(logits))


def run_steps(state, batch, steps=5):
  step = jax.jit(train.train_step)
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.key(0))
  return state, metrics


def test_tent_trains_only_batchnorm_scales_and_offsets_and_lowers_the_entropy():
  state, batch = tta_state("tent"), target_batch()
  assert state.apply_fn.bn_train == STAGES   # Every BatchNorm in training mode.
  before = im_terms(state, batch[data.TARGET_IMAGE])[0]
  new, metrics = run_steps(state, batch)
  assert float(metrics["loss"]) == 0.0 and float(metrics["adapt/tent"]) > 0
  old_flat, new_flat = (tu.flatten_dict(s.params, sep="/") for s in (state, new))
  changed = {p for p in old_flat if not np.array_equal(old_flat[p], new_flat[p])}
  affine = {p for p in old_flat if p.rsplit("/", 1)[-1] in ("scale", "bias") and "/bn" in p}
  assert changed and changed <= affine
  assert state.frozen == frozenset(old_flat) - affine   # No gradient, no optimizer state.
  assert im_terms(new, batch[data.TARGET_IMAGE])[0] < before


def test_shot_im_leaves_the_head_untouched_and_trains_the_features():
  state, batch = tta_state("shot_im", lr=0.05), target_batch()
  ent, div = im_terms(state, batch[data.TARGET_IMAGE])
  new, metrics = run_steps(state, batch)
  for k in ("kernel", "bias"):
    np.testing.assert_array_equal(new.params["head"][k], state.params["head"][k])
  assert not np.array_equal(new.params["stage2"]["block0"]["conv1"]["kernel"],
                            state.params["stage2"]["block0"]["conv1"]["kernel"])
  assert {"adapt/entropy", "adapt/diversity"} <= set(metrics)
  ent2, div2 = im_terms(new, batch[data.TARGET_IMAGE])
  assert ent2 - div2 < ent - div   # The IM loss went down.


def test_source_free_methods_need_a_checkpoint_with_its_head():
  c = tiny_config(**{"adapt.target": "digits", "adapt.method": "tent"})
  with pytest.raises(ValueError, match="adapt.method='tent' adapts a trained model"):
    check(c)
  c.init, c.dont_load = "runs/source", ()
  check(c)
  c.adapt.method, c.adapt.target, c.adapt.adabn = "none", "", True
  with pytest.raises(ValueError, match="adapt.adabn=True recomputes BatchNorm statistics"):
    check(c)


def test_a_study_may_select_on_a_label_free_score_but_never_on_a_test_result():
  rows = [{"method": "dann", "weight": w, "seed": s, "target_im": im, "test_accuracy": acc,
           "test_accuracy_before_adabn": acc}
          for w, im, acc in ((0.1, 0.2, 0.9), (1.0, 0.8, 0.5)) for s in (0, 1)]
  spec = {"compare": "method", "by": [], "select": "weight", "select_on": "target_im"}
  assert report.select(rows, spec)[("dann",)]["choice"] == 1.0   # Not the test-best weight.
  with pytest.raises(ValueError, match="chooses on a test result"):
    report.select(rows, {**spec, "select_on": "test_accuracy_before_adabn"})
  assert {"target_entropy", "target_im"} <= set(results.ROW_KEYS)


# ---------------------------------------------------------------------------
# End to end: the trainer and `jtl adapt` from a tiny source checkpoint.
# ---------------------------------------------------------------------------
def poison_target_labels(monkeypatch):
  real = adapt.target_splits
  monkeypatch.setattr(adapt, "target_splits", lambda config, n: {
      **real(config, n), "train": PoisonedLabels(real(config, n)["train"])})


@pytest.mark.slow
@pytest.mark.parametrize("method,strategy_name", [("tent", "tent"), ("shot_im", "shot_im"),
                                                  ("dann", "full_finetune")])
def test_adaptation_with_adabn_from_a_checkpoint_reads_no_target_label(
    method, strategy_name, source_run, tmp_path, monkeypatch):
  poison_target_labels(monkeypatch)
  config = tiny_config(**{"init": source_run, "dont_load": () if method != "dann" else ("head/.*",),
                          "strategy.name": strategy_name, "adapt.method": method,
                          "adapt.adabn": True, "adapt.target": "digits+shift:invert:1",
                          "adapt.target_batch_size": 16, "adapt.hidden": 16, "total_steps": 3})
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["adabn"] is True and summary["adapt_method"] == method
  assert summary["target_im"] == pytest.approx(summary["target_diversity"]
                                               - summary["target_entropy"])
  saved = json.load(open(tmp_path / "run" / "summary.json"))
  assert saved["target_entropy"] == summary["target_entropy"]
  if method != "dann":   # Source-free: the head is the checkpoint's, and it stayed put.
    head = checkpoint.load_model(str(tmp_path / "run"))[0]["head"]
    np.testing.assert_array_equal(head["kernel"],
                                  checkpoint.load_model(source_run)[0]["head"]["kernel"])


@pytest.mark.slow
def test_jtl_adapt_recomputes_statistics_from_a_checkpoint_and_writes_a_workdir(
    source_run, tmp_path, capsys):
  out = str(tmp_path / "adabn")
  assert cli.main(["adapt", source_run, "--target", "digits+shift:invert:1", "--classes", "0-4",
                   "--workdir", out, "--batch_size", "64"]) == 0
  printed = capsys.readouterr().out
  assert "before AdaBN" in printed and f"wrote {out}" in printed
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["adabn"] and summary["target_train_examples"] > 0
  assert {"test_accuracy", "test_accuracy_before_adabn", "target_im"} <= set(summary)
  # What config.init and `jtl predict` read: the same weights, the target's statistics.
  params, stats, meta = convert.load(out)
  src_params, src_stats, _ = convert.load(source_run)
  jax.tree.map(np.testing.assert_array_equal, params, src_params)
  assert not np.allclose(stats["stem"]["bn"]["mean"], src_stats["stem"]["bn"]["mean"])
  assert meta["adabn"]["target"] == "digits+shift:invert:1"
  with pytest.raises(SystemExit):   # A second run never writes over the first.
    cli.main(["adapt", source_run, "--target", "digits", "--classes", "0-4", "--workdir", out])


@pytest.mark.slow
def test_a_zero_step_run_is_source_only_or_adabn_as_jtl_adapt_measures_them(
    source_run, tmp_path):
  """total_steps=0 evaluates config.init untrained: the sweep cells of a study's source-only
  and AdaBN arms, which must equal what `jtl adapt` reports before and after AdaBN."""
  target = "digits+shift:invert:1"
  assert cli.main(["adapt", source_run, "--target", target, "--classes", "0-4",
                   "--workdir", str(tmp_path / "adapt"), "--batch_size", "64"]) == 0
  adapted = json.load(open(tmp_path / "adapt" / "summary.json"))
  runs = {}
  for adabn_on in (False, True):
    config = tiny_config(**{"init": source_run, "dont_load": (), "total_steps": 0,
                            "data.val_per_class": 3, "adapt.target": target,
                            "adapt.adabn": adabn_on})
    runs[adabn_on] = train.train_and_evaluate(config, str(tmp_path / f"adabn={adabn_on}"))
  assert runs[False]["test_accuracy"] == pytest.approx(adapted["test_accuracy_before_adabn"])
  assert runs[True]["test_accuracy"] == pytest.approx(adapted["test_accuracy"], abs=1e-3)
  assert runs[True]["test_accuracy"] != runs[False]["test_accuracy"]
  assert runs[False]["steps"] == 0 and "val_accuracy" in runs[False]


def test_zero_steps_needs_a_checkpoint_to_evaluate():
  from jtl import config as config_lib
  with pytest.raises(ValueError, match="total_steps=0 evaluates a checkpoint"):
    config_lib.check(tiny_config(total_steps=0))


def test_a_capped_target_pool_is_a_fixed_random_part_of_the_unlabeled_images():
  config = tiny_config(**{"adapt.target": "digits+shift:invert:1", "adapt.target_pool": 40})
  full = tiny_config(**{"adapt.target": "digits+shift:invert:1"})
  n = len(config.data.classes)
  pool, everything = adapt.target_splits(config, n)["train"], adapt.target_splits(full, n)["train"]
  assert len(pool) == 40 < len(everything)
  assert set(pool.indices) <= set(everything.indices)
  assert list(pool.indices) == list(adapt.target_splits(config, n)["train"].indices)
  config.seed = 1
  assert list(pool.indices) != list(adapt.target_splits(config, n)["train"].indices)
