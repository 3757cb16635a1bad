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

from jtl import convert, train
from jtl.data.folder import decode_rgb
from jtl.data.pipeline import preprocess

def predict(workdir: str, image_paths: list[str], top_k: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, the top_k (class name, probability) pairs."""
  params, batch_stats, meta = convert.load(workdir)
  model = convert.build_model(meta)
  d = meta["data"]
  images = np.stack([preprocess(decode_rgb(p), image_size=d["image_size"], channels=d["channels"])
                     for p in image_paths])
  forward = train.make_apply_fn(model, d["mean"], d["std"], bn_train=())
  logits, _, _ = jax.jit(lambda v, x: forward(v, x, train=False))(
      {"params": params, "batch_stats": batch_stats}, images)
  probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
  names = meta.get("class_names") or [f"class_{i}" for i in range(probs.shape[-1])]
  return [[(names[i], float(p[i])) for i in np.argsort(-p)[:top_k]] for p in probs]


def main(argv: list[str]) -> None:
  import argparse
  parser = argparse.ArgumentParser(prog="jtl predict", description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True,
                      help="a jtl workdir, or hf:DIR, torchvision:FILE, bit:FILE, orbax:DIR")
  parser.add_argument("--top_k", type=int, default=5)
  parser.add_argument("images", nargs="+")
  args = parser.parse_args(argv)
  for path, top in zip(args.images, predict(args.checkpoint, args.images, args.top_k)):
    print(path)
    for name, p in top:
      print(f"  {p:7.2%}  {name}")
