"""A model from a config and a checkpoint's metadata, in one place.

The trainer, the dry run, `jtl diagnose` / `recommend`, `jtl predict` and the
benchmarks all build their network here: which architecture (the config's, or the
checkpoint's with model "auto"), how images are normalized (the config's constants,
else the checkpoint's, else 0.5 / 0.5), the `Forward` that normalizes uint8 images
on device and runs the model, and the initial variables.

>>> built = build(config, meta, num_classes=5, rng=jax.random.key(0))   # doctest: +SKIP
>>> logits, out, _ = built.forward(built.variables, images, train=False)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jtl import runtime
from jtl.models import get_model


@dataclasses.dataclass(frozen=True)
class Forward:
  """Normalizes uint8 images on device and runs the model.

  A frozen dataclass, so two phases with equal settings compare equal and share
  one compiled step. With `start` set, training batches hold the activations
  after that layer (a cached frozen prefix, jtl/prefix_cache.py) and only the
  layers after it run; evaluation always runs the whole network on images.
  """
  model: Any
  mean: tuple[float, ...]
  std: tuple[float, ...]
  bn_train: tuple[str, ...] = ()   # Stages whose BatchNorm uses batch statistics in training.
  start: str | None = None

  def __call__(self, variables, images, train: bool, rng=None):
    if train:
      x = images if self.start else self.normalize(images)
      (logits, out), new = self.model.apply(variables, x, train=True, bn_train=self.bn_train,
                                            start=self.start, mutable=["batch_stats"])
      return logits, out, new["batch_stats"]
    logits, out = self.model.apply(variables, self.normalize(images), train=False)
    return logits, out, variables["batch_stats"]

  def normalize(self, images):
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def activations(self, variables, images, layer: str):
    """The output of `layer` (inference mode) for a batch of images."""
    return self.model.apply(variables, self.normalize(images), train=False)[1][layer]


def forward(model, mean, std, bn_train=(), start: str | None = None) -> Forward:
  """A `Forward` with plain-float constants (so equal settings hash equal)."""
  return Forward(model, tuple(float(m) for m in mean), tuple(float(s) for s in std),
                 tuple(bn_train), start)


# model.json fields of a ResNet with explicit widths or depths (a Hugging Face config's).
SHAPE_FIELDS = ("stem_width", "stage_widths", "stage_sizes", "bottleneck")


def architecture(config, meta: dict) -> dict:
  """name, small_stem, width: from the config, or from the checkpoint's model.json if "auto".

  A checkpoint of another architecture fails here in one sentence, not as 100 mis-shapes.
  """
  stored = meta.get("model", {})
  shape = {k: stored[k] for k in SHAPE_FIELDS if stored.get(k) is not None}
  if config.model.name == "auto":
    if not stored:
      raise ValueError("config.model.name='auto' takes the model from config.init, but "
                       f"{config.init or 'config.init (empty)'} describes no model.")
    return {"name": stored["name"], "small_stem": stored.get("small_stem", False),
            "width": stored.get("width", 1.0), **shape}
  if shape:
    raise ValueError(f"config.init {config.init} holds a ResNet of its own widths or depths "
                     f"({', '.join(f'{k}={v}' for k, v in shape.items())}), which "
                     f"config.model.name={config.model.name!r} cannot build; set "
                     "--config.model.name=auto (config argument model=auto).")
  if stored.get("name") and stored["name"] != config.model.name:
    raise ValueError(f"config.init {config.init} holds a {stored['name']}, but config.model.name "
                     f"is {config.model.name!r}; set --config.model.name={stored['name']} (or auto).")
  return {k: config.model[k] for k in ("name", "small_stem", "width")}


def normalization(config, meta: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std): the config's, else the checkpoint's, else 0.5 per channel."""
  stored, default = meta.get("data", {}), (0.5,) * config.data.channels
  mean = config.data.mean or stored.get("mean") or default
  std = config.data.std or stored.get("std") or default
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def from_meta(meta: dict, num_classes: int | None = None, dtype=jnp.float32):
  """The Flax model that `meta` (a checkpoint's model.json content) describes, with its
  own head or `num_classes` outputs: what a checkpoint is read back into without a config."""
  m = meta["model"]
  shape = {k: m[k] for k in SHAPE_FIELDS if m.get(k) is not None}
  return get_model(m["name"], num_classes=m["num_classes"] if num_classes is None else num_classes,
                   small_stem=m.get("small_stem", False), width=m.get("width", 1.0), dtype=dtype,
                   **shape)


class Built(NamedTuple):
  model: Any
  forward: Forward          # Inference-mode BatchNorm; the trainer sets bn_train per phase.
  variables: dict           # {"params", "batch_stats"}: arrays, or shapes when abstract.
  arch: dict                # name, small_stem, width.
  mean: tuple[float, ...]
  std: tuple[float, ...]


def build(config, meta: dict, num_classes: int, rng=None, *, abstract: bool = False) -> Built:
  """The network `config` asks for (with `meta`, a checkpoint's model.json content, for
  model "auto" and normalization), with `num_classes` outputs, initialized from `rng`
  (or only its shapes, with `abstract`)."""
  arch = architecture(config, meta)
  mean, std = normalization(config, meta)
  model = get_model(arch["name"], num_classes=num_classes, small_stem=arch["small_stem"],
                    width=arch["width"], dtype=jnp.dtype(config.model.dtype),
                    **{k: arch[k] for k in SHAPE_FIELDS if k in arch})
  size, channels = config.data.image_size, config.data.channels
  init = functools.partial(model.init, train=False)
  dummy = jnp.zeros((1, size, size, channels))
  rng = jax.random.key(0) if rng is None else rng
  variables = (jax.eval_shape(init, rng, dummy) if abstract
               else runtime.run_once(init, rng, dummy))
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  return Built(model, forward(model, mean, std), variables, arch, mean, std)
