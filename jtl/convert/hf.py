"""Hugging Face ResNet folders (`config.json` + `model.safetensors`) into jtl's ResNet.

The layout of `microsoft/resnet-18` ... `resnet-152`. The config is checked
with transformers' `ResNetConfig` and anything jtl's ResNet v1.5 cannot
reproduce exactly is refused; weights are read from safetensors (bf16 included),
or from a `pytorch_model.bin` without running code. Names are translated to
torchvision's, so one mapping (jtl.convert.torchvision) places them all.

>>> params, batch_stats, meta = load_hf("checkpoints/resnet-50")     # a local folder
>>> params, batch_stats, meta = load_hf("microsoft/resnet-50")       # a hub id, if online
"""

from __future__ import annotations

import json
import os
import re
import struct

import ml_dtypes
import numpy as np

from jtl.convert.torchvision import (IMAGENET_MEAN, IMAGENET_STD, model_meta,
                                     read_torch_file, rename_torchvision, to_jtl)
from jtl.models import MODELS

# Hugging Face module name -> torchvision module name.
_HF = (
    (r"resnet\.embedder\.embedder\.convolution", lambda m: "conv1"),
    (r"resnet\.embedder\.embedder\.normalization", lambda m: "bn1"),
    (r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}."
               f"{'conv' if m[4] == 'convolution' else 'bn'}{int(m[3]) + 1}"),
    (r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}"),
    (r"classifier\.1", lambda m: "fc"),
)
_WIDTHS = {False: [64, 128, 256, 512], True: [256, 512, 1024, 2048]}
# safetensors dtype names -> numpy; BF16 is why this file parses the format itself.
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def rename_hf(module: str) -> str | None:
  """jtl module path of a Hugging Face ResNet module name, or None."""
  for pattern, to_torchvision in _HF:
    if m := re.fullmatch(pattern, module):
      return rename_torchvision(to_torchvision(m))
  return None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file as numpy arrays (bfloat16 via ml_dtypes).

  `safetensors.numpy` reads the file unless it holds bfloat16, which numpy cannot
  represent; then the (simple) format is parsed here. Either way every tensor's
  byte range is checked first, so a truncated file fails as a whole, naming it.

  Example:
    >>> read_safetensors("resnet-50/model.safetensors")["classifier.1.bias"].shape
    (1000,)
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
      raise ValueError(f"header of {n} bytes but the file has {len(data)}")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    body = memoryview(data)[8 + n:]
    for name, info in header.items():
      begin, end = info["data_offsets"]
      size = np.dtype(_DTYPES[info["dtype"]]).itemsize * int(np.prod(info["shape"]))
      if not 0 <= begin <= end <= len(body) or end - begin != size:
        raise ValueError(f"tensor {name} lies outside the file (bytes {begin}..{end} "
                         f"of {len(body)})")
    if all(info["dtype"] != "BF16" for info in header.values()):
      from safetensors.numpy import load  # pylint: disable=import-outside-toplevel
      return load(data)
    return {name: np.frombuffer(body[slice(*info["data_offsets"])], _DTYPES[info["dtype"]])
            .reshape(info["shape"]).copy() for name, info in header.items()}
  except Exception as e:  # struct, json, safetensors and OS errors all mean the same here.
    raise ValueError(f"could not read {path} as safetensors (truncated or corrupt?): "
                     f"{type(e).__name__}: {e}") from None


def resolve(src: str) -> str:
  """A local folder for `src`: itself if it is one, else a download of the hub id.

  Offline (HF_HUB_OFFLINE set, or no network), only the local hub cache is used,
  and the error says which local path to give instead.

  Example:
    >>> resolve("microsoft/resnet-50")   # ~/.cache/huggingface/hub/models--microsoft--resnet-50/...
  """
  if os.path.isdir(src):
    return src
  if os.path.exists(src) or not re.fullmatch(r"[\w.-]+/[\w.-]+", src) or src.startswith("."):
    raise FileNotFoundError(f"{src} is neither a Hugging Face model folder nor a hub id "
                            "like microsoft/resnet-50.")
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") \
      or bool(getattr(getattr(huggingface_hub, "constants", None), "HF_HUB_OFFLINE", False))
  try:
    folder = huggingface_hub.snapshot_download(
        src, allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"],
        local_files_only=offline)
  except Exception as e:  # Network and cache misses raise many types; one sentence helps.
    why = "HF_HUB_OFFLINE is set" if offline else f"{type(e).__name__}"
    raise FileNotFoundError(
        f"{src} is no local folder, and could not be fetched from the Hugging Face Hub "
        f"({why}); download it where there "
        f"is network (`hf download {src} config.json model.safetensors --local-dir DIR`) "
        "and give the local folder DIR instead.") from None
  return folder


def _read_weights(folder: str) -> dict[str, np.ndarray]:
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    return {k: v for s in shards for k, v in read_safetensors(os.path.join(folder, s)).items()}
  for name, reader in (("model.safetensors", read_safetensors),
                       ("pytorch_model.bin", read_torch_file)):
    if os.path.exists(os.path.join(folder, name)):
      return reader(os.path.join(folder, name))
  raise FileNotFoundError(f"{folder} has a config.json but no model.safetensors "
                          "(or pytorch_model.bin).")


def check_config(folder: str):
  """The folder's ResNetConfig and the jtl model name it maps to; refuses what jtl can't match."""
  file = os.path.join(folder, "config.json")
  try:
    with open(file) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"could not read {file}: {e}") from None
  if raw.get("model_type") != "resnet":
    raise ValueError(f"{file} describes a {raw.get('model_type', 'unknown')!r} model; only "
                     "Hugging Face ResNets (model_type 'resnet') can be loaded.")
  from transformers import ResNetConfig  # pylint: disable=import-outside-toplevel
  cfg = ResNetConfig.from_pretrained(folder)
  bottleneck = cfg.layer_type == "bottleneck"
  problems = []
  if cfg.layer_type not in ("basic", "bottleneck"):
    problems.append(f"layer_type {cfg.layer_type!r}")
  if cfg.embedding_size != 64:
    problems.append(f"embedding_size {cfg.embedding_size} (jtl's stem has 64 channels)")
  if list(cfg.hidden_sizes) != _WIDTHS[bottleneck]:
    problems.append(f"hidden_sizes {list(cfg.hidden_sizes)} (expected {_WIDTHS[bottleneck]})")
  if cfg.downsample_in_first_stage:
    problems.append("downsample_in_first_stage=True (jtl's stage1 keeps the resolution)")
  if getattr(cfg, "downsample_in_bottleneck", False):
    problems.append("downsample_in_bottleneck=True (ResNet v1; jtl strides the 3x3 conv)")
  if cfg.hidden_act != "relu":
    problems.append(f"hidden_act {cfg.hidden_act!r}")
  name = next((n for n, (sizes, b) in MODELS.items()
               if list(sizes) == list(cfg.depths) and b == bottleneck), None)
  if name is None:
    problems.append(f"depths {list(cfg.depths)} with {cfg.layer_type} blocks")
  if problems:
    raise ValueError(f"{file} describes a ResNet jtl cannot reproduce exactly: "
                     f"{'; '.join(problems)}.")
  return cfg, raw, name


def load_hf(src: str) -> tuple[dict, dict, dict]:
  """(params, batch_stats, meta) of a Hugging Face ResNet folder or hub id.

  Class names come from the config's `id2label` when the file has one.

  Example:
    >>> params, batch_stats, meta = load_hf("resnet-18")
    >>> meta["model"]["name"]
    'resnet18'
  """
  folder = resolve(src)
  cfg, raw, name = check_config(folder)
  params, batch_stats = to_jtl(_read_weights(folder), rename_hf, folder)
  num_classes = int(params["head"]["kernel"].shape[1]) if "head" in params else 0
  labels = raw.get("id2label") or {}
  class_names = [labels.get(str(i), f"class_{i}") for i in range(num_classes)] if labels else []
  return params, batch_stats, model_meta(name, num_classes, class_names, IMAGENET_MEAN,
                                         IMAGENET_STD, "huggingface", folder,
                                         channels=cfg.num_channels)
