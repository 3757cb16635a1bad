"""AdaBN and label-free scores: passes over a target domain's unlabeled images.

AdaBN (Li et al. 2016) keeps every weight of a trained model and replaces each
BatchNorm's statistics with the target domain's. Here they are exact: one pass over
the target's train images, each BatchNorm normalizing a batch with that batch's own
statistics (training mode, as the model was trained), collects the count, mean and
centred sum of squares of every BatchNorm input; the batches are combined exactly
(Chan et al.'s pairwise update), so the result is the population mean and variance
of each BatchNorm's input over all the images, not a momentum average. Zero-padding
of the last batch is masked out of every statistic. With one batch holding every
image, the statistics are also exactly those each BatchNorm meets at test time.

The label-free scores read a model's predictions on the same unlabeled images: the
mean entropy (confidence), the entropy of the mean prediction (diversity) and their
difference, the mutual information between image and predicted class that SHOT-IM
maximizes. A study may choose weights on them (Report.select_on="target_im"), where no
target label may be read. No function here reads a target label.

  jtl adapt runs/source --target fashion_mnist+shift:gaussian_noise:5 --workdir runs/adabn_noise

>>> stats = recompute_batch_stats(forward, variables, target_train,   # doctest: +SKIP
...                               batch_size=256, image_size=28, channels=1)
>>> label_free_scores(forward, {**variables, "batch_stats": stats},   # doctest: +SKIP
...                   target_train, batch_size=256, image_size=28, channels=1)
{'target_entropy': 0.41, 'target_diversity': 1.6, 'target_im': 1.19}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import flax.linen as nn
import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from jtl import adapt, convert, data, writers
from jtl.convert import export
from jtl.models import STAGES
from jtl.models import build as model_build


# ---------------------------------------------------------------------------
# Unlabeled batches.
# ---------------------------------------------------------------------------
class _ImagesOnly:
  """`split`'s images through data.Unlabeled (its labels are never touched), with the
  constant label 0 where data.eval_batches expects one."""

  def __init__(self, split):
    self._images = data.Unlabeled(split)
    self.name = self._images.name

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, i: int) -> dict:
    return {"image": self._images[i]["image"], "label": 0}


def image_batches(split, *, batch_size: int, image_size: int, channels: int):
  """`split`'s images once, in order, as {"image", "mask"} batches (the last zero-padded,
  "mask" marking the real images); no label is read.

  >>> sum(b["mask"].sum() for b in image_batches(target_train, batch_size=64,   # doctest: +SKIP
  ...                                            image_size=28, channels=1))
  5000
  """
  for batch in data.eval_batches(_ImagesOnly(split), batch_size=batch_size,
                                 image_size=image_size, channels=channels):
    yield {"image": batch["image"], "mask": batch["mask"]}


# ---------------------------------------------------------------------------
# AdaBN.
# ---------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _batch_moments(forward, variables, images, mask) -> dict:
  """Per BatchNorm path: (count, mean, centred sum of squares) of its input over the real
  examples of the batch, every BatchNorm normalizing with those examples' statistics."""
  moments = {}

  def capture(next_fun, args, kwargs, context):
    if not (isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    x = args[0].astype(jnp.float32)
    where = mask.reshape((-1,) + (1,) * (x.ndim - 1)).astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    count = jnp.sum(where) * np.prod(x.shape[1:-1])
    mean = jnp.sum(x * where, axes) / jnp.maximum(count, 1.0)
    m2 = jnp.sum(jnp.square(x - mean) * where, axes)
    moments["/".join(context.module.path)] = (count, mean, m2)
    return next_fun(*args, **kwargs, mask=where > 0)   # Padding stays out of the batch's own.

  with nn.intercept_methods(capture):
    forward(variables, images, train=True)
  return moments


def _combine(a: tuple, b: tuple) -> tuple:
  """The (count, mean, centred sum of squares) of two groups together, exactly.

  >>> _combine((2.0, np.array([1.0]), np.array([2.0])), (2.0, np.array([3.0]), np.array([2.0])))
  (4.0, array([2.]), array([8.]))
  """
  (na, ma, sa), (nb, mb, sb) = a, b
  if nb == 0:
    return a
  n = na + nb
  delta = mb - ma
  return n, ma + delta * (nb / n), sa + sb + np.square(delta) * (na * nb / n)


def recompute_batch_stats(forward: model_build.Forward, variables: dict, split, *,
                          batch_size: int, image_size: int, channels: int) -> dict:
  """AdaBN: `variables["batch_stats"]` with every BatchNorm's mean and variance recomputed
  exactly over `split`'s images (one pass; no label read). A model without BatchNorm
  (BiT's GroupNorm) gets its statistics back unchanged.

  >>> new = recompute_batch_stats(built.forward, variables, target_train,   # doctest: +SKIP
  ...                             batch_size=256, image_size=28, channels=1)
  >>> new["stem"]["bn"].keys()                                               # doctest: +SKIP
  dict_keys(['mean', 'var'])
  """
  # Every BatchNorm in training mode, on images (not a cached prefix's activations).
  forward = dataclasses.replace(forward, bn_train=STAGES, start=None)
  totals = {}
  for batch in image_batches(split, batch_size=batch_size, image_size=image_size,
                             channels=channels):
    moments = jax.device_get(_batch_moments(forward, variables, batch["image"], batch["mask"]))
    for path, (count, mean, m2) in moments.items():
      group = (float(count), np.asarray(mean, np.float64), np.asarray(m2, np.float64))
      totals[path] = _combine(totals.get(path, (0.0, 0.0, 0.0)), group)
  old = tu.flatten_dict(jax.device_get(variables["batch_stats"]), sep="/")
  if not totals:
    return variables["batch_stats"]
  new = {}
  for path, (count, mean, m2) in totals.items():
    new[f"{path}/mean"], new[f"{path}/var"] = mean, m2 / count
  if new.keys() != old.keys():
    raise ValueError(f"AdaBN met BatchNorms {sorted(totals)} but the model's statistics are "
                     f"{sorted(old)}; expected the same layers.")
  return tu.unflatten_dict({k: v.astype(np.asarray(old[k]).dtype) for k, v in new.items()},
                           sep="/")


# ---------------------------------------------------------------------------
# Label-free scores, and accuracy.
# ---------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _prediction_sums(forward, variables, images, mask) -> dict:
  logits, _, _ = forward(variables, images, train=False)
  probs = jax.nn.softmax(logits.astype(jnp.float32))
  w = mask.astype(jnp.float32)
  return {"count": w.sum(), "entropy": jnp.sum(adapt.entropy(probs) * w),
          "probs": jnp.sum(probs * w[:, None], 0)}


def label_free_scores(forward: model_build.Forward, variables: dict, split, *,
                      batch_size: int, image_size: int, channels: int) -> dict:
  """Scores of the model's predictions on `split`'s images, with no label read (inference
  mode): target_entropy, the mean prediction entropy in nats (lower: more confident);
  target_diversity, the entropy of the mean prediction; target_im = diversity - entropy,
  the mutual information between image and predicted class that SHOT-IM maximizes
  (higher is better: a study can select_on it).

  >>> label_free_scores(forward, variables, target_train, batch_size=256,   # doctest: +SKIP
  ...                   image_size=28, channels=1)["target_im"]
  1.19
  """
  totals = None
  for batch in image_batches(split, batch_size=batch_size, image_size=image_size,
                             channels=channels):
    sums = jax.device_get(_prediction_sums(forward, variables, batch["image"], batch["mask"]))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  count = max(float(totals["count"]), 1.0)
  ent = float(totals["entropy"]) / count
  div = float(adapt.entropy(np.asarray(totals["probs"], np.float64) / count))
  return {"target_entropy": ent, "target_diversity": div, "target_im": div - ent}


@functools.partial(jax.jit, static_argnums=0)
def _correct(forward, variables, images, labels, mask):
  logits, _, _ = forward(variables, images, train=False)
  return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)


def accuracy(forward: model_build.Forward, variables: dict, split, *, batch_size: int,
             image_size: int, channels: int) -> float:
  """Top-1 accuracy on a labeled split (a test split: its labels are read here)."""
  correct = sum(float(_correct(forward, variables, b["image"], b["label"], b["mask"]))
                for b in data.eval_batches(split, batch_size=batch_size, image_size=image_size,
                                           channels=channels))
  return correct / max(len(split), 1)


# ---------------------------------------------------------------------------
# `jtl adapt`: AdaBN from any checkpoint, with no training.
# ---------------------------------------------------------------------------
def adapt_checkpoint(source: str, target: str, workdir: str, *, classes=None,
                     data_dir: str | None = None, batch_size: int = 256, seed: int = 0) -> dict:
  """Recomputes `source`'s BatchNorm statistics on `target`'s unlabeled train images and
  writes the result to `workdir` as a jtl workdir (checkpoints/0 and model.json: `jtl
  predict` and config.init read it), with a summary.json of the target test accuracy
  before and after and the label-free scores. Returns that summary.

  >>> adapt_checkpoint("runs/source", "fashion_mnist+shift:blur:5",   # doctest: +SKIP
  ...                  "runs/adabn_blur")["test_accuracy"]
  0.68
  """
  export.new_checkpoints(workdir, "adapt")   # Refused before the passes, not after.
  params, batch_stats, meta = convert.load(source)
  forward = model_build.forward(model_build.from_meta(meta), meta["data"]["mean"],
                                meta["data"]["std"])
  splits = data.make_splits({"name": target, "data_dir": data_dir, "classes": classes},
                            seed=seed)
  if splits["test"].num_classes != meta["model"]["num_classes"]:
    raise ValueError(f"target {target} has {splits['test'].num_classes} classes but {source} "
                     f"predicts {meta['model']['num_classes']}; name the source's classes "
                     "with --classes (e.g. 0-4).")
  size = dict(batch_size=batch_size, image_size=meta["data"]["image_size"],
              channels=meta["data"]["channels"])
  before = {"params": params, "batch_stats": batch_stats}
  after = {**before, "batch_stats": recompute_batch_stats(forward, before, splits["train"],
                                                          **size)}
  summary = {"workdir": workdir, "init": source, "target": target, "adapt_method": "none",
             "adabn": True, "steps": 0, "target_train_examples": len(splits["train"]),
             "test_examples": len(splits["test"]),
             "test_accuracy_before_adabn": accuracy(forward, before, splits["test"], **size),
             "test_accuracy": accuracy(forward, after, splits["test"], **size),
             **label_free_scores(forward, after, splits["train"], **size)}
  export.write_workdir(workdir, after, {**meta, "adabn": {
      "init": source, "target": target, "images": len(splits["train"])}}, verb="adapt")
  writers.write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  return summary
