"""BiT `.npz` checkpoints (`BiT-M-R50x1.npz` ... `BiT-M-R152x4.npz`) into jtl's ResNetV2.

BiT's files use TensorFlow names (`resnet/block1/unit01/a/standardized_conv2d/kernel`),
already in HWIO layout; the unit's sub-layers a/b/c are jtl's gn1+conv1, gn2+conv2,
gn3+conv3, `a/proj` is the shortcut, and the 1x1-conv head becomes a Dense layer.
The model (depth, width factor) is read off the file's shapes.

>>> params, batch_stats, meta = load_bit("BiT-M-R50x1.npz")
>>> meta["model"]["name"], meta["model"]["num_classes"]
('bit_r50x1', 21843)
"""

from __future__ import annotations

import os
import re
import zipfile

import flax.traverse_util as tu
import numpy as np

from jtl.convert.torchvision import model_meta
from jtl.models.resnet_v2 import BIT_MODELS

# BiT trains on images scaled to [-1, 1]. Its fine-tuning resolution depends on
# the dataset size (BiT-HyperRule: 128 px for small images, 384 or 480 px for
# large ones); 224 is where the ImageNet-21k upstream models were trained.
BIT_MEAN, BIT_STD, BIT_IMAGE_SIZE = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224

_LAYER = {"a": "1", "b": "2", "c": "3"}
_GN = {"gamma": "scale", "beta": "bias"}


def bit_path(key: str, value: np.ndarray) -> tuple[str | None, np.ndarray]:
  """jtl path and value of one BiT npz entry, or (None, value) if it is not one.

  Example:
    >>> bit_path("resnet/block2/unit01/a/proj/standardized_conv2d/kernel", w)[0]
    'stage2/block0/downsample/kernel'
  """
  conv, gn = r"standardized_conv2d/kernel", r"group_norm/(gamma|beta)"
  if key == f"resnet/root_block/{conv}":
    return "stem/conv/kernel", value
  if m := re.fullmatch(rf"resnet/{gn}", key):
    return f"pre_head_norm/{_GN[m[1]]}", value.reshape(-1)
  if m := re.fullmatch(r"resnet/head/conv2d/(kernel|bias)", key):
    # A 1x1 conv on a pooled 1x1 map is a Dense layer: (1, 1, C, K) -> (C, K).
    return f"head/{m[1]}", value.reshape(value.shape[-2:]) if m[1] == "kernel" else value
  if m := re.fullmatch(r"resnet/block(\d)/unit(\d+)/(.+)", key):
    unit = f"stage{m[1]}/block{int(m[2]) - 1}"
    if re.fullmatch(rf"a/proj/{conv}", m[3]):
      return f"{unit}/downsample/kernel", value
    if m3 := re.fullmatch(rf"([abc])/{conv}", m[3]):
      return f"{unit}/conv{_LAYER[m3[1]]}/kernel", value
    if m3 := re.fullmatch(rf"([abc])/{gn}", m[3]):
      # Some exports keep GroupNorm's (1, 1, 1, C) broadcast shape.
      return f"{unit}/gn{_LAYER[m3[1]]}/{_GN[m3[2]]}", value.reshape(-1)
  return None, value


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an `.npz`, read eagerly (no pickles), so corruption shows up here.

  Example:
    >>> read_npz("BiT-M-R50x1.npz")["resnet/root_block/standardized_conv2d/kernel"].shape
    (7, 7, 3, 64)
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; expected a BiT .npz checkpoint.")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not an .npz archive (truncated or corrupt?); expected a BiT "
                     "checkpoint, a zip of .npy arrays as numpy.savez writes.")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise ValueError(f"could not read {path} as an .npz (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from None


def infer_bit(params: dict, source: str) -> str:
  """The BIT_MODELS name ("bit_r50x1", ...) whose layout `params` has."""
  try:
    width_factor = params["stem"]["conv"]["kernel"].shape[-1] // 64
  except KeyError:
    raise ValueError(f"{source} has no resnet/root_block; it is not a BiT checkpoint.") from None
  sizes = tuple(len(params.get(f"stage{i}", {})) for i in range(1, 5))
  for name, (stage_sizes, wf) in BIT_MODELS.items():
    if tuple(stage_sizes) == sizes and wf == width_factor:
      return name
  raise ValueError(f"{source} has {sizes} units per stage and width factor {width_factor}, "
                   f"which matches none of {', '.join(BIT_MODELS)}.")


def load_bit(path: str) -> tuple[dict, dict, dict]:
  """(params, batch_stats={}, meta) of a BiT `.npz` checkpoint.

  meta: mean/std 0.5 (inputs in [-1, 1]) at 224 px, classes "class_i".

  Example:
    >>> params, batch_stats, meta = load_bit("BiT-M-R50x1.npz")
  """
  flat, unknown = {}, []
  for key, value in read_npz(path).items():
    jtl_path, value = bit_path(key, value)
    if jtl_path is None:
      unknown.append(key)
    else:
      flat[jtl_path] = value
  if unknown:
    raise ValueError(f"{path} holds {len(unknown)} entries that are not part of a BiT "
                     f"ResNet: {', '.join(unknown[:6])}{' …' if len(unknown) > 6 else ''}.")
  params = tu.unflatten_dict(flat, sep="/")
  name = infer_bit(params, path)
  num_classes = int(params["head"]["kernel"].shape[1]) if "head" in params else 0
  return params, {}, model_meta(name, num_classes, [], BIT_MEAN, BIT_STD, "bit", path,
                                image_size=BIT_IMAGE_SIZE)
