"""folder:PATH against torchvision's ImageFolder, and hostile or broken image folders."""

import io
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from jtl.data.folder import FolderSource, decode_rgb
from jtl.data.pipeline import preprocess, train_dataset

FIX = "delete or replace it, or set --config.data.skip_corrupt=True"


def save(path, mode="RGB", color=None, size=(8, 8), **kw):
  path.parent.mkdir(parents=True, exist_ok=True)
  if color is None:
    color = 1 if len(mode) == 1 else (1,) * len(mode)
  Image.new(mode, size, color).save(path, **kw)
  return path


def two_classes(root):
  """root/a/0.png and root/b/0.png: the smallest valid folder."""
  return [save(root / c / "0.png") for c in ("a", "b")]


def rel(src, root):
  return [os.path.relpath(p, root) for p in src.paths]


# --- what ImageFolder does ------------------------------------------------------

def test_extensions_any_case_nested_files_and_class_order(tmp_path):
  for name in ("x.JPG", "y.Png", "sub/deeper/z.tif", "p.ppm", "w.webp"):
    save(tmp_path / "a" / name)
  for name in ("g.pgm", "m.bmp", "t.TIFF", "j.jpeg", "i.gif"):
    save(tmp_path / "b" / name, "L")
  save(tmp_path / "C" / "c.png")
  (tmp_path / "a" / "notes.txt").write_text("not an image")
  (tmp_path / "b" / "labels.csv").write_text("file,label\n")
  src = FolderSource(tmp_path)
  assert src.class_names == ["C", "a", "b"]  # Python's sorted(), as ImageFolder
  assert rel(src, tmp_path) == ["C/c.png", "a/p.ppm", "a/sub/deeper/z.tif", "a/w.webp", "a/x.JPG", "a/y.Png",
                                "b/g.pgm", "b/i.gif", "b/j.jpeg", "b/m.bmp", "b/t.TIFF"]
  assert src.labels.tolist() == [0] + [1] * 5 + [2] * 5
  assert all(src[i]["image"].shape == (8, 8, 3) for i in range(len(src)))


def test_symlinked_folders_are_followed_once_and_loops_end(tmp_path):
  root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
  two_classes(root)
  save(elsewhere / "e.png")
  (root / "a" / "link").symlink_to(elsewhere, target_is_directory=True)
  (root / "a" / "again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice
  (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
  src = FolderSource(root)
  assert rel(src, root) == ["a/0.png", "a/again/e.png", "b/0.png"]


def test_hidden_files_and_folders_are_skipped_and_never_classes(tmp_path):
  two_classes(tmp_path)
  for junk in (".DS_Store", "a/.DS_Store", "a/._0.png"):
    (tmp_path / junk).write_bytes(b"\0\1mac junk")
  save(tmp_path / ".ipynb_checkpoints" / "0.png")
  save(tmp_path / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")
  save(tmp_path / "b" / ".cache" / "deep" / "1.png")
  src = FolderSource(tmp_path)
  assert src.class_names == ["a", "b"]
  assert rel(src, tmp_path) == ["a/0.png", "b/0.png"]


def test_exif_rotation_is_applied(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: the camera was turned 90 degrees
  path = save(tmp_path / "a" / "0.jpg", size=(8, 4), exif=exif)
  assert decode_rgb(path).shape == (8, 4, 3)


# --- broken files ---------------------------------------------------------------

def truncated_jpeg(path):
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(buf, "JPEG")
  path.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])


BROKEN = {
  "truncated": (truncated_jpeg, "OSError: .*truncated"),  # PIL words it two ways
  "zero_bytes": (lambda p: p.write_bytes(b""), "an empty file"),
  "text": (lambda p: p.write_text("this is a text file, not an image"), "not an image format PIL reads"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_file_names_itself_or_is_skipped(tmp_path, kind):
  two_classes(tmp_path)
  write, reason = BROKEN[kind]
  bad = tmp_path / "b" / "bad.jpg"
  write(bad)
  src = FolderSource(tmp_path)
  assert len(src) == 3 and src.skipped == []
  with pytest.raises(ValueError) as e:
    src[src.paths.index(str(bad))]
  assert re.match(rf"cannot decode image {bad} \({reason}.*\); {FIX}", str(e.value), re.I)
  assert "\n" not in str(e.value)
  skipping = FolderSource(tmp_path, skip_corrupt=True)
  assert skipping.skipped == [str(bad)] and str(bad) not in skipping.paths and len(skipping) == 2


def test_a_broken_file_met_mid_training_stops_with_one_sentence(tmp_path):
  two_classes(tmp_path)
  bad = tmp_path / "b" / "bad.png"
  bad.write_bytes(b"")
  batches = iter(train_dataset(FolderSource(tmp_path), batch_size=3, image_size=8, seed=0))
  with pytest.raises(ValueError, match=f"^cannot decode image {bad} \\(an empty file\\); {FIX}"):
    next(batches)


def test_a_dangling_symlink_is_reported_not_lost(tmp_path):
  two_classes(tmp_path)
  (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
  assert FolderSource(tmp_path, skip_corrupt=True).skipped == [str(tmp_path / "a" / "gone.png")]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("limit", [40, 20])  # 64 pixels: PIL warns over the limit, raises over twice it
def test_an_image_over_the_decompression_bomb_limit_names_itself(tmp_path, monkeypatch, limit):
  for c in ("a", "b"):
    save(tmp_path / c / "0.png", size=(4, 4))  # 16 pixels, under both limits
  big = save(tmp_path / "b" / "big.png")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
  src = FolderSource(tmp_path)
  with pytest.raises(ValueError, match=f"^cannot decode image {big} \\(.*decompression.bomb.*\\); {FIX}"):
    src[src.paths.index(str(big))]
  assert FolderSource(tmp_path, skip_corrupt=True).skipped == [str(big)]


# --- unusual but valid images ---------------------------------------------------

def cmyk_jpeg(path):
  save(path, "CMYK", (0, 255, 255, 0))  # cyan 0, magenta and yellow full: red


def gray16_png(path):
  Image.fromarray(np.array([[0, 257, 32896, 65535]] * 2, np.uint16)).save(path)


def palette_png(path):
  im = Image.new("P", (4, 2))
  im.putpalette([10, 20, 30, 200, 100, 0])
  im.putpixel((0, 0), 1)
  im.save(path, transparency=bytes([255, 128]))  # a tRNS chunk, half-transparent entry 1


DECODED = {  # writer, the decoded first row, the mode PIL opens
  "cmyk.jpg": (cmyk_jpeg, [255, 0, 0], "CMYK"),
  "gray16.png": (gray16_png, [[0] * 3, [1] * 3, [128] * 3, [255] * 3], "I;16"),  # scaled, not clipped
  "palette.png": (palette_png, [[200, 100, 0]] + [[10, 20, 30]] * 3, "P"),
  "rgba.png": (lambda p: save(p, "RGBA", (9, 8, 7, 0)), [9, 8, 7], "RGBA"),
  "la.png": (lambda p: save(p, "LA", (60, 0)), [60, 60, 60], "LA"),
}


@pytest.mark.parametrize("name", DECODED)
def test_modes_decode_to_uint8_rgb(tmp_path, name):
  write, first_row, mode = DECODED[name]
  write(tmp_path / name)
  with Image.open(tmp_path / name) as im:
    assert im.mode == mode
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. PIL's "Palette images with Transparency" warning
    image = decode_rgb(tmp_path / name)
  assert image.dtype == np.uint8 and image.shape[2] == 3
  expected = np.broadcast_to(np.array(first_row, np.int32), image[0].shape)
  assert np.abs(image[0].astype(np.int32) - expected).max() <= (2 if name.endswith(".jpg") else 0)
  assert preprocess(image, image_size=4, channels=1).shape == (4, 4, 1)


# --- folders jtl refuses --------------------------------------------------------

def test_empty_class_folders_are_named(tmp_path):
  two_classes(tmp_path)
  (tmp_path / "c").mkdir()
  (tmp_path / "d" / ".ipynb_checkpoints").mkdir(parents=True)
  (tmp_path / "d" / "readme.txt").write_text("only text")
  with pytest.raises(ValueError, match=f"^{tmp_path / 'c'}, {tmp_path / 'd'}: no images; expected"):
    FolderSource(tmp_path)


def test_a_class_left_empty_by_skip_corrupt_is_refused(tmp_path):
  two_classes(tmp_path)
  (tmp_path / "c" / "bad.png").parent.mkdir()
  (tmp_path / "c" / "bad.png").write_bytes(b"")
  FolderSource(tmp_path)  # the file is only read later
  with pytest.raises(ValueError, match=f"^{tmp_path / 'c'}: no decodable images"):
    FolderSource(tmp_path, skip_corrupt=True)


@pytest.mark.parametrize("classes", [["only"], []])
def test_fewer_than_two_classes_are_refused(tmp_path, classes):
  for c in classes:
    save(tmp_path / c / "0.png")
  save(tmp_path / "stray.png")  # a file beside the class folders is no class
  with pytest.raises(ValueError, match=f"^{tmp_path}: {len(classes)} class folder.*expected at least 2"):
    FolderSource(tmp_path)


def test_train_test_layout_test_classes_must_be_train_classes(tmp_path):
  train, test = tmp_path / "train", tmp_path / "test"
  for name in ("a", "b", "c"):
    save(train / name / "0.png")
  save(test / "c" / "0.png")  # a and b missing from test: fine
  src = FolderSource(tmp_path, "test")
  assert src.class_names == ["a", "b", "c"] and src.labels.tolist() == [2]
  save(test / "z" / "0.png")
  with pytest.raises(ValueError, match=rf"^{test}: class folders \['z'\] are not in {train}; add them"):
    FolderSource(tmp_path, "test")


def test_an_unlistable_folder_is_named(tmp_path, monkeypatch):
  two_classes(tmp_path)
  locked = tmp_path / "a" / "locked"
  locked.mkdir()
  scandir = os.scandir

  def refuse(path="."):
    if str(path) == str(locked):
      raise PermissionError(13, "Permission denied", str(path))
    return scandir(path)

  monkeypatch.setattr(os, "scandir", refuse)  # tests run as root, so chmod would not lock it
  with pytest.raises(ValueError, match=f"^{locked}: cannot list this folder \\(Permission denied\\)"):
    FolderSource(tmp_path)
