"""jtl.ops.conv (oneDNN through the XLA FFI) against lax.conv_general_dilated.

Run by tests/test_ops.py in a fresh process (JTL_ONEDNN=1, as it is by default).
The library must build here (Debian: `apt-get install libdnnl-dev`): a missing
library fails these checks rather than skipping them.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jtl import ops

assert os.environ.get("JTL_ONEDNN") != "0", "these check oneDNN: run them without JTL_ONEDNN=0"
TARGETS = ("jtl_onednn_conv_forward", "jtl_onednn_conv_backward_data",
           "jtl_onednn_conv_backward_weights")


def xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def value_and_grads(conv, x, w, r, strides, padding):
  """Output and the gradients of sum(output * r) wrt x and w, jitted."""
  def loss(x, w):
    y = conv(x, w, strides, padding)
    return jnp.sum(y * r), y
  (_, y), (dx, dw) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, w)
  return y, dx, dw


def assert_matches(got, want, context=""):
  """(y, dx, dw) of oneDNN against XLA's, to float32 rounding."""
  for name, a, b in zip(("y", "dx", "dw"), got, want):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()),
                               err_msg=f"{name}{context}")


def test_library_builds_and_replaces_xla_convolutions():
  assert ops.available(), "oneDNN conv library did not build; see the notice on stderr"
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  # sin() makes the gradients need the forward output, so XLA keeps all three calls.
  grad = jax.grad(lambda x, w: jnp.sin(ops.conv(x, w, (1, 1), "SAME")).sum(), (0, 1))
  hlo = jax.jit(grad).lower(x, w).compile().as_text()
  for target in TARGETS:
    assert f'custom_call_target="{target}"' in hlo
  assert " convolution(" not in hlo


def test_the_trainers_explicitly_sharded_step_runs_on_onednn():
  # The trainer puts batches on a mesh with explicit axes, so types carry shardings: the
  # custom calls' results must carry them too, or the VJP refuses its cotangent.
  from jax.sharding import NamedSharding, PartitionSpec as P
  from jtl import train
  from test_train import fixed_batch, tiny_state
  mesh = jax.make_mesh((1,), ("data",))
  state = jax.device_put(tiny_state(), NamedSharding(mesh, P()))
  batch = train.device_batch(fixed_batch(16), NamedSharding(mesh, P("data")))
  step = jax.jit(train.train_step)
  hlo = step.lower(state, batch, jax.random.key(0)).compile().as_text()
  assert all(f'custom_call_target="{t}"' in hlo for t in TARGETS)
  _, metrics = step(state, batch, jax.random.key(0))
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


@pytest.mark.parametrize("kernel,stride,padding,size", [
    (1, 1, "SAME", 9),
    (1, 2, ((0, 0), (0, 0)), 10),      # ResNet's downsample shortcut
    (3, 1, ((1, 1), (1, 1)), 9),
    (3, 2, ((1, 1), (1, 1)), 10),      # PyTorch-style symmetric padding
    (3, 2, "SAME", 10),                # XLA's SAME: (0, 1) on even sizes
    (7, 2, ((3, 3), (3, 3)), 15),      # ResNet's stem
    (7, 1, ((2, 4), (3, 1)), 12),      # lopsided padding
])
def test_matches_xla(kernel, stride, padding, size):
  kx, kw, kr = jax.random.split(jax.random.key(kernel * 10 + stride), 3)
  x = jax.random.normal(kx, (3, size, size, 5))
  w = jax.random.normal(kw, (kernel, kernel, 5, 6)) / kernel
  y_ref = xla_conv(x, w, (stride, stride), padding)
  r = jax.random.normal(kr, y_ref.shape)
  got = value_and_grads(ops.conv, x, w, r, (stride, stride), padding)
  want = value_and_grads(xla_conv, x, w, r, (stride, stride), padding)
  assert_matches(got, want)


def test_bfloat16_close_to_float32():
  if not ops.available(jnp.bfloat16):
    pytest.skip("this CPU's oneDNN has no bfloat16 convolutions; bfloat16 uses XLA's")
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (2, 8, 8, 16))
  w = jax.random.normal(kw, (3, 3, 16, 32)) / 12
  r = jnp.ones((2, 8, 8, 32))
  bf16 = [t.astype(jnp.bfloat16) for t in (x, w, r)]
  got = value_and_grads(ops.conv, *bf16, (1, 1), "SAME")
  want = value_and_grads(xla_conv, x, w, r, (1, 1), "SAME")
  for name, a, b in zip(("y", "dx", "dw"), got, want):
    assert a.dtype == jnp.bfloat16, name
    np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0.05,
                               atol=0.02 * float(jnp.abs(b).max()), err_msg=name)


@pytest.mark.parametrize("use_bias", [False, True])
def test_conv_module_is_a_drop_in_for_flax_conv(use_bias):
  kwargs = dict(features=8, kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)),
                use_bias=use_bias)
  x = jax.random.normal(jax.random.key(1), (2, 10, 10, 4))
  ours = ops.Conv(**kwargs)
  variables = ours.init(jax.random.key(2), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias
  flax_variables = nn.Conv(**kwargs).init(jax.random.key(2), x)
  assert (jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_variables))
  np.testing.assert_allclose(jax.jit(ours.apply)(variables, x),
                             nn.Conv(**kwargs).apply(variables, x), rtol=1e-5, atol=1e-5)
