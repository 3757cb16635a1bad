"""`jtl diagnose CONFIG`: transferability estimates per source and stage, before training.

For each source (config.init, any --sources, and a random init of the same network
as the reference a from-scratch run starts from) and each layer (stem, stage1..4,
pre_logits, and the source's own head), the scores of jtl/diagnose/transferability.py
on the features of the target's labeled train split; the probes are fit on train and
scored on the validation carve (data.val_per_class). Activations that a training run
already cached (jtl/prefix_cache.py: a linear probe's pre_logits, partial:N's stageN)
are read from the cache instead of recomputed.

  ./launch.sh diagnose configs/transfer.py:shots=10
  .venv/bin/jtl diagnose configs/transfer.py --sources runs/a/source/run,hf:/data/resnet-50
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import numpy as np

from jtl import data, models, prefix_cache
from jtl.diagnose import features, transferability

HEAD = "head"    # The source's own predictions: LEEP and NCE read them.
LAYERS = (*models.LAYERS, HEAD)


def _cached(model: features.Model, config, train_src, layer: str):
  """(`layer`'s pooled activations on `train_src`, their labels) from the prefix cache, if a
  training run left them there; else None."""
  name = prefix_cache.key(config, model.arch, layer, model.variables, train_src, model.mean,
                          model.std)
  folder = os.path.join(prefix_cache.cache_dir(), name)
  if not os.path.exists(os.path.join(folder, "labels.npy")):
    return None
  return (transferability.pool(np.load(os.path.join(folder, "activations.npy"), mmap_mode="r")),
          np.load(os.path.join(folder, "labels.npy")))


def source_features(model: features.Model, config, splits: dict, layers: Sequence[str]):
  """({layer: train features}, train labels, {layer: val features} or None, val labels,
  which layers came from the prefix cache). The cache holds a layer when a run with the same
  source, data and preprocessing trained on cached activations (data.augment off)."""
  train_src, val_src = splits["train"], splits.get("val")
  want = [layer for layer in layers if layer != HEAD]
  cached = {layer: c for layer in want if (c := _cached(model, config, train_src, layer))}
  missing = tuple(layer for layer in want if layer not in cached)
  train, labels = {}, None
  if missing or HEAD in layers:
    train = features.extract(model, train_src, config, layers=missing or ("pre_logits",))
    labels = train["labels"]
  for layer, (activations, cached_labels) in cached.items():
    labels = cached_labels if labels is None else labels   # The same order: the split's.
    train[layer] = activations
  train = {**{k: train[k] for k in want}, **({HEAD: train["logits"]} if HEAD in layers else {})}
  val = val_labels = None
  if val_src is not None and len(val_src):
    v = features.extract(model, val_src, config, layers=tuple(want) or ("pre_logits",))
    val, val_labels = {**{k: v[k] for k in want}, HEAD: v["logits"]}, v["labels"]
  return train, labels, val, val_labels, sorted(cached)


def estimate(config, sources: Sequence[str], layers: Sequence[str] = LAYERS, log=print
             ) -> list[dict]:
  """One row per (source, layer): each score's value and seconds, and the seconds spent
  on that source's features."""
  unknown = [layer for layer in layers if layer not in LAYERS]
  if unknown:
    raise ValueError(f"unknown layer(s) {', '.join(unknown)}; expected some of {', '.join(LAYERS)}.")
  splits = data.make_splits(config.data, seed=config.seed)
  rows = []
  for source in sources:
    t0 = time.time()
    model = features.load_model(source, config, seed=config.seed)
    want = [layer for layer in layers if model.has_head or layer != HEAD]   # Source labels.
    train, labels, val, val_labels, cached = source_features(model, config, splits, want)
    seconds = time.time() - t0
    log(f"{model.name}: features of {len(labels)} train images at {len(want)} layers in "
        f"{seconds:.1f} s" + (f" ({', '.join(cached)} from the prefix cache)" if cached else ""))
    for layer in want:
      probs = np.asarray(jax.nn.softmax(train[HEAD])) if layer == HEAD else None
      scores = transferability.score(
          train[layer], labels, source_probs=probs,
          val_features=None if val is None else val[layer], val_labels=val_labels)
      rows.append({"source": model.name, "layer": layer, "features_s": seconds,
                   "from_cache": layer in cached, **{
                       name: value for name, (value, _) in scores.items()},
                   **{f"{name}_s": s for name, (_, s) in scores.items()}})
  return rows


def _fmt(value) -> str:
  return "—" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def table(rows: list[dict]) -> str:
  """Markdown: source x layer -> each score; then the seconds each took."""
  names = list(transferability.SCORES)
  head = "| source | layer | " + " | ".join(names) + " |"
  rule = "|---|---|" + "---|" * len(names)
  lines = ["Scores (higher predicts better transfer):", "", head, rule]
  lines += [f"| {r['source']} | {r['layer']} | " + " | ".join(_fmt(r[n]) for n in names) + " |"
            for r in rows]
  lines += ["", "Seconds (features: the forward passes of that source, once for all its layers):",
            "", "| source | layer | features | " + " | ".join(names) + " |", rule + "---|"]
  lines += [f"| {r['source']} | {r['layer']} | "
            + ("cache" if r["from_cache"] else f"{r['features_s']:.2f}") + " | "
            + " | ".join("—" if r[n] is None else f"{r[n + '_s']:.3f}" for n in names) + " |"
            for r in rows]
  return "\n".join(lines)
