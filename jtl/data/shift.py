"""Deterministic image corruptions in the style of ImageNet-C, addressable by dataset name.

A corruption is a pure function `(image, severity, rng) -> image` on uint8
HxWxC images (C is 1 or 3) with severity 1..5; severity 0 is the clean image.
A dataset name `NAME+shift:CORRUPTION:SEVERITY[:SEED]` (see `parse_shift`)
gives the dataset NAME with every image corrupted, each by its own random
stream, so a shifted test set is the same on every run and every machine.

 src = load_source("fashion_mnist+shift:gaussian_noise:3", "test")
 src[0]["image"].shape, src.name   # (28, 28, 1), 'fashion_mnist+shift:gaussian_noise:3'

Severity tables follow Hendrycks & Dietterich (2019) where a value does not
depend on the image's size (noise, contrast, brightness, JPEG quality,
pixelation factor); blur is a fraction of the image's shorter side, so a
28 px and a 224 px image blur alike once resized to the same input size.
"""

from __future__ import annotations

import io
import re
import zlib

import numpy as np
from PIL import Image

from jtl.data.base import Source

SEVERITIES = range(1, 6)
SHIFT_SEP = "+shift:"
SHIFT_FORM = "NAME+shift:CORRUPTION:SEVERITY[:SEED]"

# Standard deviation of the added noise, in units of the 0..1 range (ImageNet-C's).
GAUSSIAN_NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
# Gaussian blur sigma as a fraction of the shorter side: 0.5..2.1 px at 28 px,
# 4..17 px at 224 px. Never below BLUR_MIN_SIGMA pixels, the least blur a pixel grid shows.
BLUR_SIGMA = (0.018, 0.027, 0.04, 0.055, 0.075)
BLUR_MIN_SIGMA = 0.4
# Factor each pixel's distance to its channel's mean is scaled by (ImageNet-C's).
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
# Added to HSV value in units of the 0..1 range (ImageNet-C's).
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)
# Side of the downsampled image as a fraction of the original (ImageNet-C's): 28 px -> 16..7 px.
PIXELATE_FACTOR = (0.6, 0.5, 0.4, 0.3, 0.25)
# JPEG quality of the re-encode (ImageNet-C's).
JPEG_QUALITY = (25, 18, 15, 10, 7)
# Rotation in degrees; the sign is drawn per image.
ROTATE_DEGREES = (6, 12, 18, 24, 30)


def _to_float(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float32) / 255


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def _to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(im: Image.Image, like: np.ndarray) -> np.ndarray:
  return np.asarray(im, np.uint8).reshape(like.shape)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Adds independent Gaussian noise to every pixel and channel."""
  x = _to_float(image)
  return _to_uint8(x + rng.normal(0, GAUSSIAN_NOISE_SIGMA[severity - 1], x.shape))


def blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Gaussian blur whose sigma is a fraction of the shorter side (BLUR_SIGMA)."""
  from scipy import ndimage  # loaded only when blurring

  sigma = max(BLUR_SIGMA[severity - 1] * min(image.shape[:2]), BLUR_MIN_SIGMA)
  return _to_uint8(ndimage.gaussian_filter(_to_float(image), (sigma, sigma, 0), mode="reflect"))


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Pulls every pixel towards its channel's mean."""
  x = _to_float(image)
  mean = x.mean(axis=(0, 1), keepdims=True)
  return _to_uint8((x - mean) * CONTRAST_FACTOR[severity - 1] + mean)


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Raises HSV value, keeping hue and saturation; a gray image simply brightens."""
  x = _to_float(image)
  value = x.max(axis=-1, keepdims=True)
  raised = np.minimum(value + BRIGHTNESS_SHIFT[severity - 1], 1)
  # RGB is proportional to V at fixed hue and saturation; black has no hue and turns gray.
  scale = np.divide(raised, value, out=np.zeros_like(value), where=value > 0)
  return _to_uint8(np.where(value > 0, x * scale, raised))


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Box-downsamples by PIXELATE_FACTOR and scales back up, in blocks (BOX both ways, as ImageNet-C)."""
  h, w = image.shape[:2]
  factor = PIXELATE_FACTOR[severity - 1]
  small = _to_pil(image).resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BOX)
  return _from_pil(small.resize((w, h), Image.Resampling.BOX), image)


def jpeg(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Re-encodes as JPEG at JPEG_QUALITY, which drops with severity."""
  buffer = io.BytesIO()
  _to_pil(image).save(buffer, format="JPEG", quality=JPEG_QUALITY[severity - 1])
  with Image.open(buffer) as im:
    return _from_pil(im, image)


def invert(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """255 - x. Inversion has no degrees: every severity 1..5 inverts fully."""
  return 255 - image


def rotate(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
  """Rotates by ROTATE_DEGREES about the centre, either way (drawn from rng); corners fill black."""
  angle = ROTATE_DEGREES[severity - 1] * rng.choice((-1, 1))
  return _from_pil(_to_pil(image).rotate(angle, Image.Resampling.BILINEAR, fillcolor=0), image)


CORRUPTIONS = {
  "gaussian_noise": gaussian_noise, "blur": blur, "contrast": contrast, "brightness": brightness,
  "pixelate": pixelate, "jpeg": jpeg, "invert": invert, "rotate": rotate,
}


def _check(name: str, severity: int) -> None:
  if name not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
  if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= 5:
    raise ValueError(f"corruption {name!r}: severity {severity!r}; expected an integer in 0..5 "
                     "(0 leaves the image clean)")


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
  """The uint8 HxWxC `image` corrupted by CORRUPTIONS[name] at `severity` (0: a clean copy).

  >>> image = np.full((8, 8, 1), 10, np.uint8)
  >>> int(corrupt(image, "invert", 3, np.random.default_rng(0))[0, 0, 0])
  245
  >>> corrupt(image, "invert", 0, np.random.default_rng(0)) is image
  False
  """
  _check(name, severity)
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"corruption {name!r}: image of dtype {image.dtype} and shape {image.shape}; "
                     "expected uint8 HxWxC with C 1 or 3")
  if severity == 0:
    return image.copy()
  return CORRUPTIONS[name](image, int(severity), rng)


def parse_shift(spec: str) -> tuple[str, str | None, int, int]:
  """Splits a dataset name into (base name, corruption, severity, seed).

  A name without "+shift:" is returned as (name, None, 0, 0). The base name
  may contain ':' and even "+shift:" (a shift of a shift): the last one counts.

  >>> parse_shift("fashion_mnist+shift:blur:2:7")
  ('fashion_mnist', 'blur', 2, 7)
  >>> parse_shift("folder:/data/x+shift:invert:1")
  ('folder:/data/x', 'invert', 1, 0)
  >>> parse_shift("digits")
  ('digits', None, 0, 0)
  """
  base, sep, tail = spec.rpartition(SHIFT_SEP)
  if not sep:
    return spec, None, 0, 0
  parts = tail.split(":")

  def bad(why: str) -> ValueError:
    return ValueError(f"dataset name {spec!r}: {why}; expected {SHIFT_FORM} with CORRUPTION one of "
                      f"{', '.join(CORRUPTIONS)}, SEVERITY 0..5 and SEED an integer >= 0")

  if not base:
    raise bad("no dataset NAME before '+shift:'")
  if len(parts) not in (2, 3):
    raise bad(f"{len(parts)} field(s) after '+shift:'")
  name, *numbers = parts
  if name not in CORRUPTIONS:
    raise bad(f"unknown corruption {name!r}")
  if not all(re.fullmatch(r"[0-9]+", n) for n in numbers):
    raise bad(f"severity and seed {':'.join(numbers)!r} are not non-negative integers")
  severity, seed = int(numbers[0]), int(numbers[1]) if len(numbers) == 2 else 0
  if severity > 5:
    raise bad(f"severity {severity} out of range")
  return base, name, severity, seed


class ShiftedSource(Source):
  """`base` with each image corrupted by its own random stream; labels untouched.

  Image i's stream is seeded by (seed, severity, corruption, split, i), so it
  is the same on every read, run and machine, and differs between splits.

  >>> from jtl.data import ArraySource
  >>> base = ArraySource("toy", np.zeros((2, 8, 8, 1), np.uint8), [0, 1], ["a", "b"], "test")
  >>> src = ShiftedSource(base, "invert", 1)
  >>> src.name, int(src[1]["image"].min()), src[1]["label"]
  ('toy+shift:invert:1', 255, 1)
  """

  def __init__(self, base: Source, corruption: str, severity: int, seed: int = 0):
    _check(corruption, severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"{base.name}+shift:{corruption}: seed {seed!r}; expected an integer >= 0")
    self.base = self.parent = base
    self.corruption, self.severity, self.seed = corruption, int(severity), int(seed)
    self.name = f"{base.name}{SHIFT_SEP}{corruption}:{severity}" + (f":{seed}" if seed else "")
    self.split = base.split
    self.class_names = list(base.class_names)
    # Stable across processes, unlike hash(): the stream of an image must not change between runs.
    self._stream = [self.seed, self.severity, zlib.crc32(corruption.encode()),
                    zlib.crc32(str(self.split).encode())]

  @property
  def labels(self) -> np.ndarray:
    return self.base.labels  # read only on demand, as the base does

  @property
  def skipped(self) -> list[str]:
    return getattr(self.base, "skipped", [])  # the trainer lists a folder's undecodable files

  def __len__(self) -> int:
    return len(self.base)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if i < 0:
      i += len(self)  # src[-1] is corrupted as src[len - 1] is
    if not 0 <= i < len(self):
      raise IndexError(f"{self.name}: index {i} out of range for {len(self)} examples")
    example = dict(self.base[i])
    rng = np.random.default_rng([*self._stream, i])
    example["image"] = corrupt(example["image"], self.corruption, self.severity, rng)
    return example
