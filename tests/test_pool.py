"""jtl.ops.max_pool against flax.linen.max_pool: the same values, the same gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jtl import ops

RNG = np.random.default_rng(0)
STEM = ((1, 1), (1, 1))   # ResNet's 3x3/2 pool; BiT's pads with zeros first, then VALID.


def _value_and_grad(pool, x, weights):
  return jax.jit(jax.value_and_grad(lambda x: (pool(x) * weights).sum().astype(jnp.float32)))(x)


def _both(x, padding, dtype=jnp.float32, integer_weights=False):
  """Both pools' outputs and the gradients of a weighted sum of them."""
  x = jnp.asarray(x, dtype)
  flax_pool = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=padding)
  jtl_pool = lambda x: ops.max_pool(x, (3, 3), (2, 2), padding)
  shape = flax_pool(x).shape
  weights = jnp.asarray(RNG.integers(-3, 4, shape) if integer_weights else RNG.normal(size=shape),
                        dtype)
  return (flax_pool(x), jtl_pool(x), _value_and_grad(flax_pool, x, weights)[1],
          _value_and_grad(jtl_pool, x, weights)[1])


@pytest.mark.parametrize("padding", [STEM, ((0, 0), (0, 0)), ((0, 1), (1, 0))])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_ties_go_to_the_first_maximum_as_in_xla(padding, dtype):
  """Small integers tie in most windows (as ReLU's zeros do): each window's gradient goes to
  its first maximum in row-major order, exactly as select-and-scatter gives it. Integer
  weights keep the sums exact whatever their order."""
  x = RNG.integers(0, 3, size=(2, 11, 8, 3))
  y_flax, y_jtl, g_flax, g_jtl = _both(x, padding, dtype, integer_weights=True)
  assert y_jtl.shape == y_flax.shape and y_jtl.dtype == y_flax.dtype
  np.testing.assert_array_equal(y_jtl, y_flax)
  np.testing.assert_array_equal(np.asarray(g_jtl, np.float32), np.asarray(g_flax, np.float32))


@pytest.mark.parametrize("shape", [(2, 9, 9, 3), (4, 16, 16, 8)])
def test_floats_match_up_to_the_order_of_summation(shape):
  x = np.maximum(RNG.normal(size=shape), 0)   # After ReLU, as in the stem.
  y_flax, y_jtl, g_flax, g_jtl = _both(x, STEM)
  np.testing.assert_array_equal(y_jtl, y_flax)
  assert np.count_nonzero(g_jtl) == np.count_nonzero(g_flax) > 0
  np.testing.assert_allclose(g_jtl, g_flax, rtol=1e-6, atol=1e-6)
