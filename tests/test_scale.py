"""Scale: gradient accumulation, bf16, many devices, many processes, a cached frozen prefix."""

import os
import subprocess
import sys

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import checkpoint, models, prefix_cache, strategy, train, writers
from jtl.data import train_dataset
from test_data import toy_source
from test_train import fixed_batch, tiny_config, tiny_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
  # BatchNorm in inference mode: then the loss of the batch is the mean over micro-batches.
  batch = fixed_batch(16)
  step = jax.jit(train.train_step)
  one, m1 = step(tiny_state(bn_train=()), batch, jax.random.key(0))
  four, m4 = step(tiny_state(bn_train=(), accum_steps=4), batch, jax.random.key(0))
  for key in ("loss", "accuracy", "grad_norm"):
    assert float(m4[key]) == pytest.approx(float(m1[key]), rel=1e-5), key
  start = tu.flatten_dict(tiny_state(bn_train=()).params, sep="/")
  a, b = tu.flatten_dict(one.params, sep="/"), tu.flatten_dict(four.params, sep="/")
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert sum(not np.allclose(a[k], start[k]) for k in a) > 10   # The step moved the network.


def test_accumulation_steps_must_divide_the_batch():
  with pytest.raises(ValueError, match="data.batch_size=16 must be divisible by optim.accum_steps=3"):
    train.config_lib.check(tiny_config(**{"optim.accum_steps": 3}))


def test_bfloat16_compute_runs_convolutions_in_bf16_on_float32_params():
  state = tiny_state(dtype=jnp.bfloat16, bn_train=())
  hlo = jax.jit(train.train_step).lower(state, fixed_batch(4), jax.random.key(0)).as_text()
  # XLA's convolutions, or oneDNN's custom calls on CPU: either way on bf16 operands.
  convs = [l for l in hlo.splitlines() if "convolution" in l or "jtl_onednn_conv" in l]
  assert convs and all("bf16" in l for l in convs)
  new, metrics = jax.jit(train.train_step)(state, fixed_batch(4), jax.random.key(0))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(new.params))
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"])


def test_a_global_batch_does_not_depend_on_the_number_of_processes():
  src = toy_source()
  whole = iter(train_dataset(src, batch_size=16, image_size=8, seed=0))
  parts = [iter(train_dataset(src, batch_size=8, image_size=8, seed=0, shard_index=i,
                              shard_count=2)) for i in range(2)]
  for _ in range(5):   # Past an epoch of 64 examples; augmented, so the crops must match too.
    want = next(whole)
    got = [next(p) for p in parts]
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key])


EIGHT_DEVICES = r"""
import sys, numpy as np, flax.traverse_util as tu, jax
sys.path.insert(0, "tests")
from test_train import tiny_config
from jtl import checkpoint, train
assert jax.device_count() == 8, jax.devices()
shards = []
device_batch = train.device_batch
def spy(batch, sharding):
  out = device_batch(batch, sharding)
  shards.append({k: sorted(s.data.shape[0] for s in v.addressable_shards) for k, v in out.items()})
  return out
train.device_batch = spy
train.train_and_evaluate(tiny_config(total_steps=3), sys.argv[1])
assert shards[0] == {"image": [2] * 8, "label": [2] * 8}, shards[0]
np.savez(sys.argv[1] + ".npz", **tu.flatten_dict(checkpoint.load_model(sys.argv[1])[0], sep="/"))
"""


@pytest.mark.slow
def test_data_parallel_over_eight_devices_matches_one(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(tmp_path / "eight")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  train.train_and_evaluate(tiny_config(total_steps=3), str(tmp_path / "one"))
  eight = np.load(str(tmp_path / "eight") + ".npz")
  one = tu.flatten_dict(checkpoint.load_model(str(tmp_path / "one"))[0], sep="/")
  # Same global batch, same math: the first step agrees to float32 rounding (BatchNorm
  # statistics are over the global batch, not per device); later steps drift by rounding.
  first = lambda d: next(r for r in writers.read_metrics(d) if r["step"] == 1)
  a, b = first(str(tmp_path / "one")), first(str(tmp_path / "eight"))
  for key in ("train/loss", "train/grad_norm", "train/accuracy"):
    assert a[key] == pytest.approx(b[key], rel=1e-5), key
  for k, v in one.items():
    np.testing.assert_allclose(eight[k], v, atol=1e-3, err_msg=k)


# configs/tiny.py for 4 steps, augmented: the processes must crop alike too.
TINY = ["configs/tiny.py:steps=4", "--config.data.val_per_class=2", "--config.checkpoint_every=2",
        "--config.data.augment=True"]


@pytest.mark.slow
def test_two_processes_started_by_launch_sh_agree_with_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  two = subprocess.run(["bash", "launch.sh", "--processes", "2", *TINY,
                        "--workdir", str(tmp_path / "two")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert two.returncode == 0, two.stderr[-3000:]
  # The same two devices in one process: the same global batches and collectives.
  one = subprocess.run([sys.executable, "-m", "jtl.main", f"--config={TINY[0]}", *TINY[1:],
                        "--workdir", str(tmp_path / "one")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600,
                       env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  assert one.returncode == 0, one.stderr[-3000:]
  data_files = os.listdir(tmp_path / "two" / "checkpoints" / "4" / "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(data_files)
  rows = {d: [r for r in writers.read_metrics(str(tmp_path / d)) if "train/loss" in r]
          for d in ("one", "two")}
  assert [r["step"] for r in rows["two"]] == [1, 2, 3, 4]
  for a, b in zip(rows["one"], rows["two"]):
    assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
  p1 = tu.flatten_dict(checkpoint.load_model(str(tmp_path / "one"))[0], sep="/")
  p2 = tu.flatten_dict(checkpoint.load_model(str(tmp_path / "two"))[0], sep="/")
  for k in p1:
    np.testing.assert_allclose(p2[k], p1[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name, config, want", [
    ("linear_probe", {}, "pre_logits"),
    ("partial:2", {}, "stage2"),
    ("surgical:stage3", {}, "stage2"),
    ("full_finetune", {}, None),
    ("lp_ft", {}, None),                                   # Its second phase trains all.
    ("linear_probe", {"strategy.bn": "train"}, None),      # BatchNorm statistics move.
    ("linear_probe", {"data.augment": True}, None),
    ("linear_probe", {"data.augment": True, "data.cache_prefix": "no_augment"}, "pre_logits"),
    ("linear_probe", {"data.cache_prefix": "never"}, None),
])
def test_the_cached_prefix_ends_where_the_strategy_stops_freezing(name, config, want):
  c = tiny_config(**{"strategy.name": name, **config})
  model = models.get_model("resnet18", num_classes=3, small_stem=True, width=0.125)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  start, why = prefix_cache.cut(c, strategy.resolve(c.strategy, params, c.total_steps))
  assert start == want and bool(why) == (want is None)


@pytest.mark.slow
def test_training_on_the_cached_prefix_gives_the_same_parameters(source_run, tmp_path,
                                                                 monkeypatch):
  monkeypatch.setenv("JTL_PREFIX_CACHE", str(tmp_path / "cache"))
  target = lambda mode, seed=0: tiny_config(**{
      "init": source_run, "strategy.name": "partial:2", "data.classes": (5, 6, 7, 8, 9),
      "data.cache_prefix": mode, "seed": seed, "total_steps": 6})
  plain = train.train_and_evaluate(target("never"), str(tmp_path / "plain"))
  cached = train.train_and_evaluate(target("auto"), str(tmp_path / "cached"))
  assert plain["prefix_cached_through"] is None and cached["prefix_cached_through"] == "stage2"
  for a, b in zip(checkpoint.load_model(str(tmp_path / "plain")),
                  checkpoint.load_model(str(tmp_path / "cached"))):
    a, b = tu.flatten_dict(a, sep="/"), tu.flatten_dict(b, sep="/")
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
  assert cached["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=0.02)
  # Another seed on the same source and data reuses the activations: nothing is recomputed.
  entries = os.listdir(tmp_path / "cache")
  stamp = os.path.getmtime(tmp_path / "cache" / entries[0] / "activations.npy")
  train.train_and_evaluate(target("auto", seed=1), str(tmp_path / "seed1"))
  assert os.listdir(tmp_path / "cache") == entries
  assert os.path.getmtime(tmp_path / "cache" / entries[0] / "activations.npy") == stamp
