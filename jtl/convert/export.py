"""Any supported checkpoint -> jtl: detect its format, merge it into a model, write a jtl workdir.

Formats: a Hugging Face ResNet folder or hub id, a torchvision `.pth/.pt/.bin`
state dict, a BiT `.npz`, or a jtl workdir (`checkpoints/` + `model.json`).
Every loader returns numpy trees `(params, batch_stats, meta)` in jtl paths;
they reach a model only through `jtl.checkpoint.merge`, so nothing mismatched
is silently left at its random init.

>>> convert("microsoft/resnet-50", "runs/resnet50_in1k")
>>> params, batch_stats = jtl.checkpoint.load_model("runs/resnet50_in1k")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jtl import checkpoint, writers
from jtl.models import build as model_build
from jtl.convert.bit import load_bit
from jtl.convert.hf import load_hf
from jtl.convert.torchvision import load_torchvision

MODEL_JSON = checkpoint.MODEL_JSON
PREFIXES = {"hf": "huggingface", "torchvision": "torchvision", "bit": "bit", "orbax": "jtl"}
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def detect_format(src: str) -> str:
  """"huggingface", "torchvision", "bit" or "jtl" for a path or hub id; ValueError otherwise.

  Example:
    >>> detect_format("BiT-M-R50x1.npz")
    'bit'
  """
  if os.path.isdir(src):
    if os.path.isdir(os.path.join(src, checkpoint.CHECKPOINTS)):
      return "jtl"
    if os.path.exists(os.path.join(src, "config.json")):
      return "huggingface"
    raise ValueError(f"{src} is a folder with neither config.json (Hugging Face) nor "
                     f"{checkpoint.CHECKPOINTS}/ (a jtl run) in it.")
  if os.path.isfile(src):
    if src.endswith(TORCH_SUFFIXES):
      return "torchvision"
    if src.endswith(".npz"):
      return "bit"
    raise ValueError(f"{src}: unknown checkpoint type; expected a .pth/.pt/.bin state dict, "
                     "a BiT .npz, a Hugging Face folder or a jtl workdir.")
  if (re.fullmatch(r"[\w.-]+/[\w.-]+", src) and not src.startswith(".")
      and not os.path.isdir(src.split("/")[0])):
    return "huggingface"  # A hub id such as microsoft/resnet-50 (not a path under a local folder).
  raise FileNotFoundError(
      f"{src} does not exist; a source model comes from ./launch.sh experiments/seed_transfer.py "
      "(it leaves one in runs/seed_transfer/source/seed=0) or ./launch.sh configs/source.py "
      "--workdir DIR, or give a checkpoint (hf:, torchvision:, bit:).")


def _load_jtl(workdir: str):
  params, batch_stats = checkpoint.load_model(workdir)
  return params, batch_stats, checkpoint.read_model_json(workdir)


_LOADERS = {"huggingface": load_hf, "torchvision": load_torchvision, "bit": load_bit,
            "jtl": _load_jtl}


def load(src: str) -> tuple[dict, dict, dict]:
  """(params, batch_stats, meta) numpy trees in jtl paths from any supported source.

  `src` is a path or hub id, auto-detected, or one with a prefix naming its format:
  `hf:`, `torchvision:`, `bit:`, `orbax:` (a jtl workdir). `meta` is jtl's
  model.json content: model name/num_classes, class names, mean/std.

  Example:
    >>> params, batch_stats, meta = load("resnet18.pth")
    >>> meta["model"]["name"]
    'resnet18'
  """
  prefix, sep, rest = src.partition(":")
  if sep and prefix in PREFIXES:
    return _LOADERS[PREFIXES[prefix]](rest)
  return _LOADERS[detect_format(src)](src)


def build_model(meta: dict, num_classes: int | None = None, dtype=jnp.float32):
  """The Flax model that `meta` (model.json content) describes, optionally with a new head size.

  Example:
    >>> model = build_model(meta, num_classes=5)
  """
  return model_build.from_meta(meta, num_classes, dtype)


def init_head(params, zero: bool = True, *, rng=None, pattern: str = r"head/.*"):
  """Re-initializes the head: zeros (BiT's choice: training starts at uniform
  predictions) or, with `zero=False`, a fresh LeCun-normal kernel from `rng`.

  Example:
    >>> params = init_head(params)                       # head/kernel, head/bias = 0
    >>> params = init_head(params, zero=False, rng=jax.random.key(0))
  """
  if not zero and rng is None:
    raise ValueError("init_head(zero=False) needs an rng for the new kernel.")
  rx = re.compile(pattern)
  flat = tu.flatten_dict(params, sep="/")
  for i, path in enumerate(sorted(p for p in flat if rx.fullmatch(p))):
    v = flat[path]
    if zero or not path.endswith("kernel"):
      flat[path] = jnp.zeros_like(v)
    else:
      flat[path] = jax.nn.initializers.lecun_normal()(jax.random.fold_in(rng, i),
                                                       v.shape, v.dtype)
  return tu.unflatten_dict(flat, sep="/")


def load_into(variables: dict, source, *, dont_load: Sequence[str] = (),
              zero_head: bool = True, name: str | None = None):
  """Merges a checkpoint into a model's init `variables` via `jtl.checkpoint.merge`.

  `source` is a path/hub id or a `(params, batch_stats, meta)` triple from `load`.
  Paths matching `dont_load` keep their init; a re-initialized head is zeroed if
  `zero_head`. `name` is how errors refer to the source. Returns (variables,
  report); report["kept_from_init"] lists the paths not loaded.

  Example:
    >>> variables = model.init(jax.random.key(0), x)             # a 5-class model
    >>> variables, report = load_into(variables, "resnet-50", dont_load=("head/.*",))
    >>> report["kept_from_init"]
    ['head/bias', 'head/kernel']
  """
  if isinstance(source, (str, os.PathLike)):
    name = name or os.fspath(source)
    params, batch_stats, _ = load(os.fspath(source))
  else:
    params, batch_stats, meta = source
    name = name or meta.get("converted_from", {}).get("path", "checkpoint")
  new_params, report = checkpoint.merge(variables["params"], params, dont_load=dont_load,
                                        source=name)
  new_stats, stats_report = checkpoint.merge(variables.get("batch_stats", {}), batch_stats,
                                             dont_load=dont_load, source=name)
  report = {"kept_from_init": sorted(report["kept_from_init"] + stats_report["kept_from_init"]),
            "loaded": report["loaded"] + stats_report["loaded"]}
  if zero_head and any(p.startswith("head/") for p in report["kept_from_init"]):
    new_params = init_head(new_params, zero=True)
  out = {"params": new_params}
  if "batch_stats" in variables:
    out["batch_stats"] = new_stats
  return out, report


def convert(src: str, dst: str) -> dict:
  """Writes `src` (any supported format) as a jtl workdir readable by `checkpoint.load_model`.

  The weights are first merged into the abstract init of the model they claim to
  be, so a file that does not fit fails here, naming the paths. `dst` gets
  `checkpoints/0/model` (orbax) and `model.json`; an existing checkpoint there is
  never overwritten. Returns the meta written.

  Example:
    >>> meta = convert("BiT-M-R50x1.npz", "runs/bit_r50x1")
    >>> params, batch_stats = jtl.checkpoint.load_model("runs/bit_r50x1")
  """
  params, batch_stats, meta = load(src)
  model = build_model(meta)
  size, channels = meta["data"]["image_size"], meta["data"]["channels"]
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, channels)))
  params, _ = checkpoint.merge(abstract["params"], params, source=src)
  batch_stats, _ = checkpoint.merge(abstract.get("batch_stats", {}), batch_stats, source=src)
  write_workdir(dst, {"params": params, "batch_stats": batch_stats}, meta, verb="convert")
  return meta


def new_checkpoints(dst: str, verb: str) -> str:
  """`dst`'s checkpoint folder, refused if it already holds a checkpoint (never overwritten)."""
  root = os.path.join(os.path.abspath(dst), checkpoint.CHECKPOINTS)
  if os.path.isdir(root) and any(d.isdigit() for d in os.listdir(root)):
    raise FileExistsError(f"{root} already holds checkpoints; {verb} into a new folder.")
  return root


def write_workdir(dst: str, variables: dict, meta: dict, *, verb: str) -> None:
  """A model as a jtl workdir: `checkpoints/0/model` (orbax) and `model.json`, what
  `checkpoint.load_model`, `jtl predict` and config.init read."""
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(new_checkpoints(dst, verb), options=options,
                             item_names=("model",)) as mgr:
    mgr.save(0, args=ocp.args.Composite(model=ocp.args.StandardSave(variables)))
  writers.write_atomic(os.path.join(dst, MODEL_JSON), json.dumps(meta, indent=2))


__all__ = ["build_model", "convert", "detect_format", "init_head", "load", "load_into",
           "new_checkpoints", "write_workdir"]
