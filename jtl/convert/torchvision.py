"""torchvision ResNet state dicts (`resnet18.pth` ...) into jtl's ResNet, read without running code.

The layout rules live here and Hugging Face's loader reuses them: a PyTorch
module name becomes a jtl module path, conv weights go OIHW -> HWIO, Linear
weights are transposed, BatchNorm `weight/bias` become `scale/bias` params and
`running_mean/var` become `mean/var` batch_stats.

>>> params, batch_stats, meta = load_torchvision("resnet50.pth")
>>> meta["model"]["name"], meta["model"]["num_classes"]
('resnet50', 1000)
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping

import flax.traverse_util as tu
import ml_dtypes
import numpy as np

from jtl.convert import safe_pickle
from jtl.models import MODELS

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# torchvision module name -> jtl module path (first full match wins).
_TORCHVISION = (
    (r"conv1", r"stem/conv"),
    (r"bn1", r"stem/bn"),
    (r"layer(\d)\.(\d+)\.(conv|bn)(\d)", r"stage\1/block\2/\3\4"),
    (r"layer(\d)\.(\d+)\.downsample\.0", r"stage\1/block\2/downsample/conv"),
    (r"layer(\d)\.(\d+)\.downsample\.1", r"stage\1/block\2/downsample/bn"),
    (r"fc", r"head"),
)
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def rename_torchvision(module: str) -> str | None:
  """jtl module path of a torchvision module name, or None if it has none."""
  for pattern, repl in _TORCHVISION:
    if re.fullmatch(pattern, module):
      return re.sub(pattern, repl, module)
  return None


def to_jtl(state: Mapping[str, np.ndarray], rename: Callable[[str], str | None],
           source: str) -> tuple[dict, dict]:
  """Maps a PyTorch ResNet state dict to nested (params, batch_stats) numpy trees.

  `rename` turns a module name ("layer1.0.conv1") into a jtl path
  ("stage1/block0/conv1"). Keys it cannot place are raised together, naming `source`.

  Example:
    >>> params, stats = to_jtl(state, rename_torchvision, "resnet18.pth")
  """
  flat = {"params": {}, "batch_stats": {}}
  unknown = []
  for key, value in state.items():
    module, _, leaf = key.rpartition(".")
    path = rename(module)
    kind = path and path.rsplit("/", 1)[-1]
    value = np.asarray(value)
    if path is None:
      unknown.append(key)
    elif leaf == "num_batches_tracked":
      continue  # A training counter; jtl's BatchNorm uses a fixed momentum.
    elif kind == "head" and leaf in ("weight", "bias"):
      flat["params"][f"{path}/{'kernel' if leaf == 'weight' else 'bias'}"] = value.T
    elif kind.startswith("conv") and leaf == "weight" and value.ndim == 4:
      flat["params"][f"{path}/kernel"] = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif kind.startswith("bn") and leaf in _BN_LEAVES:
      collection, name = _BN_LEAVES[leaf]
      flat[collection][f"{path}/{name}"] = value
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f"{source} holds {len(unknown)} keys that are not part of a ResNet: "
                     f"{', '.join(unknown[:6])}{' …' if len(unknown) > 6 else ''}.")
  return tuple(tu.unflatten_dict(f, sep="/") for f in (flat["params"], flat["batch_stats"]))


def infer_resnet(params: dict, source: str) -> str:
  """The jtl model name ("resnet50", ...) whose block layout `params` has."""
  sizes = tuple(len(params.get(f"stage{i}", {})) for i in range(1, 5))
  bottleneck = "conv3" in params.get("stage1", {}).get("block0", {})
  for name, (stage_sizes, is_bottleneck) in MODELS.items():
    if tuple(stage_sizes) == sizes and is_bottleneck == bottleneck:
      stem = params["stem"]["conv"]["kernel"]
      if stem.shape[-1] != 64:
        raise ValueError(f"{source} is a {name} with {stem.shape[-1]} stem channels; "
                         "only the standard width (64) is supported.")
      return name
  raise ValueError(f"{source} has {sizes} {'bottleneck' if bottleneck else 'basic'} blocks "
                   f"per stage, which matches none of {', '.join(MODELS)}.")


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict as numpy arrays, loaded without executing code.

  With torch installed this is `torch.load(weights_only=True)`; without it, the
  allow-list unpickler in `jtl.convert.safe_pickle`. A `{"state_dict": ...}` or
  `{"model": ...}` wrapper and DataParallel's `module.` prefix are undone.

  Example:
    >>> state = read_torch_file("resnet18.pth")
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist.")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    torch = None
  if torch is None:
    obj = safe_pickle.load(path)
  else:
    try:
      obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f"refused to load {path}: it is not a plain state dict of tensors, "
                       f"and unpickling it could run code ({first}).") from None
    except Exception as e:  # zip/format errors come as RuntimeError, EOFError, ...
      raise ValueError(f"could not read {path} as a PyTorch file: {type(e).__name__}: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, Mapping) and set(obj) == {wrapper}:
      obj = obj[wrapper]
  if torch is not None and isinstance(obj, Mapping):
    obj = {k: _to_numpy(v, torch) if isinstance(v, torch.Tensor) else v for k, v in obj.items()}
  if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
  if obj and all(k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return dict(obj)


def _to_numpy(t, torch) -> np.ndarray:
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:  # numpy has no bfloat16; reinterpret the bits.
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


def load_torchvision(path: str) -> tuple[dict, dict, dict]:
  """(params, batch_stats, meta) of a torchvision ResNet `.pth/.pt/.bin` state dict.

  `meta` follows jtl's model.json: ImageNet mean/std at 224 px, classes "class_i".

  Example:
    >>> params, batch_stats, meta = load_torchvision("resnet18.pth")
  """
  state = read_torch_file(path)
  params, batch_stats = to_jtl(state, rename_torchvision, path)
  name = infer_resnet(params, path)
  num_classes = int(params["head"]["kernel"].shape[1]) if "head" in params else 0
  return params, batch_stats, model_meta(name, num_classes, [], IMAGENET_MEAN, IMAGENET_STD,
                                         "torchvision", path)


def model_meta(name, num_classes, class_names, mean, std, fmt, path, *, image_size=224,
               channels=3) -> dict:
  """jtl's model.json contents for a converted model, plus where it came from."""
  names = list(class_names) or [f"class_{i}" for i in range(num_classes)]
  return {"model": {"name": name, "num_classes": num_classes, "small_stem": False,
                    "width": 1.0, "dtype": "float32"},
          "class_names": names,
          "data": {"image_size": image_size, "channels": channels,
                   "mean": list(mean), "std": list(std)},
          "converted_from": {"format": fmt, "path": os.path.abspath(path)}}
