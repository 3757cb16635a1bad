"""A model's features at every stage for a split: one jitted inference pass.

>>> model = load_model("runs/strategy_ablation/source/run", config)       # doctest: +SKIP
>>> feats = extract(model, splits["train"], config, layers=("stage2", "pre_logits"))
>>> feats["stage2"].shape, feats["logits"].shape, feats["labels"].shape
((50, 32), (50, 5), (50,))

Spatial activations are averaged over height and width (`pool=True`), the usual
input to a transferability score; `pool=False` keeps them whole (for CKA on a
small probe batch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jtl import adapt, convert, data, models
from jtl.models import build


@dataclasses.dataclass(frozen=True)
class Model:
  """A network with its weights, as the trainer would build it for `config`'s data."""
  name: str                # What the user called it: a checkpoint path, or "random".
  forward: Any             # models.build.Forward (normalization included).
  variables: dict          # {"params", "batch_stats"}.
  arch: dict
  mean: tuple[float, ...]
  std: tuple[float, ...]
  has_head: bool           # Its head predicts the source's labels (LEEP and NCE read them).


def load_model(checkpoint: str, config, *, seed: int = 0) -> Model:
  """The weights in `checkpoint` (a path in any format jtl reads), or a random init of
  config's architecture when `checkpoint` is "" or "random": the features a from-scratch run starts from
  (with model "auto", config.init's architecture)."""
  random = checkpoint in ("", "random")
  if random:
    params, stats = {}, {}
    meta = convert.load(config.init)[2] if config.model.name == "auto" and config.init else {}
  else:
    params, stats, meta = convert.load(checkpoint)
  head = meta.get("model", {}).get("num_classes") or 0    # 0: a checkpoint without a head.
  built = build.build(config, meta, max(head, 1), jax.random.key(seed))
  variables = built.variables
  if not random:   # Merged as a transfer would, so a checkpoint that does not fit says so.
    # A domain-adaptation run's domain head is not part of the classifier.
    variables, _ = convert.load_into(variables, (params, stats, meta), zero_head=False,
                                     name=checkpoint,
                                     dont_load=(f"{adapt.HEAD}/.*",) + (() if head else ("head/.*",)))
  return Model("random" if random else checkpoint, built.forward,
               {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
               built.arch, built.mean, built.std, has_head=bool(head) and not random)


@functools.partial(jax.jit, static_argnames=("forward", "layers", "pool"))
def _features(forward, variables, images, layers: tuple[str, ...], pool: bool):
  logits, out, _ = forward(variables, images, train=False)
  feats = {layer: out[layer].mean(axis=(1, 2)) if pool and out[layer].ndim == 4 else out[layer]
           for layer in layers}
  return {**feats, "logits": logits.astype(jnp.float32)}


def extract(model: Model, source, config, *, layers: Sequence[str] = models.LAYERS,
            pool: bool = True, limit: int | None = None) -> dict[str, np.ndarray]:
  """{layer: (n, ...) features, "logits": the model's own head's outputs, "labels"} for the
  first `limit` examples of `source` (all by default), in order, in inference mode."""
  unknown = [layer for layer in layers if layer not in models.LAYERS]
  if unknown:
    raise ValueError(f"unknown layer(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(models.LAYERS)}.")
  n = len(source) if limit is None else min(limit, len(source))
  batch = config.data.eval_batch_size    # One shape for every split: one compile.
  outs: dict[str, list] = {}
  seen = 0
  for b in data.eval_batches(source, batch_size=batch, image_size=config.data.image_size,
                             channels=config.data.channels):
    got = jax.device_get(_features(model.forward, model.variables, b["image"], tuple(layers),
                                   pool))
    keep = np.asarray(b["mask"])
    for k, v in {**got, "labels": b["label"]}.items():
      outs.setdefault(k, []).append(np.asarray(v)[keep])
    seen += int(keep.sum())
    if seen >= n:
      break
  return {k: np.concatenate(v)[:n] for k, v in outs.items()}
