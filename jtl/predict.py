"""Top-k predictions of a checkpoint on image files, with its own preprocessing.

  jtl predict --checkpoint runs/source image.jpg [more.png ...]

A checkpoint is anything `config.init` takes: a jtl workdir (a training run, or the
output of `jtl convert`), or hf:/torchvision:/bit:/orbax: prefixed paths. Its
metadata (model.json for a workdir) says which model, which classes and how to
resize and normalize.

>>> predict("runs/source", ["shoe.png"], top_k=3)
[[('Sandal', 0.71), ('Sneaker', 0.2), ('Ankle boot', 0.05)]]
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jtl import convert
from jtl.models import build as model_build
from jtl.data.folder import IMAGE_EXTENSIONS, _reason, decode_rgb
from jtl.data.pipeline import preprocess


def read_image(path: str) -> np.ndarray:
  """The image at `path` as uint8 HxWx3; a missing or undecodable file raises one sentence
  naming it, with advice `jtl predict` can take.

  >>> read_image("no/such.png")
  Traceback (most recent call last):
  FileNotFoundError: no/such.png: no such file; expected an image file (.jpg, .png, ...)
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file; expected an image file (.jpg, .png, ...)")
  if os.path.isdir(path):
    raise ValueError(f"{path}: is a folder; expected image files (e.g. {path}/*.jpg)")
  try:
    return decode_rgb(path)
  except ValueError as e:   # decode_rgb's advice is for training sets (skip_corrupt)
    why = _reason(path, e.__cause__) if e.__cause__ else "unreadable"
    raise ValueError(f"{path}: cannot decode this image ({why}); expected a file PIL reads, "
                     f"such as {', '.join(IMAGE_EXTENSIONS)}") from None


def predict(workdir: str, image_paths: list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, the top_k (class name, probability) pairs."""
  decoded = [read_image(p) for p in image_paths]   # A bad path fails before the checkpoint loads.
  params, batch_stats, meta = convert.load(workdir)
  model = model_build.from_meta(meta)
  d = meta["data"]
  images = np.stack([preprocess(x, image_size=d["image_size"], channels=d["channels"])
                     for x in decoded])
  forward = model_build.forward(model, d["mean"], d["std"])
  logits, _, _ = jax.jit(lambda v, x: forward(v, x, train=False))(
      {"params": params, "batch_stats": batch_stats}, images)
  probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
  names = meta.get("class_names") or [f"class_{i}" for i in range(probs.shape[-1])]
  return [[(names[i], float(p[i])) for i in np.argsort(-p)[:top_k]] for p in probs]


def describe(workdir: str, image_paths: list[str], top_k: int = 5) -> str:
  """What `jtl predict` prints: each image's path, then its top_k classes with probabilities."""
  lines = []
  for path, top in zip(image_paths, predict(workdir, image_paths, top_k)):
    lines += [path, *(f"  {p:7.2%}  {name}" for name, p in top)]
  return "\n".join(lines)
