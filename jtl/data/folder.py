"""Image folders in the torchvision ImageFolder layout: `root/<class>/<image>`.

If `root/train` and `root/test` both exist they are the two splits (classes
come from `train`). Otherwise the root's class folders are the dataset as it
stands: with `test_fraction` (a run's data.test_fraction, 0.2 by default) that
fraction of each class is carved off as the "test" split and the rest is
"train"; the carve is seeded (CARVE_SEED) and per class, so every run, resume
and sweep cell on the same files sees the same test images (`carve_lines`
lists them). Without `test_fraction` the whole root is the "train" split.

 src = FolderSource("/data/flowers", "train", skip_corrupt=True)
 src[0]["image"]   # uint8 HxWx3, each image at its own size

As in ImageFolder: the classes are the sub-folders sorted by name (label =
position in Python's `sorted()`, so "C", "a", "b"); the images are the files
under a class folder, at any depth, symlinked folders followed, whose extension
in any case is in IMAGE_EXTENSIONS (ImageFolder's list, plus .gif). On purpose
jtl differs:
- EXIF rotation is applied (ImageOps.exif_transpose), as a camera shows a photo.
- Hidden files and folders (any name starting with ".": .DS_Store,
  .ipynb_checkpoints) are skipped, and are never classes.
- A folder reached twice through symlinks is read once, so a symlink loop ends.
- Refused: fewer than two classes; a class folder without images (its label
  would have no example); a test class that train lacks. A train class that
  test lacks is fine: a small test set can miss a rare class, and labels
  always follow train.
- Every image becomes uint8 RGB: 16-bit images are scaled to 0..255 (PIL
  would clip them), alpha is dropped, CMYK and palette images are converted.
- An image over PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) counts
  as undecodable (PIL itself only warns below twice the limit).
- An undecodable file raises one ValueError naming it, when it is read. With
  `skip_corrupt=True` every file is decoded once when the source is built and
  the bad ones are left out and listed in `skipped` (a run writes them to
  WORKDIR/skipped_files.txt).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from jtl.data.base import Source, carve, check_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SKIPPED_FILE = "skipped_files.txt"   # Where a run lists the images it left out.
SPLIT_FILE = "folder_split.txt"      # Where a run lists which split each image of a carved folder is in.
CARVE_SEED = 0   # The test carve's seed: fixed, so every run on a folder tests on the same images.
_FIX = "delete or replace it, or set --config.data.skip_corrupt=True to leave undecodable images out"
log = logging.getLogger(__name__)


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _class_dirs(folder: Path) -> list[str]:
  """The class folder names in `folder`, in ImageFolder's order (`sorted`, so "C" < "a")."""
  return sorted(d.name for d in folder.iterdir() if _visible(d.name) and d.is_dir())


def _is_image(path: str) -> bool:
  # A dangling symlink stays in, to be reported as undecodable rather than lost
  # in silence; pipes and devices stay out (opening one can block).
  return path.lower().endswith(IMAGE_EXTENSIONS) and (os.path.isfile(path) or not os.path.exists(path))


def _unreadable(e: OSError):
  raise ValueError(f"{e.filename}: cannot list this folder ({e.strerror}); "
                   "make it readable or move it out of the image folder") from e


def _image_files(class_dir: Path) -> list[Path]:
  """The images at any depth under `class_dir`, each real folder read once.

  >>> _image_files(Path("flowers/rose"))   # doctest: +SKIP
  [PosixPath('flowers/rose/2024/b.JPG'), PosixPath('flowers/rose/a.jpg')]
  """
  seen, files = set(), []
  for top, dirs, names in os.walk(class_dir, followlinks=True, onerror=_unreadable):
    real = os.path.realpath(top)
    if real in seen:   # a link back up the tree, or a second link to one folder
      dirs.clear()
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if _visible(d)]
    files += [Path(top, n) for n in names if _visible(n) and _is_image(os.path.join(top, n))]
  return sorted(files)


def _to_rgb(im: Image.Image) -> np.ndarray:
  if im.mode.startswith("I"):   # 16-bit grayscale ("I;16", "I"): scale, where PIL would clip at 255
    gray = np.round(np.clip(np.asarray(im, np.float32), 0, 65535) / 257).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if im.mode == "P":  # via RGBA so palette transparency converts without a warning
    im = im.convert("RGBA")
  return np.asarray(im.convert("RGB"), np.uint8)


def _reason(path, e: Exception) -> str:
  if isinstance(e, Image.UnidentifiedImageError):
    return "an empty file" if os.path.getsize(path) == 0 else "not an image format PIL reads"
  return " ".join(f"{type(e).__name__}: {e}".split()).rstrip(".")   # one line, whatever PIL said


def _decode(path, draft: tuple[int, int] | None = None) -> np.ndarray:
  try:
    with Image.open(path) as im:
      limit = Image.MAX_IMAGE_PIXELS   # read now: a user may have changed it
      if limit and im.width * im.height > limit:
        raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels is over PIL's "
                                           f"decompression-bomb limit Image.MAX_IMAGE_PIXELS={limit}")
      if draft:
        # A reduced-scale JPEG decode still reads the whole stream (so a
        # truncated file fails) at a fraction of the cost; no-op for other formats.
        im.draft(im.mode, draft)
      return _to_rgb(ImageOps.exif_transpose(im))  # camera JPEGs store their rotation in EXIF
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
    raise ValueError(f"cannot decode image {path} ({_reason(path, e)}); {_FIX}") from e


def is_decodable(path: str | os.PathLike) -> bool:
  """True if `decode_rgb` would read the file (checked on a reduced-scale decode).

  >>> is_decodable("/etc/hostname")
  False
  """
  try:
    _decode(path, draft=(64, 64))
    return True
  except ValueError:
    return False


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
  """Decodes any PIL-readable image to uint8 HxWx3; a bad file raises a ValueError naming it.

  >>> decode_rgb("cat.png").shape   # doctest: +SKIP
  (375, 500, 3)
  """
  return _decode(path)


def _refuse_empty(folder: Path, class_names: list[str], labels: list[int], what: str) -> None:
  present = set(labels)
  empty = [str(folder / c) for i, c in enumerate(class_names) if i not in present and (folder / c).is_dir()]
  if empty:
    raise ValueError(f"{', '.join(empty)}: no {what}; expected files ending in "
                     f"{', '.join(IMAGE_EXTENSIONS)} (any case) in each class folder, "
                     "so add some or remove the folder")


class FolderSource(Source):
  """A lazily decoded image folder; see the module docstring for the layout.

  With `skip_corrupt=True` every file is decoded once here and the bad ones
  are left out (`num_skipped`, `skipped`); otherwise a bad file raises when read.
  """

  def __init__(self, root: str | os.PathLike, split: str = "train", *, skip_corrupt: bool = False,
               test_fraction: float | None = None):
    root = Path(root)
    check_split(f"folder:{root}", split)
    if not root.is_dir():
      raise FileNotFoundError(f"folder:{root}: no such directory; expected root/<class>/<image>")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if has_splits:
      folder, class_folder = root / split, root / "train"
    elif split == "train" or test_fraction:
      folder = class_folder = root
    else:
      raise ValueError(f"folder:{root}: has no train/ and test/ subfolders, so the whole folder "
                       f"is the 'train' split; expected root/train and root/test for a {split!r} "
                       "split, or --config.data.test_fraction=0.2 to carve one from each class")
    self.class_names = _class_dirs(class_folder)
    if len(self.class_names) < 2:
      raise ValueError(f"{class_folder}: {len(self.class_names)} class folder(s) {self.class_names}; "
                       f"expected at least 2 (a classifier needs two classes), "
                       f"as {class_folder}/<class>/<image>")
    extra = sorted(set(_class_dirs(folder)) - set(self.class_names))
    if extra:
      raise ValueError(f"{folder}: class folders {extra} are not in {class_folder}; "
                       f"add them to {class_folder} or remove them from {folder}")

    paths, labels = [], []
    for label, class_name in enumerate(self.class_names):
      if (folder / class_name).is_dir():  # a test split may lack a class; its label ids still follow train
        files = _image_files(folder / class_name)
        paths += files
        labels += [label] * len(files)
    _refuse_empty(folder, self.class_names, labels, "images")
    self.test_fraction = None if has_splits else test_fraction   # None: nothing was carved.
    if self.test_fraction:   # Before decoding: a skipped file never moves another between splits.
      kept, test = carve(np.asarray(labels), test_fraction, CARVE_SEED, self.class_names,
                         "data.test_fraction")
      self.carved = {"train": len(kept), "test": len(test)}
      pick = test if split == "test" else kept
      paths, labels = [paths[i] for i in pick], [labels[i] for i in pick]

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
        _refuse_empty(folder, self.class_names, labels, "decodable images")

    self.name = f"folder:{root}"
    self.split = split
    self.paths = [str(p) for p in paths]
    self.labels = np.asarray(labels, np.int64)

  def describe_carve(self) -> str | None:
    """One line saying how the test split was carved, or None when the folder has splits."""
    if not self.test_fraction:
      return None
    return (f"{self.name} has no train/ and test/ subfolders: {self.carved['test']} of its "
            f"{sum(self.carved.values())} images are the test split, "
            f"{self.test_fraction:.0%} of each class (data.test_fraction={self.test_fraction}, "
            f"seed {CARVE_SEED}: the same images on every run; WORKDIR/{SPLIT_FILE} lists them)")

  def carve_lines(self) -> list[str]:
    """"SPLIT\tPATH" per image of this split: the carve exported as a list of files."""
    return [f"{self.split}\t{p}" for p in self.paths]

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def __getitem__(self, i: int) -> dict:
    return {"image": decode_rgb(self.paths[i]), "label": int(self.labels[i])}


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def typical_shape(root: str | os.PathLike, sample: int = 64) -> tuple[int, bool] | None:
  """The median shorter side of up to `sample` train images spread evenly over the folder,
  and whether every one of them is grayscale, from the files' headers (nothing decoded);
  None when no image can be read.

  >>> typical_shape("photos")   # doctest: +SKIP
  (375, False)
  """
  src = FolderSource(root, "train")
  paths = src.paths[::max(1, len(src.paths) // sample)][:sample]
  sides, gray = [], True
  for path in paths:
    try:
      with Image.open(path) as im:
        sides.append(min(im.size))
        gray = gray and im.mode in GRAY_MODES
    except Exception:   # A broken file is named when a run reads it, not here.
      continue
  return (int(np.median(sides)), gray) if sides else None


def write_split_file(workdir: str | os.PathLike, splits: dict) -> str | None:
  """Writes WORKDIR/SPLIT_FILE, "SPLIT<tab>PATH" per image, when a split of `splits` (a
  run's Subsets) comes from a carved folder; returns its path, else None.

  >>> write_split_file("runs/x", make_splits({"name": "folder:photos"}, seed=0))  # doctest: +SKIP
  'runs/x/folder_split.txt'
  """
  sources = {id(s): s for split in splits.values() if split is not None
             for s in [getattr(split.parent, "base", split.parent)]}
  carved = [s for s in sources.values() if isinstance(s, FolderSource) and s.test_fraction]
  if not carved:
    return None
  path = os.path.join(workdir, SPLIT_FILE)
  tmp = f"{path}.{uuid.uuid4().hex}.tmp"   # Every process may write it: the same text, atomically.
  with open(tmp, "w") as f:
    f.writelines(line + "\n" for s in sorted(carved, key=lambda s: s.split)
                 for line in s.carve_lines())
  os.replace(tmp, path)
  return path
