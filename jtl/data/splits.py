"""What a run trains on: class subsets, k-shot draws and a validation split.

The selection functions are pure numpy on a label array and return
positions into it, so they compose by indexing and never decode an image.
`make_splits` chains them in a fixed order: subset the train classes, carve
validation out of train, draw k shots from the rest; test is only subset.

 splits = make_splits({"name": "fashion_mnist", "classes": [5, 6, 7, 8, 9],
            "shots": 10, "val_per_class": 100}, seed=0)
 len(splits["train"]), splits["train"].class_names[0]   # 50, 'Sandal'
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from jtl.data.base import Source, carve
from jtl.data.sources import load_source


def class_subset(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """Indices (ascending) of the examples whose label is in `classes`.

  >>> class_subset(np.array([0, 5, 6, 5]), [5, 6])
  array([1, 2, 3])
  """
  if len(set(classes)) != len(classes):
    raise ValueError(f"classes {list(classes)} has repeats; expected distinct class ids")
  return np.flatnonzero(np.isin(labels, classes))


def _per_class(labels: np.ndarray, num_classes: int | None) -> list[tuple[int, np.ndarray]]:
  classes = range(num_classes) if num_classes is not None else np.unique(labels)
  return [(int(c), np.flatnonzero(labels == c)) for c in classes]


def k_shot(labels: np.ndarray, shots: int, seed: int | Sequence[int], *, num_classes: int | None = None,
           class_names: Sequence[str] | None = None) -> np.ndarray:
  """Indices (ascending) of exactly `shots` random examples per class.

  Classes are those in `labels`, or 0..num_classes-1 if given. For one seed,
  the k-shot draw is a prefix of the (k+1)-shot draw, so shot curves are nested.

  >>> k_shot(np.array([0, 0, 0, 1, 1]), shots=2, seed=0).size
  4
  """
  rng = np.random.default_rng(seed)
  picked = []
  for c, idx in _per_class(np.asarray(labels), num_classes):
    if len(idx) < shots:
      name = f"class {class_names[c]!r}" if class_names is not None else f"class {c}"
      raise ValueError(f"{name} has {len(idx)} training examples left (after the validation "
                       f"carve), fewer than shots={shots}; lower data.shots (config argument "
                       "shots=) or data.val_per_class, or pick other data.classes.")
    picked.append(rng.permutation(idx)[:shots])
  return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def carve_validation(labels: np.ndarray, *, val_per_class: int | None = None,
          val_fraction: float | None = None, seed: int,
          class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Splits train positions into disjoint, stratified (train, val) indices.

  Give either `val_per_class` (exact count per class) or `val_fraction`.

  >>> train, val = carve_validation(np.array([0, 0, 0, 1, 1, 1]), val_per_class=1, seed=0)
  >>> len(train), len(val)
  (4, 2)
  """
  labels = np.asarray(labels)
  if (val_per_class is None) == (val_fraction is None):
    raise ValueError("carve_validation: expected exactly one of val_per_class or val_fraction")
  if val_fraction is not None:
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(np.arange(len(labels)), test_size=val_fraction,
                   stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)
  rng = np.random.default_rng(seed)
  val = []
  for c, idx in _per_class(labels, None):
    if len(idx) <= val_per_class:
      name = f"class {class_names[c]!r}" if class_names is not None else f"class {c}"
      raise ValueError(f"{name} has {len(idx)} training examples; expected more than "
                       f"data.val_per_class={val_per_class} so some remain for training; lower "
                       "data.val_per_class, or carve a fraction of each class instead "
                       "(--config.data.val_per_class=0 --config.data.val_fraction=0.1)")
    val.append(rng.permutation(idx)[:val_per_class])
  val = np.sort(np.concatenate(val))
  return np.setdiff1d(np.arange(len(labels)), val), val


class Subset(Source):
  """A random-access view of `source[indices]` with labels renumbered by `label_map`.

  `label_map` maps original label -> new label (None keeps labels). Without a
  map, the source's `labels` are read only if this subset's are asked for, so a
  run on a whole dataset never reads them.

  >>> sub = Subset(src, class_subset(src.labels, [5, 9]), {5: 0, 9: 1})   # doctest: +SKIP
  >>> sub.class_names                                                     # doctest: +SKIP
  ['Sandal', 'Ankle boot']
  """

  def __init__(self, source: Source, indices: np.ndarray, label_map: Mapping[int, int] | None = None):
    self.parent = source
    self.indices = np.asarray(indices, np.int64)
    self.label_map = dict(label_map) if label_map is not None else None
    self.name = source.name
    self.split = source.split
    if self.label_map is None:
      self.class_names = list(source.class_names)
    else:
      self._lookup = np.full(source.num_classes, -1, np.int64)
      self._lookup[list(self.label_map)] = list(self.label_map.values())
      # Checked now: picking a class subset has read the source's labels already.
      if (self.labels < 0).any():
        missed = np.asarray(source.labels)[self.indices][self.labels < 0]
        raise ValueError(f"{source.name}: label_map {self.label_map} misses labels "
                f"{sorted(set(missed.tolist()))} of the chosen examples")
      by_new = sorted(self.label_map, key=self.label_map.get)
      self.class_names = [source.class_names[c] for c in by_new]

  @functools.cached_property
  def labels(self) -> np.ndarray:
    parent_labels = np.asarray(self.parent.labels)[self.indices]
    return parent_labels if self.label_map is None else self._lookup[parent_labels]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    example = dict(self.parent[int(self.indices[i])])
    if self.label_map is not None:
      example["label"] = int(self._lookup[example["label"]])
    return example


def _get(cfg, key, default=None):
  # ConfigDict and dict both have .get; a ConfigDict field set to None reads as None.
  return cfg.get(key, default)


DEFAULT_TEST_FRACTION = 0.2   # A flat folder's test carve when the config names none.


def _out_of_range(name: str, bad: list[int], class_names: Sequence[str]) -> str:
  shown = ", ".join(f"{i}={c!r}" for i, c in enumerate(class_names[:12]))
  more = ", ..." if len(class_names) > 12 else ""
  return (f"{name}: data.classes {bad} out of range; it has {len(class_names)} classes "
          f"({shown}{more}), so expected ids in 0..{len(class_names) - 1}, or classes=all "
          "(config argument) for every class")


def _say_carve(test_src: Source) -> None:
  """Says in the run's log how a flat folder's test split was carved (nothing otherwise)."""
  folder = getattr(test_src, "base", test_src)   # under a +shift: corruption
  line = folder.describe_carve() if hasattr(folder, "describe_carve") else None
  if line:
    from jtl.runtime import log   # JAX is imported only when there is something to say.
    log(line)


def make_splits(cfg, seed: int) -> dict[str, Subset | None]:
  """Builds {"train", "val", "test"} Subsets for a dataset config.

  `cfg` (dict or ConfigDict) has `name` and optional `data_dir`, `classes`,
  `shots`, `val_per_class` or `val_fraction` (neither: "val" is None), `skip_corrupt`
  and `test_fraction` (a folder without train/ and test/: the test carve, default 0.2).

  >>> splits = make_splits({"name": "digits", "shots": 5, "val_per_class": 10}, seed=0)
  >>> len(splits["train"]), len(splits["val"])
  (50, 100)
  """
  name, data_dir = cfg["name"], _get(cfg, "data_dir")
  options = dict(skip_corrupt=bool(_get(cfg, "skip_corrupt", False)),
                 test_fraction=_get(cfg, "test_fraction", DEFAULT_TEST_FRACTION))
  train_src = load_source(name, "train", data_dir, **options)
  test_src = load_source(name, "test", data_dir, **options)
  _say_carve(test_src)

  classes = _get(cfg, "classes")
  if classes is None:
    label_map, train_idx, test_idx = None, np.arange(len(train_src)), np.arange(len(test_src))
  else:
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < train_src.num_classes]
    if bad:
      raise ValueError(_out_of_range(name, bad, train_src.class_names))
    label_map = {c: i for i, c in enumerate(classes)}
    train_idx = class_subset(train_src.labels, classes)
    test_idx = class_subset(test_src.labels, classes)
  num_classes = len(classes) if classes is not None else train_src.num_classes
  train = Subset(train_src, train_idx, label_map)

  val = None
  if _get(cfg, "val_per_class") and _get(cfg, "val_fraction"):
    raise ValueError(f"config fields data.val_per_class={cfg['val_per_class']} and "
                     f"data.val_fraction={cfg['val_fraction']} both carve validation; set one "
                     "of them to 0 (val_per_class) or None (val_fraction)")
  if _get(cfg, "val_per_class") or _get(cfg, "val_fraction"):
    if _get(cfg, "val_fraction"):
      rest, held_out = carve(train.labels, float(cfg["val_fraction"]), seed, train.class_names)
    else:
      rest, held_out = carve_validation(train.labels, val_per_class=int(cfg["val_per_class"]),
                                        seed=seed, class_names=train.class_names)
    val = Subset(train_src, train_idx[held_out], label_map)
    train_idx = train_idx[rest]
    train = Subset(train_src, train_idx, label_map)
  if _get(cfg, "shots"):
    # Only train labels are read here: the test split never feeds the k-shot draw.
    # Seed [seed, 1]: a random stream independent of the validation draw's.
    train_idx = train_idx[k_shot(train.labels, int(cfg["shots"]), [seed, 1], num_classes=num_classes,
                                 class_names=train.class_names)]
    train = Subset(train_src, train_idx, label_map)
  return {"train": train, "val": val, "test": Subset(test_src, test_idx, label_map)}
