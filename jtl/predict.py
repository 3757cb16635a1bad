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

import jax
import jax.numpy as jnp
import numpy as np

from jtl import convert
from jtl.models import build as model_build
from jtl.data.folder import decode_rgb
from jtl.data.pipeline import preprocess

def predict(workdir: str, image_paths: list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, the top_k (class name, probability) pairs."""
  params, batch_stats, meta = convert.load(workdir)
  model = model_build.from_meta(meta)
  d = meta["data"]
  images = np.stack([preprocess(decode_rgb(p), image_size=d["image_size"], channels=d["channels"])
                     for p in image_paths])
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
