"""A frozen prefix computed once: the rest of the network trains on cached activations.

A strategy that freezes the first layers of the network and keeps their
BatchNorm in inference mode (linear_probe: all but the head; partial:N: stem to
stageN) makes those layers a fixed function of the image. When the images
reaching them are fixed as well (data.augment=False), each training example's
activation after the prefix is computed once, and every step runs only the
layers after it. The activations are stored in $JTL_PREFIX_CACHE or
~/.cache/jtl/prefix, named by a hash of the prefix's weights and of the data,
so the cells of a sweep that share a source and a dataset compute them once;
arrays over 1 GiB are memory-mapped from there instead of read into memory. The
data's part of the hash is its name, split, size, chosen examples and preprocessing,
not its pixels: after changing images in place, delete the cache folder.

data.cache_prefix: "auto" (cache when the above holds), "never", or "no_augment"
(cache even when data.augment is on, training without augmentation).

>>> start, why = cut(config, strat)            # e.g. ("pre_logits", "") for linear_probe
>>> source = cached_source(splits["train"], forward, variables, start, key)   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil

import flax.traverse_util as tu
import jax
import numpy as np

from jtl import models, strategy

MODES = ("auto", "never", "no_augment")
IN_MEMORY_BYTES = 1 << 30   # Larger arrays are memory-mapped from the cache file.


def cut(config, strat) -> tuple[str | None, str]:
  """The layer after which training can start on cached activations, or (None, why not)."""
  mode = config.data.cache_prefix
  if mode not in MODES:
    raise ValueError(f"config field data.cache_prefix={mode!r}; expected one of "
                     f"{', '.join(MODES)}.")
  if mode == "never":
    return None, "data.cache_prefix='never'"
  if config.data.augment and mode != "no_augment":
    return None, ("data.augment is on, so the prefix sees a new crop every epoch "
                  "(data.cache_prefix=no_augment trains without augmentation)")
  if config.adapt.method != "none":
    return None, f"adapt.method={config.adapt.method!r} runs the target images through every layer"
  if config.reg.delta or config.reg.bss:
    return None, "reg.delta and reg.bss need every layer's features at each step"
  # The layers from the input on that no phase trains (weights or BatchNorm statistics).
  fixed = strategy.frozen_prefix(strat, config.strategy.bn)
  if not fixed:
    return None, "the strategy trains the stem"
  # A backbone frozen whole is cached after its (parameter-free) pooling: one vector an image.
  return ("pre_logits" if fixed == len(models.STAGES) else models.STAGES[fixed - 1]), ""


def key(config, arch: dict, start: str, variables, train_src, mean, std) -> str:
  """A hash naming the cached activations: the prefix's weights, the data and preprocessing."""
  h = hashlib.sha256()
  last = models.LAYERS.index(start)
  for collection in ("params", "batch_stats"):
    for path, value in sorted(tu.flatten_dict(variables.get(collection, {}), sep="/").items()):
      stage = models.stage_of(path)
      if stage in models.STAGES and models.STAGES.index(stage) <= last:
        h.update(path.encode())
        h.update(np.ascontiguousarray(jax.device_get(value)).tobytes())
  parent = getattr(train_src, "parent", train_src)
  h.update(json.dumps({
      "arch": arch, "dtype": config.model.dtype, "start": start,
      "data": [parent.name, parent.split, config.data.data_dir, len(parent),
               config.data.skip_corrupt, config.data.image_size, config.data.channels,
               list(mean), list(std)],   # As resolved: the config's or the source's.
      "label_map": sorted((getattr(train_src, "label_map", None) or {}).items()),
  }, sort_keys=True, default=str).encode())
  h.update(np.asarray(getattr(train_src, "indices", np.arange(len(train_src)))).tobytes())
  return h.hexdigest()[:24]


def cache_dir() -> str:
  return os.environ.get("JTL_PREFIX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "jtl", "prefix")


def cached_source(train_src, forward, variables, start: str, name: str, *,
                  batch_size: int, image_size: int, channels: int, log=print):
  """`train_src` with each image replaced by its activation after `start`: computed once,
  in order and in inference mode, or read from the cache."""
  from jtl import data   # Here, so that `cut` (used by --dry_run) stays light.
  folder = os.path.join(cache_dir(), name)
  if not os.path.isdir(folder):
    log(f"computing the frozen prefix (through {start}) once for {len(train_src)} images")
    run = jax.jit(functools.partial(forward.activations, layer=start))
    outs, labels = [], []
    for batch in data.eval_batches(train_src, batch_size=batch_size, image_size=image_size,
                                   channels=channels):
      keep = batch["mask"]
      outs.append(np.asarray(jax.device_get(run(variables, batch["image"])))[keep])
      labels.append(batch["label"][keep])
    tmp = f"{folder}.{os.getpid()}.tmp"
    os.makedirs(tmp, exist_ok=True)
    np.save(os.path.join(tmp, "activations.npy"), np.concatenate(outs))
    np.save(os.path.join(tmp, "labels.npy"), np.concatenate(labels))
    try:
      os.replace(tmp, folder)   # Whole or absent: a crash leaves no half-written cache.
    except OSError:             # Another process of the sweep wrote it first.
      shutil.rmtree(tmp, ignore_errors=True)
  else:
    log(f"reading the frozen prefix's activations from {folder}")
  activations = np.load(os.path.join(folder, "activations.npy"), mmap_mode="r")
  if activations.nbytes <= IN_MEMORY_BYTES:
    activations = np.array(activations)
  return data.ArraySource(train_src.name, activations, np.load(os.path.join(folder, "labels.npy")),
                          train_src.class_names, train_src.split)
