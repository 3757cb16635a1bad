"""Hugging Face ResNet folders (`config.json` + `model.safetensors`) into jtl's ResNet.

The layout of `microsoft/resnet-18` ... `resnet-152`, at any depths and
widths (embedding_size, hidden_sizes) of four stages, basic or bottleneck. The
config is checked with transformers' `ResNetConfig` and anything jtl's ResNet
v1.5 cannot reproduce exactly is refused; weights are read from safetensors (bf16 included),
or from a `pytorch_model.bin` without running code. Names are translated to
torchvision's, so one mapping (jtl.convert.torchvision) places them all.

>>> params, batch_stats, meta = load_hf("checkpoints/resnet-50")     # a local folder
>>> params, batch_stats, meta = load_hf("microsoft/resnet-50")       # a hub id, if online
"""

from __future__ import annotations

import json
import math
import os
import re
import struct

import ml_dtypes
import numpy as np

from jtl import checkpoint
from jtl.convert.torchvision import (IMAGENET_MEAN, IMAGENET_STD, _widths, model_meta,
                                     read_torch_file, rename_torchvision, to_jtl)
from jtl.models import CUSTOM_RESNET, MODELS
from jtl.models.resnet import BASE_WIDTHS

# Hugging Face module name -> torchvision module name. A ResNetForImageClassification's
# backbone sits under "resnet."; a bare ResNetModel's at the top.
_HF = (
    (r"(?:resnet\.)?embedder\.embedder\.convolution", lambda m: "conv1"),
    (r"(?:resnet\.)?embedder\.embedder\.normalization", lambda m: "bn1"),
    (r"(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.(convolution|normalization)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}."
               f"{'conv' if m[4] == 'convolution' else 'bn'}{int(m[3]) + 1}"),
    (r"(?:resnet\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.(convolution|normalization)",
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}"),
    (r"classifier\.1", lambda m: "fc"),
)
_ARCHITECTURES = ("ResNetForImageClassification", "ResNetModel")
# safetensors dtype names -> numpy; BF16 is why this file parses the format itself.
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
           "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# What a safetensors file is, for errors about one that is not.
_EXPECTED = ("an 8-byte little-endian header length, a JSON object giving each tensor's "
             "dtype, shape and data_offsets, then those bytes")


def rename_hf(module: str) -> str | None:
  """jtl module path of a Hugging Face ResNet module name, or None."""
  for pattern, to_torchvision in _HF:
    if m := re.fullmatch(pattern, module):
      return rename_torchvision(to_torchvision(m))
  return None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file as numpy arrays (bfloat16 via ml_dtypes).

  The format is parsed here (numpy has no bfloat16 for `safetensors.numpy`), and
  the header is checked whole before any tensor is sliced: a truncated, corrupt
  or lying file fails as one ValueError naming it, without large allocations.

  Example:
    >>> read_safetensors("resnet-50/model.safetensors")["classifier.1.bias"].shape
    (1000,)
  """
  try:
    with open(path, "rb") as f:
      header = _read_header(f, os.fstat(f.fileno()).st_size)
      body = f.read()
    spans = _tensor_spans(header, len(body))
  except (ValueError, OSError, RecursionError) as e:
    why = e.strerror if isinstance(e, OSError) and e.strerror else e
    raise ValueError(f"{path}: not a valid safetensors file ({why}); expected {_EXPECTED} "
                     "(truncated or corrupt?).") from None
  return {name: np.frombuffer(body, dtype, math.prod(shape), begin).reshape(shape).copy()
          for name, dtype, shape, begin in spans}


def _read_header(f, size: int) -> dict:
  """The JSON header of an open safetensors file of `size` bytes, read only if it fits."""
  head = f.read(8)
  if len(head) < 8:
    raise ValueError(f"the file has {size} bytes, too few for the header length")
  (n,) = struct.unpack("<Q", head)
  if n > size - 8:
    raise ValueError(f"the header length is {n} bytes but the file has {size}")
  try:
    header = json.loads(f.read(n))
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    raise ValueError(f"the header is not JSON: {e}") from None
  if not isinstance(header, dict):
    raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
  header.pop("__metadata__", None)
  return header


def _sizes(value) -> bool:
  return isinstance(value, list) and all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _tensor_span(name: str, info, body_size: int):
  """(name, numpy dtype, shape, first byte) of one header entry, after checking it."""
  if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
    raise ValueError(f"tensor {name!r} is not an object with dtype, shape and data_offsets")
  dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
  if not isinstance(dtype, str) or dtype not in _DTYPES:
    raise ValueError(f"tensor {name!r} has dtype {dtype!r}, not one of {', '.join(_DTYPES)}")
  if not _sizes(shape):
    raise ValueError(f"tensor {name!r} has shape {shape!r}, not a list of sizes")
  if not _sizes(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
    raise ValueError(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
  begin, end = offsets
  if end > body_size:
    raise ValueError(f"tensor {name!r} lies at bytes {begin}..{end}, past the "
                     f"{body_size} data bytes")
  size = np.dtype(_DTYPES[dtype]).itemsize * math.prod(shape)  # Python ints: no overflow.
  if end - begin != size:
    raise ValueError(f"tensor {name!r} spans {end - begin} bytes, but {dtype} x "
                     f"{shape} needs {size}")
  return name, _DTYPES[dtype], shape, begin, end


def _tensor_spans(header: dict, body_size: int) -> list[tuple]:
  """Every tensor's (name, dtype, shape, begin), checked in range and not overlapping."""
  spans = sorted((_tensor_span(n, info, body_size) for n, info in header.items()),
                 key=lambda s: (s[3], s[4]))
  for a, b in zip(spans, spans[1:]):
    if b[3] < a[4]:
      raise ValueError(f"tensors {a[0]!r} and {b[0]!r} overlap")
  return [s[:4] for s in spans]


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


def _shards(index: str) -> list[str]:
  """The shard files a `model.safetensors.index.json` names, each a plain file name."""
  try:
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e}); "
                     "expected JSON with a weight_map from tensor names to shard files.") from None
  for shard in shards:
    if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
      raise ValueError(f"{index} names shard {shard!r}; expected a file name in its folder.")
  return shards


def _read_weights(folder: str) -> dict[str, np.ndarray]:
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.exists(index):
    shards = _shards(index)
    for shard in shards:
      if not os.path.isfile(os.path.join(folder, shard)):
        raise FileNotFoundError(f"{index} names shard {shard}, which is not in {folder}.")
    return {k: v for s in shards for k, v in read_safetensors(os.path.join(folder, s)).items()}
  for name, reader in (("model.safetensors", read_safetensors),
                       ("pytorch_model.bin", read_torch_file)):
    if os.path.exists(os.path.join(folder, name)):
      return reader(os.path.join(folder, name))
  raise FileNotFoundError(f"{folder} has a config.json but no model.safetensors "
                          "(or pytorch_model.bin).")


def _read_config(file: str) -> dict:
  """config.json as a dict, refused unless it describes a Hugging Face ResNet."""
  raw = checkpoint.read_json(file, "a Hugging Face config.json")
  if raw.get("model_type") != "resnet":
    raise ValueError(f"{file} describes a {raw.get('model_type', 'unknown')!r} model; only "
                     "Hugging Face ResNets (model_type 'resnet') can be loaded.")
  archs = raw.get("architectures") or []
  if not isinstance(archs, list) or not all(a in _ARCHITECTURES for a in archs):
    raise ValueError(f"{file} names architectures {archs!r}; expected "
                     f"{' or '.join(_ARCHITECTURES)}.")
  return raw


def _shape(cfg, bottleneck: bool) -> tuple[str, dict]:
  """The jtl model name and model.json shape fields for a ResNetConfig's depths and widths:
  a standard name when the depths are one's (else CUSTOM_RESNET with stage_sizes); its
  `width` when the widths are that standard model's scaled by one factor, as jtl's own
  width=0.25 are; explicit stem_width and stage_widths otherwise."""
  depths, hidden = list(cfg.depths), [int(h) for h in cfg.hidden_sizes]
  name = next((n for n, (sizes, b) in MODELS.items()
               if list(sizes) == depths and b == bottleneck), None)
  fields = {} if name else {"stage_sizes": depths, "bottleneck": bottleneck}
  width = cfg.embedding_size / 64
  expand = 4 if bottleneck else 1
  if hidden == [expand * max(1, round(w * width)) for w in BASE_WIDTHS] \
      and cfg.embedding_size == max(1, round(64 * width)):
    return name or CUSTOM_RESNET, {**fields, "width": width}
  return name or CUSTOM_RESNET, {**fields, "stem_width": int(cfg.embedding_size),
                                 "stage_widths": hidden}


def check_config(folder: str):
  """The folder's ResNetConfig, the jtl model name it maps to and the model.json fields of
  its depths and widths; refuses what jtl can't match."""
  file = os.path.join(folder, "config.json")
  raw = _read_config(file)
  from transformers import ResNetConfig  # pylint: disable=import-outside-toplevel
  try:
    cfg = ResNetConfig.from_pretrained(folder)
  except Exception as e:  # transformers validates fields with several error types.
    why = " ".join(str(e).split()).split(". ")[0]
    raise ValueError(f"{file}: not a valid ResNet config ({why}); "
                     "expected the config.json of a Hugging Face ResNet.") from None
  bottleneck = cfg.layer_type == "bottleneck"
  problems = []
  if cfg.layer_type not in ("basic", "bottleneck"):
    problems.append(f"layer_type {cfg.layer_type!r}")
  if len(cfg.depths) != 4 or len(cfg.hidden_sizes) != len(cfg.depths):
    problems.append(f"depths {list(cfg.depths)} and hidden_sizes {list(cfg.hidden_sizes)} "
                    "(jtl's ResNet has 4 stages, stage1..stage4)")
  if any(d < 1 for d in cfg.depths) or any(h < 1 for h in [cfg.embedding_size, *cfg.hidden_sizes]):
    problems.append(f"depths {list(cfg.depths)}, embedding_size {cfg.embedding_size}, "
                    f"hidden_sizes {list(cfg.hidden_sizes)} (expected sizes >= 1)")
  if cfg.downsample_in_first_stage:
    problems.append("downsample_in_first_stage=True (jtl's stage1 keeps the resolution)")
  if getattr(cfg, "downsample_in_bottleneck", False):
    problems.append("downsample_in_bottleneck=True (ResNet v1; jtl strides the 3x3 conv)")
  if cfg.hidden_act != "relu":
    problems.append(f"hidden_act {cfg.hidden_act!r}")
  if problems:
    raise ValueError(f"{file} describes a ResNet jtl cannot reproduce exactly: "
                     f"{'; '.join(problems)}.")
  return cfg, raw, *_shape(cfg, bottleneck)


def _check_weights(params: dict, cfg, folder: str):
  """Refuses weights whose blocks or widths are not those config.json describes."""
  blocks = [len(params.get(f"stage{i}", {})) for i in range(1, 5)]
  layer = "bottleneck" if "conv3" in params.get("stage1", {}).get("block0", {}) else "basic"
  if blocks != list(cfg.depths) or layer != cfg.layer_type:
    raise ValueError(f"{folder}: config.json gives depths {list(cfg.depths)} of "
                     f"{cfg.layer_type} blocks, but the weights have {blocks} {layer} blocks "
                     "per stage; expected weights that match config.json.")
  inner = [h // 4 if layer == "bottleneck" else h for h in cfg.hidden_sizes]
  want = [cfg.embedding_size, *cfg.hidden_sizes]
  got = _widths(params, layer == "bottleneck")
  inner_got = [np.shape(params.get(f"stage{i}", {}).get("block0", {}).get("conv1", {})
                        .get("kernel", np.zeros((0,))))[-1] for i in range(1, 5)]
  if any(g is not None and g != w for g, w in zip(got, want)) or inner_got != inner:
    raise ValueError(f"{folder}: config.json gives channel widths {want} (embedding_size, "
                     f"hidden_sizes), but the weights have {got} (stem, stage1..4); expected "
                     "weights that match config.json.")


def load_hf(src: str) -> tuple[dict, dict, dict]:
  """(params, batch_stats, meta) of a Hugging Face ResNet folder or hub id.

  Class names come from the config's `id2label` when the file has one.

  Example:
    >>> params, batch_stats, meta = load_hf("resnet-18")
    >>> meta["model"]["name"]
    'resnet18'
  """
  folder = resolve(src)
  cfg, raw, name, shape = check_config(folder)
  params, batch_stats = to_jtl(_read_weights(folder), rename_hf, folder)
  _check_weights(params, cfg, folder)
  num_classes = int(params["head"]["kernel"].shape[1]) if "head" in params else 0
  labels = raw.get("id2label") or {}
  class_names = [labels.get(str(i), f"class_{i}") for i in range(num_classes)] if labels else []
  meta = model_meta(name, num_classes, class_names, IMAGENET_MEAN, IMAGENET_STD, "huggingface",
                    folder, channels=cfg.num_channels)
  meta["model"].update(shape)
  return params, batch_stats, meta
