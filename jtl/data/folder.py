"""Image folders in the torchvision ImageFolder layout: `root/<class>/<image>`.

If `root/train` and `root/test` both exist they are the two splits (classes
come from `train`); otherwise the whole root is the "train" split.

 src = FolderSource("/data/flowers", "train", skip_corrupt=True)
 src[0]["image"]   # uint8 HxWx3, each image at its own size
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from jtl.data.sources import Source, check_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SKIPPED_FILE = "skipped_files.txt"   # Where a run lists the images it left out.
log = logging.getLogger(__name__)


def _class_dirs(folder: Path) -> list[Path]:
  return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.rglob("*")
         if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def is_decodable(path: str | os.PathLike) -> bool:
  """True if PIL fully decodes the file (not just its header).

  >>> is_decodable("/etc/hostname")
  False
  """
  try:
    with Image.open(path) as im:
      # A reduced-scale JPEG decode still reads the whole stream (so a
      # truncated file fails) at a fraction of the cost; no-op for other formats.
      im.draft(im.mode, (64, 64))
      im.load()
    return True
  except Exception:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
    return False


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
  """Decodes any PIL-readable image to uint8 HxWx3 (grayscale/RGBA/palette -> RGB).

  >>> decode_rgb("cat.png").shape   # doctest: +SKIP
  (375, 500, 3)
  """
  try:
    with Image.open(path) as im:
      im = ImageOps.exif_transpose(im)  # camera JPEGs store their rotation in EXIF
      if im.mode == "P":  # via RGBA so palette transparency converts without a warning
        im = im.convert("RGBA")
      return np.asarray(im.convert("RGB"), np.uint8)
  except Exception as e:
    raise ValueError(f"cannot decode image {path} ({type(e).__name__}: {e}); expected a readable "
            "image file (--config.data.skip_corrupt=True skips undecodable files)") from e


class FolderSource(Source):
  """A lazily decoded image folder; see the module docstring for the layout.

  With `skip_corrupt=True` every file is decoded once here and the bad ones
  are left out (`num_skipped`, `skipped`); otherwise a bad file raises when read.
  """

  def __init__(self, root: str | os.PathLike, split: str = "train", *, skip_corrupt: bool = False):
    root = Path(root)
    check_split(f"folder:{root}", split)
    if not root.is_dir():
      raise FileNotFoundError(f"folder:{root}: no such directory; expected root/<class>/<image>")
    if (root / "train").is_dir() and (root / "test").is_dir():
      folder, class_folder = root / split, root / "train"
    elif split == "train":
      folder = class_folder = root
    else:
      raise ValueError(f"folder:{root}: has no train/ and test/ subfolders, so the whole folder "
              f"is the 'train' split; expected root/train and root/test for a {split!r} split")
    self.class_names = [d.name for d in _class_dirs(class_folder)]
    if not self.class_names:
      raise ValueError(f"{class_folder}: no class folders; expected {class_folder}/<class>/<image>")
    extra = sorted({d.name for d in _class_dirs(folder)} - set(self.class_names))
    if extra:
      raise ValueError(f"{folder}: class folders {extra} are not in {class_folder}; "
              "expected the test classes to be among the train classes")

    paths, labels = [], []
    for label, class_name in enumerate(self.class_names):
      class_dir = folder / class_name
      if not class_dir.is_dir():
        continue  # a test split may lack a class; its label ids still follow train
      files = _image_files(class_dir)
      if not files:
        raise ValueError(f"{class_dir}: no images; expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
      paths += files
      labels += [label] * len(files)

    self.skipped: list[str] = []
    if skip_corrupt:
      # PIL decoding releases the GIL, so threads make this pass I/O- and core-bound.
      with concurrent.futures.ThreadPoolExecutor() as pool:
        ok = list(pool.map(is_decodable, paths))
      self.skipped = [str(p) for p, good in zip(paths, ok) if not good]
      paths = [p for p, good in zip(paths, ok) if good]
      labels = [y for y, good in zip(labels, ok) if good]
      if self.skipped:
        log.warning("%s: skipped %d undecodable image(s), e.g. %s; a run lists them all in "
                    "WORKDIR/%s", folder, len(self.skipped), self.skipped[0], SKIPPED_FILE)

    self.name = f"folder:{root}"
    self.split = split
    self.paths = [str(p) for p in paths]
    self.labels = np.asarray(labels, np.int64)

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def __getitem__(self, i: int) -> dict:
    return {"image": decode_rgb(self.paths[i]), "label": int(self.labels[i])}
