"""Max pooling as strided slices, with the gradient of XLA's select-and-scatter, for CPU.

XLA:CPU runs `flax.linen.max_pool`'s gradient through a reduce-window over packed
(value, tangent) pairs: on a 2-core Zen 5 the 3x3/2 stem pool of ResNet-18 at 224 px
(batch 32) took 457 ms forward and backward, more than a quarter of the train step (jax
0.10), and 94 ms this way. `max_pool` computes the same numbers from the window's shifted,
strided views, which XLA fuses into single loops: the maximum forward, and backward each
input's share of the output gradient, given, as select-and-scatter gives it, to the first
maximum of each window in row-major order. Other platforms use `nn.max_pool`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _views(xp, window, strides, out_hw):
  """(di, dj, the [N, OH, OW, C] view of padded `xp` at window offset (di, dj)), row-major."""
  n, _, _, c = xp.shape
  (sh, sw), (oh, ow) = strides, out_hw
  for di in range(window[0]):
    for dj in range(window[1]):
      yield di, dj, lax.slice(xp, (0, di, dj, 0),
                              (n, di + (oh - 1) * sh + 1, dj + (ow - 1) * sw + 1, c),
                              (1, sh, sw, 1))


def _out_hw(xp_shape, window, strides):
  return tuple((xp_shape[k + 1] - window[k]) // strides[k] + 1 for k in range(2))


def _forward(x, window, strides, padding):
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out_hw = _out_hw(xp.shape, window, strides)
  return functools.reduce(jnp.maximum, (v for _, _, v in _views(xp, window, strides, out_hw)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return _forward(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
  y = _forward(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  x, y = residuals
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  out_hw = _out_hw(xp.shape, window, strides)
  taken = jnp.zeros(y.shape, bool)
  dxp = jnp.zeros(xp.shape, dy.dtype)
  zero = jnp.zeros((), dy.dtype)
  for di, dj, view in _views(xp, window, strides, out_hw):
    wins = (view == y) & ~taken     # The first maximum of each window takes the gradient.
    taken = taken | wins
    share = jnp.where(wins, dy, zero)
    # Back to the padded input's grid: row di + sh * oy, column dj + sw * ox.
    config = [(0, 0, 0)] + [
        (d, xp.shape[k + 1] - d - ((out_hw[k] - 1) * strides[k] + 1), strides[k] - 1)
        for k, d in enumerate((di, dj))] + [(0, 0, 0)]
    dxp = dxp + lax.pad(share, zero, config)
  (top, _), (left, _) = padding
  return (lax.slice(dxp, (0, top, left, 0), (x.shape[0], top + x.shape[1], left + x.shape[2],
                                               x.shape[3])),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window=(3, 3), strides=(2, 2), padding=((0, 0), (0, 0))):
  """`flax.linen.max_pool(x, window, strides, padding)` for NHWC `x` and explicit padding
  ((top, bottom), (left, right)), padded with -inf: the same values, and the same gradients
  up to the order in which overlapping windows' shares are summed (the last bit of a float).

  >>> max_pool(jnp.arange(16.).reshape(1, 4, 4, 1), padding=((1, 1), (1, 1)))[0, ..., 0]
  Array([[ 5.,  7.],
         [13., 15.]], dtype=float32)
  """
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if jax.default_backend() != "cpu" or x.ndim != 4:
    return nn.max_pool(x, window, strides, padding=padding)
  return _max_pool(x, window, strides, padding)
