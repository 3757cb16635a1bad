"""Datasets addressed by name, as random-access sources of {"image", "label"}.

`load_source` picks the source a name means: Fashion-MNIST's idx files, scikit-learn's
digits, an image folder (folder.py), a corrupted dataset (shift.py) or any TFDS dataset.
What a source is, `Source`, lives in base.py. A TFDS source reads its labels only when
asked (a class subset, a validation carve or a k-shot draw), without decoding an image,
and caches them beside the data.

 src = load_source("fashion_mnist", "train")
 src[0]["image"].shape, src.num_classes   # (28, 28, 1), 10
"""

from __future__ import annotations

import functools
import gzip
import os
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np

from jtl.data.base import Source, check_split
from jtl.config import IMAGE_SHAPES
from jtl.data.folder import FolderSource, typical_shape
from jtl.data.shift import SHIFT_SEP, ShiftedSource, parse_shift

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
  "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Where TFDS labels are cached when the dataset's own folder is read-only.
LABELS_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jtl", "labels")


class ArraySource(Source):
  """A source over images already in memory (small datasets).

  >>> src = ArraySource("toy", np.zeros((2, 8, 8, 1), np.uint8), [0, 1], ["a", "b"])
  >>> src[1]["label"]
  1
  """

  def __init__(self, name: str, images: np.ndarray, labels, class_names: list[str], split: str | None = None):
    if len(images) != len(labels):
      raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels; expected one label per image")
    self.name = name
    self.split = split
    self.images = images
    self.labels = np.asarray(labels, np.int64)
    self.class_names = list(class_names)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images[i], "label": int(self.labels[i])}


# --- Fashion-MNIST from idx files ------------------------------------------

# idx header: two zero bytes, a dtype code (0x08 = uint8), the number of dims.
_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
  """Reads a gzip-compressed idx file of uint8 with `ndim` dimensions.

  >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", 1).shape
  (10000,)
  """
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # bad gzip header or truncated stream
    raise ValueError(f"{path}: not a readable gzip idx file ({e})") from None
  header = 4 + 4 * ndim
  if len(data) < header or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE or data[3] != ndim:
    raise ValueError(
      f"{path}: bad idx magic number {data[:4].hex()!r}; expected '0000080{ndim}' (uint8, {ndim} dims)")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  if len(data) - header != int(np.prod(shape)):
    raise ValueError(f"{path}: {len(data) - header} bytes of data, expected {int(np.prod(shape))} for shape {shape}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)  # a run loads each split more than once; parsing costs ~0.5 s
def _read_fashion_mnist(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  prefix = os.path.join(folder, "train" if split == "train" else "t10k")
  images = read_idx(f"{prefix}-images-idx3-ubyte.gz", 3)
  labels = read_idx(f"{prefix}-labels-idx1-ubyte.gz", 1)
  if len(images) != len(labels) or labels.max(initial=0) > 9:
    raise ValueError(f"{prefix}-*-ubyte.gz: {len(images)} images, {len(labels)} labels "
            f"(max {labels.max(initial=0)}); expected equal counts and labels 0..9")
  return images[..., None], labels


def fashion_mnist(split: str, data_dir: str | None = None) -> Source:
  """Fashion-MNIST from Debian's idx files (apt `dataset-fashion-mnist`), else TFDS.

  >>> fashion_mnist("test")[0]["image"].shape
  (28, 28, 1)
  """
  check_split("fashion_mnist", split)
  folder = data_dir or FASHION_MNIST_DIR
  prefix = "train" if split == "train" else "t10k"
  files = [os.path.join(folder, f"{prefix}-{kind}-ubyte.gz") for kind in ("images-idx3", "labels-idx1")]
  if all(os.path.exists(f) for f in files):
    images, labels = _read_fashion_mnist(folder, split)
    return ArraySource("fashion_mnist", images, labels, FASHION_MNIST_CLASSES, split)
  try:
    src = TfdsSource("fashion_mnist", split, data_dir)
  except Exception as e:  # any TFDS failure ends in the same advice
    reason = (str(e).splitlines() or [type(e).__name__])[0]  # tfds messages can run for pages
    raise FileNotFoundError(
      f"fashion_mnist: no idx files in {folder} and no usable TFDS dataset ({reason}); "
      "install `dataset-fashion-mnist` (apt) or prepare the TFDS dataset.") from None
  src.class_names = list(FASHION_MNIST_CLASSES)
  return src


# --- scikit-learn digits -----------------------------------------------------

def digits(split: str) -> Source:
  """scikit-learn's 8x8 digits with a fixed stratified 80/20 train/test split.

  >>> len(digits("train")) + len(digits("test"))
  1797
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  check_split("digits", split)
  data = load_digits()
  # Pixels are 0..16; scale to the 0..255 range every other source uses.
  images = np.round(data.images * (255 / 16)).astype(np.uint8)[..., None]
  train, test = train_test_split(
    np.arange(len(images)), test_size=0.2, stratify=data.target, random_state=0)
  idx = np.sort(train if split == "train" else test)
  src = ArraySource("digits", images[idx], data.target[idx], [str(d) for d in range(10)], split)
  src.indices = idx  # positions in load_digits(): shows which examples each split holds
  return src


# --- any TFDS dataset ----------------------------------------------------------

def _unknown(name: str) -> ValueError:
  return ValueError(f"unknown dataset {name!r}: not a jtl dataset (fashion_mnist, digits, folder:PATH) "
           "nor a TFDS dataset name.")


def _label_key(name: str, features) -> str:
  """The ClassLabel feature a TFDS source reads: "label" if it is one, else the only one."""
  import tensorflow_datasets as tfds

  keys = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  key = "label" if "label" in keys else keys[0] if len(keys) == 1 else None
  if "image" not in features or key is None:
    raise ValueError(f"TFDS dataset {name!r} has features {sorted(features.keys())}; expected an 'image' "
                     "and a 'label' feature (or exactly one ClassLabel feature)")
  return key


def _save_first_writable(array: np.ndarray, paths) -> None:
  """Saves `array` to the first of `paths` (epath.Path) that can be written, atomically."""
  for path in paths:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique: hosts may write at once
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      with tmp.open("wb") as f:
        np.save(f, array)
      tmp.replace(path)  # a reader sees no file or a whole one
      return
    except OSError:  # a read-only data folder: try the next place
      tmp.unlink(missing_ok=True)


class TfdsSource(Source):
  """A TFDS dataset prepared as array_record, read with `tfds.data_source`.

  `labels` are read on first use only, with every image left undecoded, and
  saved as `<builder data_dir>/jtl_labels-<split>.npy` (or under
  LABELS_CACHE when that folder is read-only), so later runs read no record.

  >>> TfdsSource("mnist", "train")[0]["image"].shape   # once prepared  # doctest: +SKIP
  (28, 28, 1)
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds

    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
      raise _unknown(name) from None  # tfds' own message lists every dataset
    features = builder.info.features
    self._label_key = _label_key(name, features)
    try:
      # download=False: preparing data is a separate step, not a side effect of training.
      self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception:
      if not builder.is_prepared():
        raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; expected array_record files "
          f"(`tfds build {name} --file_format=array_record`)") from None
      raise
    self._builder = builder
    self._data_dir = data_dir
    self.name = name
    self.split = split
    self.class_names = list(features[self._label_key].names)  # "0", "1", ... when it has none

  @functools.cached_property
  def labels(self) -> np.ndarray:
    from etils import epath  # paths that may be gs://, like the data's own

    file = f"jtl_labels-{quote(self.split, safe='')}.npy"  # quoted: "train[:10%]" is a split too
    paths = [epath.Path(self._builder.data_dir) / file,
             epath.Path(LABELS_CACHE) / self._builder.info.full_name / file]  # name/[config/]version
    for path in paths:
      if path.exists():
        with path.open("rb") as f:
          labels = np.load(f)
        if len(labels) == len(self):  # else stale (the data was rebuilt): read them again
          return labels
    labels = self._read_labels()
    _save_first_writable(labels, paths)
    return labels

  def _read_labels(self, chunk: int = 8192) -> np.ndarray:
    # Every record is still read once, but its images stay undecoded bytes: a
    # 224x224 JPEG record parses in ~50 us this way, ~1 ms with its image decoded.
    import tensorflow_datasets as tfds

    skip = {k: tfds.decode.SkipDecoding() for k, f in self._builder.info.features.items()
            if isinstance(f, tfds.features.Image)}
    ds = tfds.data_source(self.name, split=self.split, data_dir=self._data_dir, download=False,
                          decoders=skip)
    labels = []
    for start in range(0, len(ds), chunk):  # batched reads run in parallel across files
      records = ds.__getitems__(range(start, min(start + chunk, len(ds))))
      labels += [int(r[self._label_key]) for r in records]
    return np.array(labels, np.int64)

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i: int) -> dict:
    record = self._ds[i]
    image = np.asarray(record["image"], np.uint8)
    return {"image": image if image.ndim == 3 else image[..., None], "label": int(record[self._label_key])}


# --- by name -----------------------------------------------------------------

AUTO_SIZE = 224   # An image folder's largest "auto" size, and a TFDS dataset's.


def image_shape(name: str) -> tuple[int, int]:
  """The image size and channels of config arguments size=auto and channels=auto: jtl's own
  datasets as the shipped studies ran them (config.IMAGE_SHAPES); an image folder's typical
  shorter side, at most AUTO_SIZE, in 1 channel when its images are grayscale; AUTO_SIZE
  and 3 for a TFDS dataset, or a folder that cannot be read (the run then says why).

  >>> image_shape("fashion_mnist")
  (28, 3)
  """
  base = name.split(SHIFT_SEP)[0]
  if base in IMAGE_SHAPES:
    return IMAGE_SHAPES[base]
  if base.startswith("folder:") or os.path.isdir(base):
    try:
      found = typical_shape(Path(base.removeprefix("folder:")))
    except (OSError, ValueError):
      found = None
    if found:
      return min(found[0], AUTO_SIZE), 1 if found[1] else 3
  return AUTO_SIZE, 3


def load_source(name: str, split: str, data_dir: str | None = None, *, skip_corrupt: bool = False,
                test_fraction: float | None = None) -> Source:
  """Returns the `split` ("train" or "test") of the dataset called `name`.

  `name` is "fashion_mnist", "digits", "folder:/path" (or an existing
  directory), or a TFDS name. `skip_corrupt` and `test_fraction` (the test
  carve of a folder without train/ and test/) apply to image folders.
  "NAME+shift:CORRUPTION:SEVERITY[:SEED]" is dataset NAME with every image
  corrupted (jtl/data/shift.py), e.g. "fashion_mnist+shift:gaussian_noise:3".

  >>> src = load_source("digits", "test")
  >>> len(src), src.num_classes
  (360, 10)
  >>> load_source("digits+shift:blur:2", "test").name
  'digits+shift:blur:2'
  """
  if SHIFT_SEP in name:
    base, corruption, severity, seed = parse_shift(name)
    return ShiftedSource(load_source(base, split, data_dir, skip_corrupt=skip_corrupt,
                                     test_fraction=test_fraction), corruption, severity, seed)
  if name == "fashion_mnist":
    return fashion_mnist(split, data_dir)
  if name == "digits":
    return digits(split)
  if name.startswith("folder:") or os.path.isdir(name):
    return FolderSource(Path(name.removeprefix("folder:")), split, skip_corrupt=skip_corrupt,
                        test_fraction=test_fraction)
  return TfdsSource(name, split, data_dir)
