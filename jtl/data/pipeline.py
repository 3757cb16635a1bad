"""Host input pipelines built on grain: a train stream and exact eval batches.

Preprocessing runs on the host in numpy/PIL and keeps images uint8 (4x less
host->device traffic than float32); the trainer normalizes on device.

 it = iter(train_dataset(src, batch_size=128, image_size=32, seed=0))
 batch = next(it)            # {"image": uint8 [128,32,32,3], "label": int32 [128]}
 state = it.get_state()      # save with the checkpoint; it.set_state(state) resumes
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grain
import numpy as np
from PIL import Image


def _read_options() -> grain.ReadOptions:
  # Threads each build whole batches: grain's per-element hand-off between
  # threads costs more than the work on small images (measured 5-10x slower).
  # One buffered batch per thread keeps host memory at a few batches.
  threads = min(16, os.cpu_count() or 1)
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)


def preprocess(image: np.ndarray, *, image_size: int, channels: int = 3) -> np.ndarray:
  """Converts to `channels` (1 or 3) and resizes (bilinear) to a uint8 square.

  >>> preprocess(np.zeros((28, 28, 1), np.uint8), image_size=32).shape
  (32, 32, 3)
  """
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 4:  # RGBA from some TFDS datasets: the alpha channel carries no class signal
    image = image[..., :3]
  have = image.shape[-1]
  if have not in (1, 3) or channels not in (1, 3):
    raise ValueError(f"cannot convert an image with {have} channels to {channels}; expected 1 or 3 each")
  if have == 3 and channels == 1:
    # PIL's "L" is the ITU-R 601 luminance, what a grayscale source model saw.
    image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
  if image.shape[:2] != (image_size, image_size):
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil = pil.resize((image_size, image_size), Image.Resampling.BILINEAR)
    image = np.asarray(pil).reshape(image_size, image_size, -1)
  if image.shape[-1] == 1 and channels == 3:
    image = np.repeat(image, 3, axis=-1)  # after the resize: a third of the work
  return image


def random_crop_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Random crop from a zero-padded image (pad = size // 8) and a random horizontal flip.

  >>> random_crop_flip(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0)).shape
  (32, 32, 3)
  """
  h, w = image.shape[:2]
  pad = h // 8  # 4 pixels at 32x32, the CIFAR recipe, scaled with the image
  dy, dx = rng.integers(-pad, pad + 1, size=2)  # offset of the crop window from the centre
  # Same result as np.pad then crop, at half the cost: copy the overlap into zeros.
  out = np.zeros_like(image)
  out[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = \
    image[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
  if rng.random() < 0.5:
    out = np.ascontiguousarray(out[:, ::-1])
  return out


def train_dataset(source, *, batch_size: int, image_size: int | None, channels: int = 3,
                  augment: bool = True, seed: int, shard_index: int = 0, shard_count: int = 1,
                  labels: bool = True, read_options: grain.ReadOptions | None = None
                  ) -> grain.IterDataset:
  """An infinite stream of shuffled, augmented batches: this process's part of each global batch.

  Every epoch is reshuffled; augmentation draws from a per-example rng keyed
  on (seed, position), so the stream is deterministic and its iterator's
  `get_state()`/`set_state()` resume it exactly. The global stream does not
  depend on the number of processes: it is cut into `batch_size` (per-process)
  chunks and process `shard_index` reads chunks shard_index, shard_index +
  shard_count, ...; so a global batch is the same on 1 host or 64, and each host
  reads only its part. `image_size=None` takes an ArraySource's `images` as they
  are (cached activations, see jtl/prefix_cache.py). `read_options` overrides
  the threads and prefetch buffer (counted in batches). `labels=False` reads images
  only (unlabeled target images for domain adaptation, see jtl/data/paired.py).

  >>> it = iter(train_dataset(src, batch_size=32, image_size=32, seed=0))   # doctest: +SKIP
  >>> next(it)["image"].shape                                               # doctest: +SKIP
  (32, 32, 32, 3)
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index}, shard_count={shard_count}; expected 0 <= index < count")
  if not len(source):
    raise ValueError(f"{getattr(source, 'name', 'source')} is empty; expected at least one example")
  if image_size is None and augment:
    raise ValueError("augment=True needs images (image_size); cached activations are not augmented")
  # Batches run across epoch boundaries, so a k-shot set smaller than one batch still works.
  # .seed() gives shuffle and random_map their own seeds derived from this one.
  if image_size is None:
    # Ready arrays (an ArraySource of cached activations): the same shuffled order, each
    # batch gathered with one indexing instead of an example at a time.
    images, labels = source.images, np.asarray(source.labels, np.int32)
    ds = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
    ds = ds.batch(batch_size, drop_remainder=True)[shard_index::shard_count]
    ds = ds.map(lambda i: {"image": np.asarray(images[np.asarray(i)]), "label": labels[i]})
    return ds.to_iter_dataset(read_options or _read_options())
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)

  def to_example(example, rng=None):
    image = preprocess(example["image"], image_size=image_size, channels=channels)
    if rng is not None:
      image = random_crop_flip(image, rng)
    return {"image": image, "label": np.int32(example["label"])} if labels else {"image": image}

  ds = ds.random_map(to_example) if augment else ds.map(to_example)
  # Lazy: this process decodes only the examples of its own chunks.
  ds = ds.batch(batch_size, drop_remainder=True)[shard_index::shard_count]
  return ds.to_iter_dataset(read_options or _read_options())


def num_eval_batches(num_examples: int, *, batch_size: int, shard_count: int = 1) -> int:
  """Batches each shard yields in `eval_batches` (the same on every shard).

  >>> num_eval_batches(10, batch_size=4, shard_count=2)
  2
  """
  per_shard = -(-num_examples // shard_count)  # shards differ in size by at most one
  return -(-per_shard // batch_size)


def eval_batches(source, *, batch_size: int, image_size: int, channels: int = 3,
        shard_index: int = 0, shard_count: int = 1,
        read_options: grain.ReadOptions | None = None) -> Iterator[dict]:
  """Yields this shard's examples once, in order, as full-size masked batches.

  The last batch is zero-padded and "mask" marks the real examples, so eval
  compiles one shape and counts exactly. Every shard yields the same number
  of batches (padding with all-masked ones), as multi-host collectives need.

  >>> sum(b["mask"].sum() for b in eval_batches(src, batch_size=64, image_size=32))   # doctest: +SKIP
  10000
  """
  def to_example(example):
    image = preprocess(example["image"], image_size=image_size, channels=channels)
    return {"image": image, "label": np.int32(example["label"])}

  ds = grain.MapDataset.source(source)[shard_index::shard_count].map(to_example).batch(batch_size)
  it = iter(ds.to_iter_dataset(read_options or _read_options()))
  for _ in range(num_eval_batches(len(source), batch_size=batch_size, shard_count=shard_count)):
    batch = next(it, None)
    n = 0 if batch is None else len(batch["label"])
    mask = np.arange(batch_size) < n
    if n == batch_size:
      yield {**batch, "mask": mask}
      continue
    image = np.zeros((batch_size, image_size, image_size, channels), np.uint8)
    label = np.zeros(batch_size, np.int32)
    if n:
      image[:n], label[:n] = batch["image"], batch["label"]
    yield {"image": image, "label": label, "mask": mask}
