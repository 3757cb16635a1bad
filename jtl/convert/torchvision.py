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
from jtl.models.resnet import BASE_WIDTHS

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


def _widths(params: dict, bottleneck: bool) -> list[int | None]:
  """Output channels of the stem and of each stage's first block (None where absent)."""
  last = "conv3" if bottleneck else "conv2"
  kernels = [params.get("stem", {}).get("conv", {}).get("kernel")] + [
      params.get(f"stage{i}", {}).get("block0", {}).get(last, {}).get("kernel")
      for i in range(1, 5)]
  return [None if k is None else int(np.shape(k)[-1]) for k in kernels]


def infer_resnet(params: dict, source: str) -> str:
  """The jtl model name ("resnet50", ...) whose block layout and widths `params` have."""
  sizes = tuple(len(params.get(f"stage{i}", {})) for i in range(1, 5))
  bottleneck = "conv3" in params.get("stage1", {}).get("block0", {})
  name = next((n for n, (stage_sizes, b) in MODELS.items()
               if tuple(stage_sizes) == sizes and b == bottleneck), None)
  if name is None:
    raise ValueError(f"{source} has {sizes} {'bottleneck' if bottleneck else 'basic'} blocks "
                     f"per stage, which matches none of {', '.join(MODELS)}.")
  want = [64] + [w * (4 if bottleneck else 1) for w in BASE_WIDTHS]
  got = _widths(params, bottleneck)
  if any(g is not None and g != w for g, w in zip(got, want)):  # Missing ones: merge names them.
    raise ValueError(f"{source} is a {name} with channel widths {got} (stem, stage1..4); "
                     f"only the standard widths {want} are supported.")
  return name


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict as numpy arrays, loaded without executing code.

  With torch installed this is `torch.load(weights_only=True)`; without it, the
  allow-list unpickler in `jtl.convert.safe_pickle`. A `{"state_dict": ...}` or
  `{"model": ...}` wrapper and DataParallel's `module.` prefix are undone.

  Example:
    >>> state = read_torch_file("resnet18.pth")
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; expected a PyTorch state dict "
                            "(.pth/.pt/.bin) saved with torch.save.")
  _check_magic(path)
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    torch = None
  obj = safe_pickle.load(path) if torch is None else _torch_load(path, torch)
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


def _check_magic(path: str):
  """Refuses a file that is neither a zip (torch.save) nor a pickle (legacy torch.save)."""
  with open(path, "rb") as f:
    head = f.read(4)
  if not (head.startswith(b"PK") or head[:1] == b"\x80"):
    raise ValueError(f"{path}: not a PyTorch file (it starts with {head!r}); expected a "
                     "state dict saved with torch.save (a zip archive or a pickle).")


def _torch_load(path: str, torch):
  """torch.load(weights_only=True), its errors made one sentence naming `path`."""
  try:
    return torch.load(path, weights_only=True, map_location="cpu")
  except pickle.UnpicklingError as e:
    refused = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f"it asks for {refused[1]}" if refused else _first_sentence(e)
    raise ValueError(f"refused to load {path}: it is not a plain state dict of tensors, "
                     f"and unpickling it could run code ({what}).") from None
  except Exception as e:  # zip/format errors come as RuntimeError, EOFError, ...
    raise ValueError(f"could not read {path} as a PyTorch file ({type(e).__name__}: "
                     f"{_first_sentence(e)}); expected a state dict saved with torch.save "
                     "(truncated or corrupt?).") from None


def _first_sentence(e: Exception) -> str:
  text = " ".join(str(e).split())
  return text.split(". ", 1)[0] if text else type(e).__name__


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
