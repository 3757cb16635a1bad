"""Tests for jtl.data.shift: ImageNet-C-style corruptions and `NAME+shift:...` datasets."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jtl.data import (CORRUPTIONS, ArraySource, ShiftedSource, Source, corrupt, load_source, make_splits,
                      parse_shift)

SHAPES = [(28, 28, 1), (8, 8, 1), (32, 32, 3)]


def noise_image(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def scene(h, w, c):
  """A natural-looking image: a lit gradient, a textured surface, a bright disc and a dark square."""
  y, x = np.mgrid[0:h, 0:w]
  y, x = y / h, x / w
  img = 0.25 + 0.35 * x + 0.1 * y
  img += 0.12 * np.sin(18 * x + 2) * np.cos(14 * y) + 0.06 * np.sin(23 * x + 31 * y)
  img = np.where((x - 0.35) ** 2 + (y - 0.4) ** 2 < 0.04, 0.9, img)
  img = np.where((abs(x - 0.7) < 0.12) & (abs(y - 0.7) < 0.15), 0.1, img)
  img = img[..., None] * np.linspace(1, 0.8, c)  # channels differ a little
  return np.round(img * 255).astype(np.uint8)


def distortion(image, name, severity):
  return np.abs(corrupt(image, name, severity, np.random.default_rng(0)).astype(int) - image).mean()


# --- corruptions -------------------------------------------------------------

@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_is_deterministic_for_a_seed(name):
  image = noise_image((16, 16, 3))
  a = corrupt(image, name, 3, np.random.default_rng(5))
  assert np.array_equal(a, corrupt(image, name, 3, np.random.default_rng(5)))


def test_random_corruptions_vary_with_the_seed():
  image = noise_image((16, 16, 3))
  noisy = [corrupt(image, "gaussian_noise", 2, np.random.default_rng(s)) for s in (0, 1)]
  assert not np.array_equal(*noisy)
  # Rotation draws only its direction: over 8 seeds both directions appear.
  rotated = {corrupt(image, "rotate", 2, np.random.default_rng(s)).tobytes() for s in range(8)}
  assert len(rotated) == 2


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_a_clean_copy(name):
  image = noise_image((8, 8, 1))
  out = corrupt(image, name, 0, np.random.default_rng(0))
  assert np.array_equal(out, image) and out is not image


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_keeps_shape_and_changes_the_image(name, shape):
  image = noise_image(shape)
  for severity in range(1, 6):
    out = corrupt(image, name, severity, np.random.default_rng(severity))
    assert out.shape == shape and out.dtype == np.uint8, (name, severity)
    assert not np.array_equal(out, image), (name, severity)
    if name == "invert":
      assert np.array_equal(out, 255 - image)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3), (224, 224, 3)])
@pytest.mark.parametrize("name", ["gaussian_noise", "blur", "contrast", "pixelate"])
def test_distortion_grows_with_severity(name, shape):
  # pixelate holds at these sizes, not at every size: where a mild factor gives uneven blocks
  # and the next an even grid (0.6 vs 0.5 at 16, 24 or 64 px) the milder one can measure worse.
  image = scene(*shape)
  d = [distortion(image, name, s) for s in range(1, 6)]
  assert all(np.diff(d) >= 0), d
  assert d[4] > d[0], d


def test_blur_scales_with_image_size():
  # The same scene at 28 and 224 px loses about the same detail: relative, not pixel, blur.
  small, large = (distortion(scene(s, s, 1), "blur", 3) for s in (28, 224))
  assert 0.5 < small / large < 2, (small, large)


def test_corrupt_rejects_bad_input():
  image = noise_image((8, 8, 1))
  with pytest.raises(ValueError, match="unknown corruption 'fog'; expected one of gaussian_noise, blur"):
    corrupt(image, "fog", 1, np.random.default_rng(0))
  for severity in (6, -1, 2.0):
    with pytest.raises(ValueError, match=r"severity .*; expected an integer in 0\.\.5"):
      corrupt(image, "blur", severity, np.random.default_rng(0))
  with pytest.raises(ValueError, match="expected uint8 HxWxC with C 1 or 3"):
    corrupt(image.astype(np.float32), "blur", 1, np.random.default_rng(0))
  with pytest.raises(ValueError, match="expected uint8 HxWxC"):
    corrupt(image[..., 0], "blur", 1, np.random.default_rng(0))


# --- dataset names -----------------------------------------------------------

@pytest.mark.parametrize("spec, parsed", [
  ("fashion_mnist+shift:gaussian_noise:3", ("fashion_mnist", "gaussian_noise", 3, 0)),
  ("fashion_mnist+shift:blur:2:7", ("fashion_mnist", "blur", 2, 7)),
  ("folder:/data/x+shift:blur:2", ("folder:/data/x", "blur", 2, 0)),
  ("digits+shift:blur:2+shift:invert:1", ("digits+shift:blur:2", "invert", 1, 0)),
  ("digits+shift:jpeg:0", ("digits", "jpeg", 0, 0)),
  ("folder:/data/x", ("folder:/data/x", None, 0, 0)),
])
def test_parse_shift(spec, parsed):
  assert parse_shift(spec) == parsed


@pytest.mark.parametrize("spec, why", [
  ("digits+shift:fog:1", "unknown corruption 'fog'"),
  ("digits+shift:blur:6", "severity 6 out of range"),
  ("digits+shift:blur", "1 field"),
  ("digits+shift:blur:", "are not non-negative integers"),
  ("digits+shift:blur:two", "are not non-negative integers"),
  ("digits+shift:blur:1:2:3", "4 field"),
  ("+shift:blur:1", "no dataset NAME"),
])
def test_parse_shift_rejects_bad_specs(spec, why):
  with pytest.raises(ValueError) as e:
    parse_shift(spec)
  message = str(e.value)
  assert repr(spec) in message and why in message, message
  assert "NAME+shift:CORRUPTION:SEVERITY[:SEED]" in message, message
  assert ", ".join(CORRUPTIONS) in message, message


def test_load_source_inverted_digits():
  clean = load_source("digits", "test")
  shifted = load_source("digits+shift:invert:1", "test")
  assert isinstance(shifted, ShiftedSource) and shifted.name == "digits+shift:invert:1"
  assert len(shifted) == len(clean) and shifted.class_names == clean.class_names
  assert shifted.split == "test" and np.array_equal(shifted.labels, clean.labels)
  for i in range(len(clean)):
    assert np.array_equal(shifted[i]["image"], 255 - clean[i]["image"]), i
    assert shifted[i]["label"] == clean[i]["label"]


def test_load_source_refuses_a_bad_spec():
  with pytest.raises(ValueError, match="'digits\\+shift:blur:9'.*severity 9 out of range"):
    load_source("digits+shift:blur:9", "test")


def test_shifted_images_differ_by_split_and_seed_and_repeat_on_reload():
  images = np.full((3, 8, 8, 1), 128, np.uint8)
  train, test = (ShiftedSource(ArraySource("toy", images, [0, 1, 2], list("abc"), split),
                               "gaussian_noise", 3) for split in ("train", "test"))
  assert not np.array_equal(train[0]["image"], test[0]["image"])
  assert not np.array_equal(train[0]["image"], train[1]["image"])  # per image, too

  a = load_source("digits+shift:gaussian_noise:3", "train")
  b = load_source("digits+shift:gaussian_noise:3", "train")
  other = load_source("digits+shift:gaussian_noise:3:1", "train")
  assert other.name == "digits+shift:gaussian_noise:3:1"
  for i in (0, 5, len(a) - 1):
    assert np.array_equal(a[i]["image"], b[i]["image"])
    assert not np.array_equal(a[i]["image"], other[i]["image"])
  assert np.array_equal(a[-1]["image"], a[len(a) - 1]["image"])


def shifted_pixels():
  base = ArraySource("toy", np.full((2, 8, 8, 3), 128, np.uint8), [0, 1], ["a", "b"], "test")
  return ShiftedSource(base, "gaussian_noise", 3, seed=4)[1]["image"].tobytes().hex()


def test_shifted_images_are_the_same_in_another_process():
  # Another string-hash salt there: a stream seeded by Python's hash() would differ.
  salt = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
  code = "import test_shift; print(test_shift.shifted_pixels())"
  other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(__file__), env={**os.environ, "PYTHONHASHSEED": salt})
  assert other.stdout.strip() == shifted_pixels()


class LazyLabels(Source):
  """A source that counts reads of its labels, like a TFDS source that reads them on demand."""

  def __init__(self):
    self.name, self.split, self.class_names, self.reads = "lazy", "train", ["a", "b"], 0
    self.skipped = ["bad.jpg"]

  @property
  def labels(self):
    self.reads += 1
    return np.array([0, 1, 1])

  def __len__(self):
    return 3

  def __getitem__(self, i):
    return {"image": np.zeros((8, 8, 3), np.uint8), "label": int(i > 0)}


def test_shifted_source_reads_labels_only_on_demand():
  base = LazyLabels()
  src = ShiftedSource(base, "contrast", 2)
  assert len(src) == 3 and src[2]["label"] == 1 and src.num_classes == 2
  assert base.reads == 0
  assert src.labels.tolist() == [0, 1, 1] and base.reads == 1
  assert src.parent is base and src.skipped == ["bad.jpg"]


def test_make_splits_on_a_shifted_dataset():
  clean = make_splits({"name": "digits", "shots": 2}, seed=0)
  shifted = make_splits({"name": "digits+shift:blur:3", "shots": 2}, seed=0)
  assert np.array_equal(clean["train"].indices, shifted["train"].indices)
  assert shifted["test"].name == "digits+shift:blur:3"
  assert not np.array_equal(clean["train"][0]["image"], shifted["train"][0]["image"])
