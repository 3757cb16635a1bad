"""Tests for jtl.models: shapes, parameter counts and paths, padding, BN freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from jtl.models import MODELS, count_params, get_model, stage_of


def paths(tree):
  return {"/".join(k): v for k, v in flatten_dict(tree).items()}


def abstract_init(model, shape):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def random_variables(model, shape):
  """Variables shaped like init's, filled by numpy.

  Eager `model.init` compiles one RNG kernel per parameter shape and takes
  seconds on CPU; numpy values also give BatchNorm non-trivial statistics.
  """
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if path[-1].key == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_init(model, shape))


def abstract_apply(model, shape, **kwargs):
  x = jnp.zeros(shape)
  variables = abstract_init(model, shape)
  return jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)


@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
    ("resnet101", 44_549_160), ("resnet152", 60_192_808)])
def test_param_counts_match_torchvision(name, expected):
  variables = abstract_init(get_model(name, num_classes=1000), (1, 224, 224, 3))
  assert count_params(variables["params"]) == expected


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 64, 128, 256, 512)),
                                           ("resnet50", (64, 256, 512, 1024, 2048))])
def test_output_shapes_imagenet_stem(name, channels):
  logits, out = abstract_apply(get_model(name, num_classes=7), (2, 224, 224, 3))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  sizes = (56, 56, 28, 14, 7)
  for stage, size, c in zip(["stem", "stage1", "stage2", "stage3", "stage4"], sizes, channels):
    assert out[stage].shape == (2, size, size, c), stage
  assert out["pre_logits"].shape == (2, channels[-1])


def test_output_shapes_small_stem():
  _, out = abstract_apply(get_model("resnet18", num_classes=10, small_stem=True),
                          (2, 32, 32, 3))
  assert out["stem"].shape == (2, 32, 32, 64)
  assert out["stage1"].shape == (2, 32, 32, 64)
  assert out["stage4"].shape == (2, 4, 4, 512)


@pytest.mark.parametrize("name,width,channels", [
    ("resnet18", 0.25, (16, 16, 32, 64, 128)), ("resnet50", 0.25, (16, 64, 128, 256, 512)),
    ("resnet18", 0.001, (1, 1, 1, 1, 1))])
def test_width_multiplier(name, width, channels):
  model = get_model(name, num_classes=10, small_stem=True, width=width)
  _, out = abstract_apply(model, (1, 32, 32, 3))
  got = tuple(out[s].shape[-1] for s in ["stem", "stage1", "stage2", "stage3", "stage4"])
  assert got == channels
  assert out["pre_logits"].shape == (1, channels[-1])


def test_parameter_paths():
  variables = abstract_init(get_model("resnet50", num_classes=10), (1, 64, 64, 3))
  params, stats = paths(variables["params"]), paths(variables["batch_stats"])
  for p in ["stem/conv/kernel", "stem/bn/scale", "stem/bn/bias", "stage1/block0/conv1/kernel",
            "stage1/block0/bn1/scale", "stage1/block0/conv3/kernel", "stage1/block0/bn3/bias",
            "stage1/block0/downsample/conv/kernel",  # 64 -> 256 channels, stride 1
            "stage2/block0/downsample/conv/kernel", "stage2/block0/downsample/bn/scale",
            "stage3/block5/conv2/kernel", "stage4/block2/bn3/scale", "head/kernel", "head/bias"]:
    assert p in params, p
  assert "stage1/block1/downsample/conv/kernel" not in params
  assert "stem/conv/bias" not in params  # convs have no bias
  assert {"stem/bn/mean", "stem/bn/var", "stage2/block0/downsample/bn/mean"} <= set(stats)
  assert params["stage2/block0/conv2/kernel"].shape == (3, 3, 128, 128)  # 3x3 carries stride
  assert {stage_of(p) for p in params} == {"stem", "stage1", "stage2", "stage3", "stage4",
                                           "head"}

  basic = paths(abstract_init(get_model("resnet18", num_classes=10), (1, 64, 64, 3))["params"])
  assert "stage1/block0/downsample/conv/kernel" not in basic  # 64 -> 64, stride 1
  assert "stage2/block0/downsample/bn/bias" in basic
  assert "stage1/block0/conv3/kernel" not in basic


def test_stage_of():
  assert stage_of("stage3/block1/conv2/kernel") == "stage3"
  assert stage_of("stem/bn/scale") == "stem"
  assert stage_of("params/head/kernel") == "head"
  with pytest.raises(ValueError, match="nowhere"):
    stage_of("nowhere/kernel")


def test_unknown_model_name():
  with pytest.raises(ValueError, match="resnet19") as info:
    get_model("resnet19")
  assert "resnet18" in str(info.value)
  assert set(MODELS) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}


def reference_conv(x, kernel, stride, pad):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision="highest")


def reference_bn(x, params, stats):
  return (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


def reference_max_pool(x):  # torch.nn.MaxPool2d(3, stride=2, padding=1)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_padding_matches_pytorch(name):
  # Flax "SAME" pads (2, 3) for a 7x7/2 conv and (0, 1) for a 3x3/2 conv or pool
  # on even sizes; PyTorch pads symmetrically. 16 keeps every strided input even:
  # stem conv 16 -> 8, pool 8 -> 4, stage2 4 -> 2.
  model = get_model(name, num_classes=3, width=0.125)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = random_variables(model, x.shape)
  (_, out), state = model.apply(variables, x, capture_intermediates=True,
                                mutable=["intermediates"])
  params, stats = variables["params"], variables["batch_stats"]

  stem = reference_conv(x, params["stem"]["conv"]["kernel"], 2, 3)
  stem = reference_max_pool(jax.nn.relu(reference_bn(stem, params["stem"]["bn"],
                                                     stats["stem"]["bn"])))
  np.testing.assert_allclose(out["stem"], stem, rtol=1e-5, atol=1e-5)

  # The strided 3x3 conv of stage2/block0: conv1 in basic blocks, conv2 in bottlenecks.
  block, block_stats = params["stage2"]["block0"], stats["stage2"]["block0"]
  block_out = state["intermediates"]["stage2"]["block0"]
  if "conv3" in block:
    conv = "conv2"
    conv_in = jax.nn.relu(reference_bn(block_out["conv1"]["__call__"][0], block["bn1"],
                                       block_stats["bn1"]))
  else:
    conv, conv_in = "conv1", out["stage1"]
  want = reference_conv(conv_in, block[conv]["kernel"], 2, 1)
  np.testing.assert_allclose(block_out[conv]["__call__"][0], want, rtol=1e-5, atol=1e-5)


def test_bn_train_updates_only_listed_stages():
  model = get_model("resnet18", num_classes=5, small_stem=True, width=0.125)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = random_variables(model, x.shape)

  def loss(params):
    (logits, _), state = model.apply({**variables, "params": params}, x, train=True,
                                     bn_train=("stage4",), mutable=["batch_stats"])
    return jnp.mean(logits ** 2), state["batch_stats"]

  grads, new_stats = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  old, new = paths(variables["batch_stats"]), paths(new_stats)
  assert old.keys() == new.keys()
  for p in old:
    if stage_of(p) == "stage4":
      assert not np.array_equal(old[p], new[p]), p
    else:
      np.testing.assert_array_equal(old[p], new[p], err_msg=p)


def test_frozen_bn_uses_running_stats():
  # A stage left out of bn_train must compute exactly what inference computes.
  model = get_model("resnet18", num_classes=5, small_stem=True, width=0.125)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = random_variables(model, x.shape)
  _, eval_out = model.apply(variables, x)
  (_, train_out), _ = model.apply(variables, x, train=True, bn_train=["stage4"],
                                  mutable=["batch_stats"])
  np.testing.assert_array_equal(eval_out["stage3"], train_out["stage3"])
  assert not np.allclose(eval_out["stage4"], train_out["stage4"])
  with pytest.raises(ValueError, match="stage5"):
    model.apply(variables, x, train=True, bn_train=["stage5"], mutable=["batch_stats"])


def test_bfloat16_keeps_float32_params_and_logits():
  model = get_model("resnet18", num_classes=5, small_stem=True, width=0.125,
                    dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(abstract_init(model, x.shape)))
  logits, out = model.apply(random_variables(model, x.shape), x)
  assert logits.dtype == jnp.float32
  assert out["stage4"].dtype == jnp.bfloat16
