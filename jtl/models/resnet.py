"""ResNet v1.5 in Flax linen, laid out to match torchvision / Hugging Face weights.

Every choice that changes numbers follows PyTorch: explicit symmetric padding
(never "SAME", which pads asymmetrically for stride 2 on even sizes), convs
without bias, BatchNorm eps 1e-5, stride on the 3x3 conv of bottlenecks.

Parameter paths are part of the API; strategies select parameters by them:
`stem/conv/kernel`, `stage2/block0/conv1/kernel`, `stage2/block0/downsample/bn/scale`,
`head/kernel`, ... (batch_stats sit under the same paths as `mean` and `var`).
"""

from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jtl import ops

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")
# Where a forward pass can start (`start=`): after a stage, or after the pooling.
LAYERS = STAGES + ("pre_logits",)


def layer_index(start: str | None) -> int:
  """-1 for None (the whole network), else the position of `start` in LAYERS."""
  if start is None:
    return -1
  if start not in LAYERS:
    raise ValueError(f"start={start!r}; expected one of {', '.join(LAYERS)}.")
  return LAYERS.index(start)
BASE_WIDTHS = (64, 128, 256, 512)

# torchvision initialises convs He-normal over fan_out; matching it keeps
# from-scratch runs comparable with PyTorch baselines.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv_bn(x, features, kernel, stride, use_running_average, names, dtype, param_dtype):
  """Bias-free conv then BatchNorm, both created in the calling module's scope."""
  p = kernel // 2  # PyTorch's padding=k//2 on every side, whatever the input size.
  # ops.Conv: nn.Conv's parameters, computed by oneDNN on CPU (3x faster weight gradients
  # than XLA:CPU's) unless JTL_ONEDNN=0 or the library is missing, else by XLA's convolution.
  x = ops.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
              use_bias=False, kernel_init=_conv_init, dtype=dtype,
              param_dtype=param_dtype, name=names[0])(x)
  # Flax's momentum weights the old statistic: 0.9 here is PyTorch's 0.1.
  return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=param_dtype,
                      name=names[1])(x)


class Downsample(nn.Module):
  """1x1 conv + BN shortcut used when a block changes resolution or width."""
  features: int
  stride: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    return _conv_bn(x, self.features, 1, self.stride, use_running_average,
                    ("conv", "bn"), self.dtype, self.param_dtype)


class Block(nn.Module):
  """Basic block (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 to `out_features`, by default
  4x `features`)."""
  features: int
  stride: int = 1
  bottleneck: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_features: int | None = None

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    # (kernel, width, stride) per conv; v1.5 puts the bottleneck's stride on the 3x3.
    if self.bottleneck:
      layers = [(1, self.features, 1), (3, self.features, self.stride),
                (1, self.out_features or 4 * self.features, 1)]
    else:
      layers = [(3, self.features, self.stride), (3, self.features, 1)]
    y = x
    for i, (kernel, features, stride) in enumerate(layers, start=1):
      y = _conv_bn(y, features, kernel, stride, use_running_average,
                   (f"conv{i}", f"bn{i}"), self.dtype, self.param_dtype)
      if i < len(layers):  # the last ReLU comes after the residual add
        y = nn.relu(y)
    out_features = layers[-1][1]
    if self.stride != 1 or x.shape[-1] != out_features:
      x = Downsample(out_features, self.stride, self.dtype, self.param_dtype,
                     name="downsample")(x, use_running_average)
    return nn.relu(x + y)


class Stem(nn.Module):
  """7x7/2 conv + BN + ReLU + 3x3/2 max-pool; if `small`, 3x3/1 conv + BN + ReLU."""
  features: int
  small: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    kernel, stride = (3, 1) if self.small else (7, 2)
    x = nn.relu(_conv_bn(x, self.features, kernel, stride, use_running_average,
                         ("conv", "bn"), self.dtype, self.param_dtype))
    if not self.small:
      # Explicit padding in nn.max_pool pads with -inf, as PyTorch's MaxPool2d does.
      x = ops.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    return x


class Stage(nn.Module):
  """`num_blocks` blocks named block0, block1, ...; the first one may downsample."""
  features: int
  num_blocks: int
  stride: int
  bottleneck: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  out_features: int | None = None   # A bottleneck's output width, if not 4 x features.

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    for i in range(self.num_blocks):
      x = Block(self.features, self.stride if i == 0 else 1, self.bottleneck,
                self.dtype, self.param_dtype, self.out_features,
                name=f"block{i}")(x, use_running_average)
    return x


class ResNet(nn.Module):
  """ResNet v1.5 on NHWC inputs; returns `(logits, features)`.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    bottleneck: bottleneck blocks (ResNet-50 and deeper) instead of basic ones.
    num_classes: size of the `head` Dense layer; must be >= 1.
    small_stem: 3x3/1 stem without max-pool, for 28-64 px images.
    width: multiplier on the stem and stage widths (64, 128, 256, 512).
    stem_width, stage_widths: explicit widths instead (a Hugging Face ResNetConfig's
      embedding_size and hidden_sizes): the stem's channels, and each stage's output
      channels (a bottleneck's inner width is a quarter of it, as in Hugging Face).
    dtype: computation dtype; logits are returned as float32 regardless.
    param_dtype: dtype of parameters and batch statistics.

  Example:
    >>> model = ResNet((2, 2, 2, 2), bottleneck=False, num_classes=10)
    >>> x = jnp.zeros((1, 224, 224, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> logits, out = model.apply(variables, x)  # out["stage4"]: [1, 7, 7, 512]
  """
  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int
  small_stem: bool = False
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  stem_width: int | None = None
  stage_widths: Sequence[int] | None = None

  def widths(self) -> tuple[int, list[tuple[int, int | None]]]:
    """(stem channels, [(inner width, output width or None for the default)] per stage)."""
    scaled = [max(1, round(w * self.width)) for w in BASE_WIDTHS]
    stem = self.stem_width or scaled[0]
    if self.stage_widths is None:
      return stem, [(w, None) for w in scaled]
    return stem, [(max(1, w // 4), w) if self.bottleneck else (w, None)
                  for w in self.stage_widths]

  @nn.compact
  def __call__(self, x, train: bool = False, bn_train: Iterable[str] | None = None,
               start: str | None = None):
    """Runs the network.

    `bn_train=None` lets every BatchNorm follow `train`. Otherwise only the
    listed stages ("stem", "stage1".."stage4") use batch statistics and update
    their running averages when `train`; the others keep the source statistics.
    `start` (one of LAYERS) says `x` is that layer's output, e.g. a cached frozen
    prefix's: only the layers after it run.
    """
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
    bn_train = frozenset(STAGES if bn_train is None else bn_train)
    if unknown := bn_train - set(STAGES):
      raise ValueError(f"Unknown bn_train stages {sorted(unknown)}; expected some of {STAGES}.")

    def frozen_bn(stage):
      return not (train and stage in bn_train)

    stem_width, widths = self.widths()
    first = layer_index(start) + 1   # The first layer to run.
    out = {}
    if first <= 0:
      x = Stem(stem_width, self.small_stem, self.dtype, self.param_dtype,
               name="stem")(x, frozen_bn("stem"))
      out["stem"] = x
    for i, ((features, out_features), num_blocks) in enumerate(zip(widths, self.stage_sizes),
                                                               start=1):
      name = f"stage{i}"
      if first <= i:
        x = Stage(features, num_blocks, 1 if i == 1 else 2, self.bottleneck,
                  self.dtype, self.param_dtype, out_features, name=name)(x, frozen_bn(name))
        out[name] = x
    if first <= 5:
      x = jnp.mean(x, axis=(1, 2))
      out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="head")(x)
    return logits.astype(jnp.float32), out
