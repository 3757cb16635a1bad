"""Checkpoints: orbax for saving/resuming runs, and an explicit merge for transfer.

A run's workdir holds `checkpoints/<step>/` with three items: `model` (params and
batch_stats: all a transfer needs), `train` (step and optimizer state) and `data`
(the grain iterator, so a resumed run sees exactly the batches it would have seen).

>>> mgr = manager("runs/source", every=500, keep=2)
>>> params, batch_stats = load_model("runs/source")          # latest step
>>> params, report = merge(init_params, params, dont_load=("head/.*",))
"""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any, Sequence

import flax.traverse_util as tu
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINTS = "checkpoints"
MODEL_JSON = "model.json"   # Which model, classes and preprocessing a workdir holds.


def manager(workdir: str, every: int, keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager saving every `every` steps and keeping the last `keep`."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(int(every), 1), max_to_keep=keep, create=True,
      # Synchronous saves: a preempted VM must not exit with a save in flight.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS),
                               options=options, item_names=("model", "train", "data"))


def _state_items(state) -> dict[str, Any]:
  return {"model": {"params": state.params, "batch_stats": state.batch_stats},
          "train": {"step": state.step, "opt_state": state.opt_state}}


def save(mgr: ocp.CheckpointManager, state, data_iter, *, force: bool = False) -> bool:
  """Saves state and data position at `state.step` (when due, or always if `force`)."""
  step = int(jax.device_get(state.step))
  if step in mgr.all_steps():
    return False
  items = _state_items(state)
  try:
    return mgr.save(step, force=force, args=ocp.args.Composite(
        model=ocp.args.StandardSave(items["model"]),
        train=ocp.args.StandardSave(items["train"]),
        data=grain.checkpoint.CheckpointSave(data_iter)))
  except Exception as e:  # tensorstore reports a full disk as ValueError("RESOURCE_EXHAUSTED ...").
    text = str(e)
    if "No space left" in text or "os_error_code='28'" in text:
      raise OSError(errno.ENOSPC, f"no space left on device while saving step {step} (the "
                    "previous checkpoint is kept)", str(mgr.directory)) from e
    raise


def restore(mgr: ocp.CheckpointManager, state, data_iter):
  """Restores the latest checkpoint into `state` (its shapes and shardings) and `data_iter`."""
  step = mgr.latest_step()
  items = _state_items(state)
  out = mgr.restore(step, args=ocp.args.Composite(
      model=ocp.args.StandardRestore(items["model"]),
      train=ocp.args.StandardRestore(items["train"]),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return state.replace(params=out.model["params"], batch_stats=out.model["batch_stats"],
                       step=out.train["step"], opt_state=out.train["opt_state"])


def read_json(path: str, expected: str) -> dict:
  """A JSON object from `path`; anything else is one ValueError saying what was `expected`."""
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError, RecursionError) as e:
    raise ValueError(f"{path}: not a readable JSON file ({e}); expected {expected}.") from None
  if not isinstance(raw, dict):
    raise ValueError(f"{path} holds a JSON {type(raw).__name__}; expected an object "
                     f"({expected}).")
  return raw


def read_model_json(workdir: str) -> dict:
  """The model description a training run or `jtl convert` left in `workdir`."""
  path = os.path.join(workdir, MODEL_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; expected a jtl workdir made by a training "
                            "run or by `jtl convert`.")
  meta = read_json(path, "the model.json a training run or `jtl convert` writes")
  if not isinstance(meta.get("model"), dict):
    raise ValueError(f"{path} has no \"model\" object; expected the model.json a training "
                     "run or `jtl convert` writes.")
  return meta


def load_model(path: str, step: int | None = None) -> tuple[Any, Any]:
  """Reads (params, batch_stats) as numpy trees from a jtl run's workdir or checkpoints dir."""
  path = os.path.abspath(path)
  root = os.path.join(path, CHECKPOINTS) if os.path.isdir(os.path.join(path, CHECKPOINTS)) else path
  if not os.path.isdir(root):
    raise FileNotFoundError(f"checkpoint {path} does not exist; expected a jtl workdir "
                            f"holding {CHECKPOINTS}/<step>/.")
  steps = sorted(int(d) for d in os.listdir(root) if d.isdigit())
  step = steps[-1] if step is None and steps else step
  if step is None:
    raise FileNotFoundError(f"checkpoint {root} holds no saved step.")
  item = os.path.join(root, str(step), "model")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      # Restored onto this host's CPU whatever the devices that saved it (8 GPUs, a pod).
      tree = ckptr.metadata(item)
      tree = getattr(getattr(tree, "item_metadata", tree), "tree", tree)
      cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
      model = ckptr.restore(item, jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), tree))
  except Exception as e:  # orbax raises many types; one sentence is what a user needs.
    raise ValueError(f"could not read checkpoint {item} ({type(e).__name__}: "
                     f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); expected the "
                     "orbax `model` item a jtl run saves (truncated or corrupt?).") from None
  model = jax.tree.map(np.asarray, model)
  return model["params"], model.get("batch_stats", {})


def merge(init, loaded, *, dont_load: Sequence[str] = (), source: str = "checkpoint"):
  """Takes every parameter of `init` from `loaded`, except paths matching `dont_load`.

  Missing, unexpected and mis-shaped parameters are collected by path and raised
  as one ValueError: nothing mismatched is silently left at its random init.
  Returns (merged tree, report dict with the paths kept from init).
  """
  skip = [re.compile(p) for p in dont_load]
  flat_init = {"/".join(k): v for k, v in tu.flatten_dict(init).items()}
  flat_loaded = {"/".join(k): v for k, v in tu.flatten_dict(loaded).items()}
  merged, kept, missing, misshaped = {}, [], [], []
  for path, value in flat_init.items():
    if any(rx.fullmatch(path) for rx in skip):
      merged[path] = value
      kept.append(path)
    elif path not in flat_loaded:
      missing.append(path)
    elif np.shape(flat_loaded[path]) != np.shape(value):
      misshaped.append(f"{path} (checkpoint {tuple(np.shape(flat_loaded[path]))}, "
                       f"model {tuple(np.shape(value))})")
    else:
      merged[path] = np.asarray(flat_loaded[path]).astype(value.dtype)
  unexpected = [p for p in flat_loaded
                if p not in flat_init and not any(rx.fullmatch(p) for rx in skip)]
  problems = [f"{len(items)} {name}: {', '.join(items[:6])}{' …' if len(items) > 6 else ''}"
              for name, items in (("mis-shaped", misshaped), ("missing", missing),
                                  ("unexpected", unexpected)) if items]
  if problems:
    raise ValueError(f"{source} does not fit the model ({'; '.join(problems)}); declare "
                     "parameters to re-initialize with config.dont_load.")
  tree = tu.unflatten_dict({tuple(p.split("/")): v for p, v in merged.items()})
  return tree, {"kept_from_init": kept, "loaded": len(merged) - len(kept)}
