"""Models looked up by name, plus helpers that strategies use on parameter paths."""

import math

import flax.linen as nn
import jax

from jtl.models.resnet import LAYERS, STAGES, ResNet
from jtl.models.resnet_v2 import BIT_MODELS, ResNetV2, get_bit_model

# name -> (blocks per stage, bottleneck blocks?)
MODELS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
# A ResNet whose depths are no standard model's (a Hugging Face config's `depths`): its
# model.json gives stage_sizes and bottleneck.
CUSTOM_RESNET = "resnet"


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the model called `name`; kwargs go to its constructor.

  Example:
    >>> model = get_model("resnet18", num_classes=10, small_stem=True, width=0.5)
  """
  if name in BIT_MODELS:
    return get_bit_model(name, **kwargs)
  # model.json holds lists; a Flax module's fields are tuples, so that it hashes.
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if name == CUSTOM_RESNET and {"stage_sizes", "bottleneck"} <= kwargs.keys():
    return ResNet(**kwargs)   # A converted checkpoint's own depths (model.json says them).
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; known models are {', '.join(MODELS)} and "
                     f"BiT's {', '.join(BIT_MODELS)}.")
  stage_sizes, bottleneck = MODELS[name]
  return ResNet(stage_sizes=stage_sizes, bottleneck=bottleneck, **kwargs)


def count_params(params) -> int:
  """Number of scalars in a pytree (arrays or `jax.eval_shape` structs).

  Example:
    >>> count_params({"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)})
    16
  """
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def stage_of(path: str) -> str:
  """The stage ("stem", "stage1".."stage4" or "head") a "/"-joined path lies in.

  A leading collection name such as "params/" is skipped. The heads on top of the
  backbone, the classifier and a domain classifier ("domain_head"), count as "head".

  Example:
    >>> stage_of("stage3/block1/conv2/kernel")
    'stage3'
  """
  for part in path.split("/"):
    if part in STAGES or part == "head":
      return part
    if part == "domain_head":
      return "head"
    if part == "pre_head_norm":  # ResNetV2's norm of stage4's output belongs to stage4.
      return "stage4"
  raise ValueError(f"Parameter path {path!r} lies in none of {STAGES + ('head',)}.")


__all__ = ["BIT_MODELS", "MODELS", "STAGES", "ResNet", "ResNetV2", "count_params", "get_bit_model",
           "get_model", "stage_of"]
