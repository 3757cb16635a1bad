"""The trainer: pure steps, resume after a crash or SIGTERM, NaN stop, source -> target."""

import json
import os
import signal

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import checkpoint, models, runtime, strategy, train, workdir, writers
from jtl.models import build as model_build
from jtl.config import load_config


def tiny_config(**overrides):
  """configs/tiny.py (8x8 digits, a ResNet-18 of width 1/8, 8 steps), with `overrides` as
  dotted fields: tiny_config(total_steps=2, **{"optim.lr": 0.05})."""
  c = load_config("configs/tiny.py")
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


def tiny_state(lr=0.1, *, dtype=jnp.float32, bn_train=models.STAGES, accum_steps=1):
  """A 3-class tiny model's TrainState (plain SGD at `lr`, everything trains), built by
  train.create_state as the trainer builds its own."""
  c = tiny_config(**{"optim.name": "sgd", "optim.lr": lr, "optim.weight_decay": 0.0,
                     "optim.schedule": "constant", "optim.accum_steps": accum_steps,
                     "model.dtype": jnp.dtype(dtype).name,
                     "strategy.bn": "train" if bn_train else "frozen"})
  built = model_build.build(c, {}, num_classes=3, rng=jax.random.key(0))
  phase = strategy.resolve(c.strategy, built.variables["params"], c.total_steps).phases[0]
  return train.create_state(c, built.forward, built.variables, phase, num_classes=3)[0]


def fixed_batch(n=12):
  rng = np.random.default_rng(0)
  return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
          "label": np.arange(n, dtype=np.int32) % 3, "mask": np.ones(n, bool)}


def params_of(workdir):
  return checkpoint.load_model(workdir)[0]


def assert_trees_equal(a, b):
  fa, fb = tu.flatten_dict(a, sep="/"), tu.flatten_dict(b, sep="/")
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_one_train_step_lowers_loss_on_a_fixed_batch():
  state, batch = tiny_state(), fixed_batch()
  before = train.eval_step(state, batch)["loss"]
  state, metrics = jax.jit(train.train_step)(state, batch, jax.random.key(0))
  after = train.eval_step(state, batch)["loss"]
  assert int(state.step) == 1
  assert float(after) < float(before)
  assert set(metrics) >= {"loss", "accuracy", "grad_norm", "param_norm", "update_norm"}


def test_eval_step_is_deterministic_and_respects_the_mask():
  state, batch = tiny_state(), fixed_batch()
  a, b = train.eval_step(state, batch), train.eval_step(state, batch)
  assert {k: float(v) for k, v in a.items()} == {k: float(v) for k, v in b.items()}
  batch["mask"][6:] = False
  assert float(train.eval_step(state, batch)["count"]) == 6


def test_frozen_parameters_get_no_gradient():
  state = tiny_state()
  frozen = frozenset(p for p in tu.flatten_dict(state.params, sep="/") if not p.startswith("head"))
  state = state.replace(frozen=frozen)
  new, _ = jax.jit(train.train_step)(state, fixed_batch(), jax.random.key(0))
  old, new = tu.flatten_dict(state.params, sep="/"), tu.flatten_dict(new.params, sep="/")
  for path in old:
    same = np.array_equal(old[path], new[path])
    assert same == (path in frozen), path


@pytest.mark.slow
def test_resume_after_a_crash_matches_an_uninterrupted_run(reference_run, tmp_path, monkeypatch):
  full = reference_run.summary

  real_write = writers.MetricWriter.write
  def crash_at_step_6(self, step, metrics):
    real_write(self, step, metrics)
    if step == 6:
      raise KeyboardInterrupt("simulated kill")
  monkeypatch.setattr(writers.MetricWriter, "write", crash_at_step_6)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "resumed"))
  monkeypatch.setattr(writers.MetricWriter, "write", real_write)
  assert checkpoint.manager(str(tmp_path / "resumed"), 4, 2).latest_step() == 4

  resumed = train.train_and_evaluate(tiny_config(), str(tmp_path / "resumed"))
  assert_trees_equal(params_of(reference_run.workdir), params_of(tmp_path / "resumed"))
  assert resumed["test_accuracy"] == full["test_accuracy"]
  # The log reads as one run: each step once, in metrics.jsonl and in TensorBoard.
  steps = [r["step"] for r in writers.read_metrics(tmp_path / "resumed") if "train/loss" in r]
  assert steps == list(range(1, 9))
  points = tensorboard_points(tmp_path / "resumed")
  assert [s for tag, s in points if tag == "train/loss"] == list(range(1, 9))
  assert len(points) == len(set(points))


def tensorboard_points(workdir):
  """(tag, step) of every scalar in a run's TensorBoard event files, in file order."""
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  for name in sorted(os.listdir(os.path.join(workdir, writers.TENSORBOARD))):
    with open(os.path.join(workdir, writers.TENSORBOARD, name), "rb") as f:
      buf = f.read()
    i = 0
    while i < len(buf):   # TFRecord: length, crc, data, crc.
      (n,) = struct.unpack("<Q", buf[i:i + 8])
      event = event_pb2.Event.FromString(buf[i + 12:i + 12 + n])
      i += 16 + n
      out += [(v.tag, event.step) for v in event.summary.value]
  return out


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(reference_run, tmp_path, monkeypatch):
  handler = signal.getsignal(signal.SIGTERM)
  real_write = writers.MetricWriter.write
  def preempt_at_step_3(self, step, metrics):
    real_write(self, step, metrics)
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)
  monkeypatch.setattr(writers.MetricWriter, "write", preempt_at_step_3)
  with pytest.raises(runtime.Preempted, match="step 3"):
    train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  monkeypatch.setattr(writers.MetricWriter, "write", real_write)
  assert checkpoint.manager(str(tmp_path / "run"), 4, 2).latest_step() == 3
  assert signal.getsignal(signal.SIGTERM) == handler  # The handler was put back.
  train.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  assert_trees_equal(params_of(reference_run.workdir), params_of(tmp_path / "run"))


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"optim.lr": 1e12, "optim.weight_decay": 0.0, "log_every": 4,
                          "total_steps": 40})
  with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step \d+; stopped"):
    train.train_and_evaluate(config, str(tmp_path))
  for step in checkpoint.manager(str(tmp_path), 4, 2).all_steps():
    flat = tu.flatten_dict(checkpoint.load_model(str(tmp_path), step)[0])
    assert all(np.isfinite(v).all() for v in flat.values()), step


@pytest.mark.slow
def test_source_to_target_linear_probe_keeps_the_backbone(reference_run, tmp_path):
  target = tiny_config(**{"data.classes": (5, 6, 7, 8, 9), "data.shots": 4,
                          "data.val_per_class": 2, "init": reference_run.workdir,
                          "strategy.name": "linear_probe"})
  summary = train.train_and_evaluate(target, str(tmp_path / "target"))
  src_params, src_stats = checkpoint.load_model(reference_run.workdir)
  tgt_params, tgt_stats = checkpoint.load_model(str(tmp_path / "target"))
  src, tgt = tu.flatten_dict(src_params, sep="/"), tu.flatten_dict(tgt_params, sep="/")
  for path in tgt:
    if path.startswith("head/"):
      assert not np.array_equal(src[path], tgt[path]), path
    else:
      np.testing.assert_array_equal(src[path], tgt[path], err_msg=path)
  assert_trees_equal(src_stats, tgt_stats)  # Frozen backbone: BatchNorm runs in inference mode.
  head = sum(np.size(v) for k, v in tgt.items() if k.startswith("head/"))
  assert summary["trainable_params"] == head
  assert "best_val_accuracy" in summary


@pytest.mark.slow
def test_transfer_from_a_checkpoint_that_does_not_fit_fails_in_one_sentence(tmp_path):
  train.train_and_evaluate(tiny_config(total_steps=4), str(tmp_path / "source"))
  target = tiny_config(**{"model.width": 0.25, "init": str(tmp_path / "source")})
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(target, str(tmp_path / "target"))
  message = str(info.value)
  assert "\n" not in message
  assert "does not fit the model" in message and "mis-shaped: " in message
  assert "/kernel (checkpoint (3, 3, 8, 8), model (3, 3, 16, 16))" in message


@pytest.mark.slow
def test_bfloat16_compute_trains_with_float32_params(tmp_path):
  summary = train.train_and_evaluate(tiny_config(**{"model.dtype": "bfloat16", "total_steps": 2}),
                                     str(tmp_path))
  params = tu.flatten_dict(checkpoint.load_model(str(tmp_path))[0], sep="/")
  assert all(v.dtype == np.float32 for v in params.values())
  assert np.isfinite(summary["test_loss"])


def test_too_few_images_for_the_shots_names_the_class_and_the_field():
  from jtl import data
  with pytest.raises(ValueError, match=r"class '3' has \d+ training examples .* lower "
                                       r"data.shots"):
    data.make_splits({"name": "digits", "classes": (3, 4), "shots": 1000, "val_per_class": 5},
                     seed=0)


@pytest.mark.slow
def test_predict_uses_the_checkpoints_own_classes_and_preprocessing(tmp_path):
  from PIL import Image
  from jtl import data, predict
  train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path / "run"))
  test = data.make_splits(tiny_config().data, seed=0)["test"]
  paths = []
  for i in range(3):
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(test[i]["image"][..., 0]).resize((32, 32)).save(paths[-1])  # Any size works.
  top = predict.predict(str(tmp_path / "run"), paths, top_k=3)
  assert predict.predict("orbax:" + str(tmp_path / "run"), paths, top_k=3) == top
  # The dry run takes model=auto from the same checkpoint (it used to say "Unknown model").
  from jtl import dry_run
  auto = tiny_config(**{"model.name": "auto", "init": "orbax:" + str(tmp_path / "run"),
                        "strategy.name": "partial:2"})
  shown = dry_run.describe(auto)
  assert shown.startswith("strategy partial:2 on resnet18 (")
  # tiny_config does not augment, so partial:2's frozen stem..stage2 is computed once.
  assert shown.endswith("frozen prefix: stem through stage2 computed once per dataset and "
                        "cached (data.cache_prefix)")
  assert len(top) == 3 and all(len(t) == 3 for t in top)
  for t in top:
    probs = [p for _, p in t]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert {name for name, _ in t} <= set(test.class_names)


def test_a_workdir_is_locked_by_a_live_run_and_a_stale_lock_is_taken_over(tmp_path):
  import json
  import socket
  import subprocess
  import sys
  lock = tmp_path / workdir.LOCK
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    lock.write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
    with pytest.raises(workdir.WorkdirInUse, match=f"pid {live.pid} on host"):
      workdir.lock(str(tmp_path))
  finally:
    live.kill()
    live.wait()
  release = workdir.lock(str(tmp_path))      # The same pid, now dead: a stale lock.
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  release()
  assert not lock.exists()


def test_a_field_the_stored_run_predates_counts_as_its_default(tmp_path):
  """A run made before a config field existed resumes under that field's default, and under
  nothing else."""
  config = tiny_config()
  stored = json.loads(config.to_json_best_effort())
  del stored["adapt"]                     # As a run from before domain adaptation wrote it.
  (tmp_path / workdir.CONFIG_JSON).write_text(json.dumps(stored))
  assert workdir.config_changes(str(tmp_path), config) == []
  config.adapt.method = "coral"
  assert workdir.config_changes(str(tmp_path), config) == ["adapt.method: 'none' -> 'coral'"]


@pytest.mark.slow
def test_resuming_under_other_settings_is_refused_unless_allowed(tmp_path):
  train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
  changed = tiny_config(total_steps=2, **{"optim.lr": 0.05})
  with pytest.raises(ValueError, match=r"other settings \(optim.lr: 0.1 -> 0.05\).*"
                                       r"allow_changed=\"\('optim.lr',\)\""):
    train.train_and_evaluate(changed, str(tmp_path))
  allowed = tiny_config(total_steps=3, allow_changed=("total_steps",))
  assert train.train_and_evaluate(allowed, str(tmp_path))["steps"] == 3
