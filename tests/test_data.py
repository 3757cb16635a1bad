"""Tests for jtl.data: sources, split selection and grain pipelines."""

import gzip
import io
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from jtl.data import (ArraySource, TfdsSource, carve_validation, class_subset, eval_batches, k_shot,
           load_source, make_splits, preprocess, random_crop_flip, read_idx, sources, train_dataset)


def toy_source(n=64, size=8):
  """Example i has label i and every pixel equal to i, so batches show which examples they hold."""
  images = np.repeat(np.arange(n, dtype=np.uint8), size * size * 3).reshape(n, size, size, 3)
  return ArraySource("toy", images, np.arange(n), [str(i) for i in range(n)], "train")


# --- selection ---------------------------------------------------------------

def test_k_shot_exact_and_seeded():
  labels = np.repeat(np.arange(4), 30)
  a = k_shot(labels, 5, seed=0)
  assert np.bincount(labels[a]).tolist() == [5, 5, 5, 5]
  assert len(set(a.tolist())) == 20
  assert np.array_equal(a, k_shot(labels, 5, seed=0))
  assert not np.array_equal(a, k_shot(labels, 5, seed=1))
  # Nested draws: the 3-shot set sits inside the 5-shot set for one seed.
  assert set(k_shot(labels, 3, seed=0).tolist()) <= set(a.tolist())


def test_k_shot_too_few_names_class():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
  with pytest.raises(ValueError, match="class 1 has 2 training examples"):
    k_shot(labels, 3, seed=0)
  with pytest.raises(ValueError, match="class 3 has 0 training examples"):
    k_shot(labels, 1, seed=0, num_classes=4)


def test_carve_validation_disjoint_stratified():
  labels = np.repeat(np.arange(3), [10, 20, 30])
  train, val = carve_validation(labels, val_per_class=4, seed=0)
  assert np.bincount(labels[val]).tolist() == [4, 4, 4]
  assert not set(train.tolist()) & set(val.tolist())
  assert len(train) + len(val) == len(labels)
  train, val = carve_validation(labels, val_fraction=0.5, seed=0)
  assert np.bincount(labels[val]).tolist() == [5, 10, 15]


def test_class_subset_remaps_in_given_order():
  splits = make_splits({"name": "fashion_mnist", "classes": [7, 2]}, seed=0)
  train = splits["train"]
  assert train.class_names == ["Sneaker", "Pullover"]
  original = train.parent.labels[train.indices]
  assert set(original.tolist()) == {2, 7}
  assert np.array_equal(train.labels, np.where(original == 7, 0, 1))
  assert train[0]["label"] == train.labels[0]
  assert len(splits["test"]) == 2000 and splits["val"] is None
  assert class_subset(np.array([3, 1, 3, 2]), [3, 2]).tolist() == [0, 2, 3]


def test_make_splits_k_shot_from_train_only():
  cfg = {"name": "fashion_mnist", "data_dir": None, "classes": [5, 6, 7, 8, 9], "shots": 10,
     "val_per_class": 20, "skip_corrupt": False}
  splits = make_splits(cfg, seed=0)
  train, val, test = splits["train"], splits["val"], splits["test"]
  assert len(train) == 50 and np.bincount(train.labels).tolist() == [10] * 5
  assert np.bincount(val.labels).tolist() == [20] * 5
  assert train.parent.split == "train" and len(train.parent) == 60000
  assert val.parent.split == "train" and test.parent.split == "test"
  assert not set(train.indices.tolist()) & set(val.indices.tolist())
  assert np.array_equal(train.indices, make_splits(cfg, seed=0)["train"].indices)
  assert not np.array_equal(train.indices, make_splits(cfg, seed=1)["train"].indices)
  # The validation set does not depend on how many shots are drawn.
  assert np.array_equal(val.indices, make_splits({**cfg, "shots": 5}, seed=0)["val"].indices)


# --- sources -------------------------------------------------------------------

def test_fashion_mnist():
  train, test = load_source("fashion_mnist", "train"), load_source("fashion_mnist", "test")
  assert (len(train), len(test)) == (60000, 10000)
  example = test[0]
  assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
  assert train.labels.min() == 0 and train.labels.max() == 9 and train.num_classes == 10
  assert np.bincount(test.labels).tolist() == [1000] * 10


def test_idx_errors_name_the_file(tmp_path):
  good = tmp_path / "labels.gz"
  good.write_bytes(gzip.compress(b"\0\0\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])))
  assert read_idx(good, 1).tolist() == [1, 2, 3]
  short = tmp_path / "short.gz"
  short.write_bytes(gzip.compress(b"\0\0\x08\x01" + (5).to_bytes(4, "big") + bytes([1, 2])))
  with pytest.raises(ValueError, match=f"{short}.*expected 5"):
    read_idx(short, 1)
  with pytest.raises(ValueError, match=f"{good}: bad idx magic"):
    read_idx(good, 3)
  signed = tmp_path / "signed.gz"  # dtype code 0x09 (int8) instead of 0x08 (uint8)
  signed.write_bytes(gzip.compress(b"\0\0\x09\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])))
  with pytest.raises(ValueError, match=f"{signed}: bad idx magic"):
    read_idx(signed, 1)
  cube = tmp_path / "cube.gz"  # a 2x2x2 images file read where labels (1 dim) are expected
  cube.write_bytes(gzip.compress(b"\0\0\x08\x03" + (2).to_bytes(4, "big") * 3 + bytes(8)))
  assert read_idx(cube, 3).shape == (2, 2, 2)
  with pytest.raises(ValueError, match=f"{cube}: bad idx magic"):
    read_idx(cube, 1)
  cut = tmp_path / "cut.gz"
  cut.write_bytes(good.read_bytes()[:-6])
  with pytest.raises(ValueError, match=str(cut)):
    read_idx(cut, 1)


def test_fashion_mnist_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*dataset-fashion-mnist"):
    load_source("fashion_mnist", "train", data_dir=str(tmp_path))


def test_digits_split_disjoint_stratified():
  train, test = load_source("digits", "train"), load_source("digits", "test")
  assert len(train) + len(test) == 1797
  assert not set(train.indices.tolist()) & set(test.indices.tolist())
  share = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
  assert np.all(np.abs(share - 0.2) < 0.02)
  assert train[0]["image"].shape == (8, 8, 1) and train.images.max() == 255


def test_unknown_dataset_one_line():
  with pytest.raises(ValueError) as err:
    load_source("no_such_dataset_xyz", "train")
  assert "no_such_dataset_xyz" in str(err.value) and "\n" not in str(err.value)
  with pytest.raises(ValueError, match="'celeb_a' has features .*expected an 'image' and a 'label'"):
    load_source("celeb_a", "train")  # a TFDS dataset without labels; its info needs no download


def test_tfds_source_maps_features():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=6):  # no .labels: they would be cached in tfds' own folder
    src = load_source("mnist", "train")
    assert len(src) == 6 and src.num_classes == 10
    assert src[0]["image"].shape == (28, 28, 1) and 0 <= src[0]["label"] < 10


@pytest.fixture
def tiny_tfds(tmp_path, monkeypatch):
  """The data_dir of a prepared TFDS dataset "jtl_tiny_images" (array_record): 20 train, 6 test.

  Example i is an 8x8 PNG with every pixel i and label i % 3, so its decoded image tells its label.
  """
  import tensorflow_datasets as tfds

  class JtlTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(20), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
      for i in range(n):
        png = io.BytesIO()  # PNG bytes: tfds needs TensorFlow to encode an array
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(png, "png")
        yield i, {"image": png.getvalue(), "label": i % 3}

  JtlTinyImages(data_dir=tmp_path / "tfds", file_format="array_record").download_and_prepare()
  monkeypatch.setattr(sources, "LABELS_CACHE", str(tmp_path / "home_cache"))
  return tmp_path / "tfds"


def _count_calls(monkeypatch, cls, method) -> list:
  calls = []
  original = getattr(cls, method)

  def counted(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(cls, method, counted)
  return calls


def _true_labels(data_dir, split="train"):
  src = load_source("jtl_tiny_images", split, str(data_dir))
  return [int(src[i]["image"][0, 0, 0]) % 3 for i in range(len(src))]


def test_tfds_labels_decode_no_image_and_are_cached(tiny_tfds, monkeypatch):
  import tensorflow_datasets as tfds

  truth = _true_labels(tiny_tfds)
  decoded = _count_calls(monkeypatch, tfds.features.Image, "decode_example_np")
  records = _count_calls(monkeypatch, tfds.features.FeaturesDict, "deserialize_example_np")
  assert load_source("jtl_tiny_images", "train", str(tiny_tfds)).labels.tolist() == truth
  assert (len(decoded), len(records)) == (0, 20)
  assert np.load(tiny_tfds / "jtl_tiny_images" / "1.0.0" / "jtl_labels-train.npy").tolist() == truth
  again = load_source("jtl_tiny_images", "train", str(tiny_tfds))
  assert again.labels.tolist() == truth and len(records) == 20  # from the cache: no record read
  # The counters do see reads and decodes.
  assert again[3]["label"] == truth[3] and (len(decoded), len(records)) == (1, 21)


def test_tfds_labels_cached_at_home_when_data_is_read_only(tiny_tfds, monkeypatch):
  import tensorflow_datasets as tfds
  from etils import epath

  path_type = type(epath.Path(tiny_tfds))
  open_file = path_type.open

  def read_only(path, mode="r", *args, **kwargs):  # root ignores chmod, so refuse writes here
    if "w" in mode and str(path).startswith(str(tiny_tfds)):
      raise PermissionError(f"read-only: {path}")
    return open_file(path, mode, *args, **kwargs)

  monkeypatch.setattr(path_type, "open", read_only)
  truth = _true_labels(tiny_tfds, "test")
  assert load_source("jtl_tiny_images", "test", str(tiny_tfds)).labels.tolist() == truth
  assert not list(tiny_tfds.rglob("jtl_labels-*"))
  cached = Path(sources.LABELS_CACHE) / "jtl_tiny_images" / "1.0.0" / "jtl_labels-test.npy"
  assert np.load(cached).tolist() == truth
  records = _count_calls(monkeypatch, tfds.features.FeaturesDict, "deserialize_example_np")
  assert load_source("jtl_tiny_images", "test", str(tiny_tfds)).labels.tolist() == truth and not records


def test_whole_tfds_dataset_run_reads_no_labels(tiny_tfds, monkeypatch):
  def refuse(self):
    raise AssertionError(f"{self.name} {self.split}: labels read")

  monkeypatch.setattr(TfdsSource, "labels", property(refuse))
  splits = make_splits({"name": "jtl_tiny_images", "data_dir": str(tiny_tfds)}, seed=0)
  train = splits["train"]
  assert (len(train), len(splits["test"]), train.num_classes) == (20, 6, 3)
  assert train.class_names == ["a", "b", "c"]
  assert train[5]["label"] == train[5]["image"][0, 0, 0] % 3
  batch = next(iter(train_dataset(train, batch_size=4, image_size=8, seed=0)))
  assert batch["image"].shape == (4, 8, 8, 3)
  assert not list(tiny_tfds.rglob("jtl_labels-*"))


def _save(path, mode, size):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, color=1 if mode in ("L", "P") else (1,) * len(mode)).save(path)


@pytest.fixture
def image_folder(tmp_path):
  _save(tmp_path / "cat" / "a.png", "RGB", (10, 12))
  _save(tmp_path / "cat" / "b.JPG", "L", (20, 8))
  _save(tmp_path / "dog" / "c.png", "RGBA", (5, 5))
  _save(tmp_path / "dog" / "d.gif", "P", (7, 9))
  (tmp_path / "dog" / "notes.txt").write_text("not an image")
  (tmp_path / "dog" / "x.jpg").write_bytes(np.random.default_rng(0).bytes(300))
  return tmp_path


def test_folder_corrupt_raises_with_path(image_folder):
  src = load_source(f"folder:{image_folder}", "train")
  assert len(src) == 5 and src.class_names == ["cat", "dog"]
  with pytest.raises(ValueError, match=f"cannot decode image {image_folder / 'dog' / 'x.jpg'}"):
    [src[i] for i in range(len(src))]


def test_folder_skip_corrupt(image_folder):
  src = load_source(str(image_folder), "train", skip_corrupt=True)
  assert len(src) == 4 and src.num_skipped == 1 and src.skipped == [str(image_folder / "dog" / "x.jpg")]
  assert src.labels.tolist() == [0, 0, 1, 1]
  shapes = [src[i]["image"].shape for i in range(len(src))]
  assert shapes == [(12, 10, 3), (8, 20, 3), (5, 5, 3), (9, 7, 3)]
  assert all(src[i]["image"].dtype == np.uint8 for i in range(len(src)))
  with pytest.raises(ValueError, match="no train/ and test/"):
    load_source(str(image_folder), "test")


def test_folder_splits_and_empty_class(tmp_path):
  for split in ("train", "test"):
    for name in ("a", "b"):
      _save(tmp_path / split / name / "0.png", "RGB", (4, 4))
  assert len(load_source(f"folder:{tmp_path}", "test")) == 2
  (tmp_path / "train" / "c").mkdir()
  with pytest.raises(ValueError, match=f"{tmp_path / 'train' / 'c'}: no images"):
    load_source(f"folder:{tmp_path}", "train")


# --- pipelines -----------------------------------------------------------------

def test_preprocess_channels_and_size():
  gray = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
  rgb = preprocess(gray, image_size=8, channels=3)
  assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
  assert np.array_equal(rgb[..., 0], rgb[..., 2])
  assert preprocess(np.zeros((5, 7, 3), np.uint8), image_size=6, channels=1).shape == (6, 6, 1)
  assert np.array_equal(preprocess(gray, image_size=4, channels=1), gray)


def test_random_crop_flip_is_a_padded_crop():
  image = np.random.default_rng(0).integers(1, 255, (16, 16, 3), dtype=np.uint8)
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
  candidates = [c for y in range(5) for x in range(5)
         for c in (padded[y:y + 16, x:x + 16], padded[y:y + 16, x:x + 16][:, ::-1])]
  outs = [random_crop_flip(image, np.random.default_rng(s)) for s in range(30)]
  assert all(any(np.array_equal(o, c) for c in candidates) for o in outs)
  assert len({o.tobytes() for o in outs}) > 10
  tiny = image[:7, :7]  # under 8 pixels the padding is 0: only the flip remains
  flips = {random_crop_flip(tiny, np.random.default_rng(s)).tobytes() for s in range(20)}
  assert flips == {tiny.tobytes(), np.ascontiguousarray(tiny[:, ::-1]).tobytes()}


def test_train_batches_shape_and_determinism():
  src = toy_source()
  it = iter(train_dataset(src, batch_size=8, image_size=12, seed=0))
  batch = next(it)
  assert batch["image"].shape == (8, 12, 12, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  first = [batch] + [next(it) for _ in range(9)]
  again = iter(train_dataset(src, batch_size=8, image_size=12, seed=0))
  assert all(np.array_equal(a["image"], next(again)["image"]) for a in first)
  other = next(iter(train_dataset(src, batch_size=8, image_size=12, seed=1)))
  assert not np.array_equal(first[0]["label"], other["label"])
  # One epoch is 8 batches: each example once, and the next epoch is reshuffled.
  epoch = np.concatenate([b["label"] for b in first[:8]])
  assert sorted(epoch.tolist()) == list(range(64))
  assert not np.array_equal(first[0]["label"], first[8]["label"])
  # A 5-example set (5-shot, 1 class) still fills batches of 8 by running into the next epoch.
  small = next(iter(train_dataset(toy_source(n=5), batch_size=8, image_size=8, seed=0)))
  assert set(small["label"][:5].tolist()) == set(range(5))


def test_train_resume_from_state():
  ds = train_dataset(toy_source(), batch_size=8, image_size=8, seed=0)
  it = iter(ds)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(6)]
  resumed = iter(ds)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert np.array_equal(got["image"], want["image"]) and np.array_equal(got["label"], want["label"])


def test_train_resume_through_orbax(tmp_path):
  ds = train_dataset(toy_source(), batch_size=8, image_size=8, seed=0)
  it = iter(ds)
  for _ in range(3):
    next(it)
  with ocp.CheckpointManager(tmp_path) as mgr:
    mgr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  expected = [next(it)["image"] for _ in range(3)]
  resumed = iter(ds)
  with ocp.CheckpointManager(tmp_path) as mgr:
    mgr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert all(np.array_equal(next(resumed)["image"], want) for want in expected)


def test_train_shards_disjoint():
  src = toy_source()
  seen = []
  for shard in range(2):
    it = iter(train_dataset(src, batch_size=8, image_size=8, augment=False, seed=0,
                shard_index=shard, shard_count=2))
    seen.append({int(y) for _ in range(4) for y in next(it)["label"]})
  assert len(seen[0]) == len(seen[1]) == 32
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(64))


def test_eval_batches_cover_each_example_once():
  src = toy_source(n=37)
  batches = list(eval_batches(src, batch_size=8, image_size=8))
  assert len(batches) == 5 and all(b["image"].shape == (8, 8, 8, 3) for b in batches)
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  assert labels.tolist() == list(range(37))
  assert batches[-1]["mask"].sum() == 5
  # Images still match their labels (pixel value i for example i) after batching.
  assert all(np.all(b["image"][b["mask"]][:, 0, 0, 0] == b["label"][b["mask"]]) for b in batches)
  # 33 examples in 2 shards of 17 and 16: both yield 3 batches, the second's last one all padding.
  src = toy_source(n=33)
  shards = [list(eval_batches(src, batch_size=8, image_size=8, shard_index=i, shard_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 3 and not shards[1][-1]["mask"].any()
  covered = sorted(int(y) for s in shards for b in s for y in b["label"][b["mask"]])
  assert covered == list(range(33))


@pytest.mark.slow
def test_a_run_lists_and_counts_the_images_skip_corrupt_left_out(tmp_path):
  from jtl import data, train
  from test_train import tiny_config
  root = tmp_path / "images"
  for split in ("train", "test"):
    for name in ("cat", "dog"):
      for i in range(3):
        _save(root / split / name / f"{i}.png", "L", (8, 8))
  bad = root / "train" / "dog" / "x.jpg"
  bad.write_bytes(np.random.default_rng(0).bytes(300))
  c = tiny_config(**{"data.name": f"folder:{root}", "data.classes": None,
                     "data.skip_corrupt": True, "total_steps": 1, "data.batch_size": 4})
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["skipped_files"] == 1
  assert (tmp_path / "run" / data.SKIPPED_FILE).read_text() == f"{bad}\n"
