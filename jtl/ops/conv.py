"""2D convolution through oneDNN on CPU, with XLA's convolution everywhere else.

XLA:CPU's convolutions, and above all its weight gradients, are several times
slower than oneDNN's on x86. `conv` calls oneDNN's forward, backward-data and
backward-weights primitives through the XLA FFI when the library could be built
(see `jtl.ops.build`) and the computation is lowered for CPU; on other
platforms, for dtypes other than float32 (and bfloat16 where the CPU has
kernels for it), for empty arrays and negative padding, or without the library it is
`lax.conv_general_dilated`. `Conv` is a drop-in for `flax.linen.Conv` (same
parameter names and shapes, so checkpoints load either way).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax

from jtl.ops import build

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def available(dtype=jnp.float32) -> bool:
  """Whether oneDNN runs convolutions of `dtype` here (builds the library on first call)."""
  return jnp.dtype(dtype).name in build.load()


def _pairs(x_shape, w_shape, strides, padding):
  """Padding as ((top, bottom), (left, right)), whatever form it came in."""
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_shape[1:3], w_shape[:2], strides, padding))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=DIMENSION_NUMBERS)


def _ffi(target, out_shape, a, b, strides, padding, sharding=None):
  attrs = dict(strides=np.asarray(strides, np.int64),
               padding=np.asarray(padding, np.int64).reshape(-1))
  # Under a mesh with explicit axes the result's type carries its sharding, as XLA's would.
  out = jax.ShapeDtypeStruct(out_shape, a.dtype, sharding=sharding or jax.typeof(a).sharding)
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(a, b, **attrs)


def _one_device(x) -> bool:
  """Whether `x` lies on one device: a custom call is not split over a mesh, so a batch
  sharded over several (simulated CPU devices, gloo processes) takes XLA's convolution."""
  mesh = getattr(jax.typeof(x).sharding, "mesh", None)
  return mesh is None or mesh.size <= 1   # An empty mesh (plain jit) has size 0.


def output_shape(x_shape, w_shape, strides, padding) -> tuple[int, int, int, int]:
  """[N, OH, OW, O] of a convolution of `x_shape` with `w_shape`; `padding` as `_pairs` gives."""
  (top, bottom), (left, right) = padding
  return (x_shape[0], (x_shape[1] + top + bottom - w_shape[0]) // strides[0] + 1,
          (x_shape[2] + left + right - w_shape[1]) // strides[1] + 1, w_shape[3])


# oneDNN takes weights as OHWI: it reorders those into its blocked layouts with a jit kernel,
# ~15x faster than the generic one that HWIO gets (onednn_conv.cc); XLA's transpose is cheaper.
def _ohwi(w):
  return jnp.transpose(w, (3, 0, 1, 2))


def _hwio(w):
  return jnp.transpose(w, (1, 2, 3, 0))


def _forward(x, w, strides, padding):
  shape = output_shape(x.shape, w.shape, strides, padding)

  def onednn(x, w):
    return _ffi("jtl_onednn_conv_forward", shape, x, _ohwi(w), strides, padding)

  return lax.platform_dependent(
      x, w, cpu=onednn, default=functools.partial(_xla_conv, strides=strides, padding=padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x, w, strides, padding):
  return _forward(x, w, strides, padding)


def _onednn_conv_fwd(x, w, strides, padding):
  return _forward(x, w, strides, padding), (x, w)


def _onednn_conv_bwd(strides, padding, residuals, dy):
  x, w = residuals

  def xla(dy, x, w):
    _, vjp = jax.vjp(functools.partial(_xla_conv, strides=strides, padding=padding), x, w)
    return vjp(dy)

  def onednn(dy, x, w):
    dx = _ffi("jtl_onednn_conv_backward_data", x.shape, dy, _ohwi(w), strides, padding,
              jax.typeof(x).sharding)
    kh, kw, c, o = w.shape
    dw = _ffi("jtl_onednn_conv_backward_weights", (o, kh, kw, c), x, dy, strides, padding,
              jax.typeof(w).sharding)
    return dx, _hwio(dw)

  return lax.platform_dependent(dy, x, w, cpu=onednn, default=xla)


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def conv(x, w, strides=(1, 1), padding="SAME"):
  """2D convolution of NHWC `x` with HWIO `w`; oneDNN on CPU when available.

  Args:
    x: [N, H, W, C] input.
    w: [KH, KW, C, O] kernel, of `x`'s dtype.
    strides: (sh, sw).
    padding: "SAME", "VALID", an int, or ((top, bottom), (left, right)).

  Returns:
    [N, OH, OW, O], as `lax.conv_general_dilated(x, w, strides, padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))` gives.

  Example:
    >>> y = conv(jnp.ones((8, 32, 32, 3)), jnp.ones((3, 3, 3, 16)), (2, 2), ((1, 1), (1, 1)))
    >>> y.shape
    (8, 16, 16, 16)
  """
  strides = tuple(int(s) for s in strides)
  padding = _pairs(x.shape, w.shape, strides, padding)
  if (jax.default_backend() != "cpu" or not _one_device(x) or x.ndim != 4 or w.ndim != 4 or x.dtype != w.dtype or x.size == 0 or w.size == 0
      or min(sum(padding, ())) < 0 or not available(x.dtype)):
    return _xla_conv(x, w, strides, padding)
  if w.shape[:2] == (1, 1) and strides != (1, 1) and padding == ((0, 0), (0, 0)):
    # A strided 1x1 convolution is a 1x1 convolution of the subsampled input. oneDNN
    # subsamples by itself otherwise ("reduce to unit stride"), and there its weight gradient
    # writes past its workspace when C is below its channel block (8 or 16): wrong weights,
    # heap corruption, the suite's aborts (oneDNN 2.6; oneDNN issue #6035). XLA's strided
    # slice does the same copy, and its transpose the zero-filled gradient.
    x, strides = x[:, ::strides[0], ::strides[1], :], (1, 1)
  return _onednn_conv(x, w, strides, padding)


class Conv(nn.Module):
  """`flax.linen.Conv` for 2D NHWC inputs, computed by `conv`.

  Parameters are `kernel` [KH, KW, C, features] and, with `use_bias`, `bias`
  [features], as in `nn.Conv`; dilation, groups and circular padding are not
  supported.

  Example:
    >>> layer = Conv(16, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False)
    >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  """
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv(x, kernel, strides, self.padding)
    return y if bias is None else y + bias
