"""ResNet v2 as in BiT (Big Transfer): pre-activation bottlenecks, GroupNorm, StdConv.

Numbers follow the published BiT code (google-research/big_transfer), so its
`.npz` checkpoints give the logits they gave there:
  * every conv is weight-standardized over (H, W, in) with eps 1e-10 on the variance;
  * GroupNorm has 32 groups and eps 1e-5;
  * the root block is a 7x7/2 conv with 3 zero pixels each side, then *zero*
    padding of 1 and a 3x3/2 max-pool without padding. Zero padding differs from
    the -inf padding of PyTorch's MaxPool2d(padding=1), since the root conv's
    outputs are not followed by a ReLU and can be negative;
  * the stride sits on the 3x3 conv, and the projection shortcut reads the
    pre-activated input (after gn1 + ReLU).

Parameter paths use jtl's names: `stem/conv/kernel`, `stage1/block0/gn1/scale`,
`stage1/block0/conv2/kernel`, `stage1/block0/downsample/kernel`,
`pre_head_norm/scale`, `head/kernel`. There is no BatchNorm, so `batch_stats` is empty.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jtl import ops
from jtl.models.resnet import layer_index

# name -> (blocks per stage, width factor). BiT released R50x1, R50x3, R101x1,
# R101x3, R152x2 and R152x4; the other combinations are here for from-scratch use.
BIT_MODELS = {f"bit_r{depth}x{wf}": (blocks, wf)
              for depth, blocks in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)),
                                    (152, (3, 8, 36, 3)))
              for wf in (1, 2, 3, 4)}

GN_GROUPS, GN_EPS, WS_EPS = 32, 1e-5, 1e-10


class StdConv(nn.Module):
  """Bias-free conv whose kernel is standardized per output channel before use."""
  features: int
  kernel: int
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.initializers.lecun_normal(),
                   (self.kernel, self.kernel, x.shape[-1], self.features), self.param_dtype)
    # Standardize in float32 even for bf16 runs: the mean/var of a kernel are
    # what the whole network's scale rests on.
    w = w.astype(jnp.float32)
    mean = jnp.mean(w, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(w - mean), axis=(0, 1, 2), keepdims=True)
    w = (w - mean) * jax.lax.rsqrt(var + WS_EPS)
    p = (self.kernel - 1) // 2  # BiT's fixed padding; symmetric for odd kernels.
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (self.stride, self.stride),
        ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _group_norm(name, dtype, param_dtype):
  # Two-pass variance: the one-pass E[x^2]-E[x]^2 loses digits on the large,
  # un-normalized residual sums a pre-activation network carries.
  return nn.GroupNorm(num_groups=GN_GROUPS, epsilon=GN_EPS, use_fast_variance=False,
                      dtype=dtype, param_dtype=param_dtype, name=name)


class PreActBottleneck(nn.Module):
  """GN-ReLU-conv1x1, GN-ReLU-conv3x3 (strided), GN-ReLU-conv1x1 (4x wider), plus shortcut."""
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out_features = 4 * self.features
    y = nn.relu(_group_norm("gn1", **kw)(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = StdConv(out_features, 1, self.stride, name="downsample", **kw)(y)
    y = StdConv(self.features, 1, name="conv1", **kw)(y)
    y = nn.relu(_group_norm("gn2", **kw)(y))
    y = StdConv(self.features, 3, self.stride, name="conv2", **kw)(y)
    y = nn.relu(_group_norm("gn3", **kw)(y))
    y = StdConv(out_features, 1, name="conv3", **kw)(y)
    return y + shortcut


class Stem(nn.Module):
  """BiT's root block: 7x7/2 StdConv, zero-pad 1, 3x3/2 max-pool (no norm, no ReLU)."""
  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = StdConv(self.features, 7, 2, self.dtype, self.param_dtype, name="conv")(x)
    # Zeros, not -inf: this is what BiT's own code does, and it changes the
    # result wherever a window at the border holds only negative values.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return ops.max_pool(x, (3, 3), (2, 2))


class Stage(nn.Module):
  """`num_blocks` units named block0, block1, ...; the first one may downsample."""
  features: int
  num_blocks: int
  stride: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_blocks):
      x = PreActBottleneck(self.features, self.stride if i == 0 else 1, self.dtype,
                           self.param_dtype, name=f"block{i}")(x)
    return x


class ResNetV2(nn.Module):
  """BiT ResNet v2 on NHWC inputs; returns `(logits, features)` like jtl's ResNet.

  Attributes:
    stage_sizes: units per stage, e.g. (3, 4, 6, 3) for R50.
    num_classes: size of the `head` Dense layer; must be >= 1.
    width_factor: BiT's "x1".."x4" multiplier on all widths.
    dtype: computation dtype; logits are returned as float32 regardless.
    param_dtype: dtype of parameters.

  Example:
    >>> model = ResNetV2((3, 4, 6, 3), num_classes=10)
    >>> x = jnp.zeros((1, 224, 224, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> logits, out = model.apply(variables, x)  # out["stage4"]: [1, 7, 7, 2048]
  """
  stage_sizes: Sequence[int]
  num_classes: int
  width_factor: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, bn_train: Iterable[str] | None = None,
               start: str | None = None):
    """Runs the network; `train` and `bn_train` are accepted for jtl's trainer and unused.

    `start` (one of LAYERS) says `x` is that layer's output: only the layers after it run.
    """
    del train, bn_train  # GroupNorm behaves the same in training and inference.
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = 64 * self.width_factor
    first = layer_index(start) + 1   # The first layer to run.
    out = {}
    if first <= 0:
      x = Stem(width, name="stem", **kw)(x)
      out["stem"] = x
    for i, num_blocks in enumerate(self.stage_sizes, start=1):
      name = f"stage{i}"
      if first <= i:
        x = Stage(width * 2 ** (i - 1), num_blocks, 1 if i == 1 else 2, name=name, **kw)(x)
        out[name] = x
    if first <= 5:
      # Pre-activation units leave their sum un-normalized: one last GN + ReLU.
      x = nn.relu(_group_norm("pre_head_norm", **kw)(x))
      x = jnp.mean(x, axis=(1, 2))
      out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, name="head", **kw)(x)
    return logits.astype(jnp.float32), out


def get_bit_model(name: str, *, num_classes: int, small_stem: bool = False,
                  width: float = 1.0, dtype: Any = jnp.float32,
                  param_dtype: Any = jnp.float32) -> ResNetV2:
  """Builds the BiT model called `name` (a key of BIT_MODELS) with get_model's kwargs.

  `small_stem` and `width` exist so jtl's trainer can pass its usual model config;
  BiT has one stem, and its width is part of the name (x1..x4).

  Example:
    >>> model = get_bit_model("bit_r50x1", num_classes=10)
  """
  if name not in BIT_MODELS:
    raise ValueError(f"Unknown BiT model {name!r}; known are {', '.join(BIT_MODELS)}.")
  if small_stem or width != 1.0:
    raise ValueError(f"{name} has BiT's fixed stem and its width in the name; "
                     f"small_stem={small_stem} and width={width} are not supported.")
  stage_sizes, width_factor = BIT_MODELS[name]
  return ResNetV2(stage_sizes, num_classes, width_factor, dtype=dtype, param_dtype=param_dtype)
