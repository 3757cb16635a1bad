"""Hostile checkpoints: each fails as one exception naming the file and what was expected.

Complements tests/test_convert.py (a truncated model.safetensors and .npz, a
pickle calling os.system, configs jtl refuses, mis-shaped weights): here the
files are hand-built and tiny, and every message is checked for the file's
name, what was expected, one line and no chained traceback from a library.
"""

import json
import os
import pathlib
import struct
import sys
import tracemalloc
import zipfile

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers

from jtl import convert
from jtl.convert import hf

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
RESNET18 = {"model_type": "resnet", "depths": [2, 2, 2, 2], "layer_type": "basic",
            "hidden_sizes": [64, 128, 256, 512], "embedding_size": 64}


def refused(src, *fragments, exc=ValueError):
  """The one-line message of loading `src`; asserts it names what `fragments` say."""
  with pytest.raises(exc) as info:
    convert.load(str(src))
  return checked(info.value, *fragments)


def checked(error, *fragments):
  message = str(error)
  chained = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
  assert "\n" not in message and chained is None, message
  for fragment in fragments:
    assert fragment in message, f"{fragment!r} not in: {message}"
  return message


def without_torch(monkeypatch):
  """As if torch were not installed: the allow-list unpickler reads .pth files."""
  monkeypatch.setitem(sys.modules, "torch", None)


def write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data if isinstance(data, bytes) else data.encode())
  return path


def hf_folder(folder, weights=None, config=None):
  """A Hugging Face folder: config.json (resnet18 unless given) and model.safetensors."""
  text = config if isinstance(config, str) else json.dumps(config or RESNET18)
  write(folder / "config.json", text)
  if weights is not None:
    write(folder / "model.safetensors", weights)
  return folder


def small_pth(path):
  torch.save({"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, str(path))
  return path


def half(path):
  data = path.read_bytes()
  return write(path, data[:len(data) // 2])


def workdir(path):
  """A jtl workdir with a two-leaf orbax `model` item and a model.json."""
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(str(path / "checkpoints"), options=options,
                             item_names=("model",)) as mgr:
    mgr.save(0, args=ocp.args.Composite(model=ocp.args.StandardSave(
        {"params": {"head": {"kernel": np.ones((2, 3), np.float32)}}, "batch_stats": {}})))
  write(path / "model.json", json.dumps({"model": {"name": "resnet18", "num_classes": 3}}))
  return path


# ---- Wrong format -------------------------------------------------------------------
def test_png_as_model_safetensors(tmp_path):
  refused(hf_folder(tmp_path, PNG), "model.safetensors: not a valid safetensors file",
          "expected an 8-byte little-endian header length")


def test_text_as_npz(tmp_path):
  refused(write(tmp_path / "BiT-M-R50x1.npz", "resnet weights\n" * 20),
          "BiT-M-R50x1.npz: not an .npz archive", "expected a BiT checkpoint")


@pytest.mark.parametrize("torch_installed", [True, False])
def test_png_as_pth(tmp_path, monkeypatch, torch_installed):
  if not torch_installed:
    without_torch(monkeypatch)
  refused(write(tmp_path / "resnet18.pth", PNG), "resnet18.pth: not a PyTorch file",
          "expected a state dict saved with torch.save")


@pytest.mark.parametrize("torch_installed", [True, False])
def test_zip_without_data_pkl(tmp_path, monkeypatch, torch_installed):
  if not torch_installed:
    without_torch(monkeypatch)
  path = tmp_path / "resnet18.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/version", "3\n")
  refused(path, "resnet18.pth", "data.pkl", "expected")


# ---- Truncated (model.safetensors and a 1000-byte cut .npz: see test_convert) --------------
def test_truncated_pth(tmp_path):
  refused(half(small_pth(tmp_path / "resnet18.pth")), "resnet18.pth",
          "expected a state dict saved with torch.save (truncated or corrupt?)")


def test_truncated_pth_without_torch(tmp_path, monkeypatch):
  path = half(small_pth(tmp_path / "resnet18.pth"))
  without_torch(monkeypatch)
  refused(path, "resnet18.pth: not a readable zip archive (truncated or corrupt?)",
          "expected a PyTorch file")


def test_half_an_npz(tmp_path):
  path = tmp_path / "BiT-M-R50x1.npz"
  np.savez(path, a=np.zeros(1000, np.float32))
  refused(half(path), "BiT-M-R50x1.npz: not an .npz archive (truncated or corrupt?)")


def test_truncated_orbax_workdir(tmp_path):
  run = workdir(tmp_path / "run")
  for root, _, files in os.walk(run / "checkpoints"):
    for name in files:
      half(pathlib.Path(root) / name)
  refused(run, "could not read checkpoint", os.path.join("checkpoints", "0", "model"),
          "expected the orbax `model` item a jtl run saves")


@pytest.mark.parametrize("content, fragment", [
    ("{oops", "model.json: not a readable JSON file"),
    ('["model"]', 'model.json holds a JSON list; expected an object'),
    ('{"models": {}}', 'model.json has no "model" object'),
])
def test_workdir_with_a_bad_model_json(tmp_path, content, fragment):
  run = workdir(tmp_path / "run")
  write(run / "model.json", content)
  refused(run, fragment, "the model.json a training run or `jtl convert` writes")


# ---- Pickles that carry code (os.system at the top level: see test_convert) ------------------
class _Exec:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("torch_installed", [True, False])
def test_exec_nested_in_a_torch_zip_refused(tmp_path, monkeypatch, torch_installed):
  marker, path = tmp_path / "ran", tmp_path / "resnet18.pth"
  torch.save({"state_dict": {"fc.weight": torch.zeros(2, 3),
                             "extra": [{"x": _Exec(marker)}]}}, str(path))
  assert zipfile.is_zipfile(path)
  if not torch_installed:
    without_torch(monkeypatch)
  message = refused(path, f"refused to load {path}: ")
  assert "exec" in message.replace(str(path), ""), message  # The test's folder says exec too.
  assert not marker.exists()


# ---- Paths that do not exist ---------------------------------------------------------
@pytest.mark.parametrize("prefix, name, fragment", [
    ("torchvision:", "resnet18.pth", "does not exist; expected a PyTorch state dict"),
    ("bit:", "BiT-M-R50x1.npz", "does not exist; expected a BiT .npz checkpoint"),
    ("orbax:", "run", "does not exist; expected a jtl workdir"),
    ("hf:", "resnet-18", "is neither a Hugging Face model folder nor a hub id"),
    ("", "resnet18.pth", "does not exist; a source model comes from"),
])
def test_missing_path(tmp_path, prefix, name, fragment):
  path = str(tmp_path / "missing" / name)
  refused(prefix + path, f"{path} ", fragment, exc=FileNotFoundError)


# ---- safetensors whose header lies ------------------------------------------------------
def safetensors(header, body=b"", length=None):
  """8-byte little-endian header length, the header (JSON unless bytes), then `body`."""
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def tensor(dtype="F32", shape=(4,), offsets=(0, 16)):
  return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BODY = np.arange(4, dtype=np.float32).tobytes()   # 16 bytes


@pytest.mark.parametrize("data, why", [
    (safetensors({"a": tensor()}, BODY, length=1000),
     "header length is 1000 bytes but the file has"),
    (safetensors({"a": tensor(shape=(8,), offsets=(0, 32))}, BODY),
     "'a' lies at bytes 0..32, past the 16"),
    (safetensors({"a": tensor(), "b": tensor(shape=(2,), offsets=(8, 16))}, BODY),
     "'a' and 'b' overlap"),
    (safetensors({"a": tensor("BF16", (8,)), "b": tensor("BF16", (4,), (8, 16))}, BODY),
     "'a' and 'b' overlap"),
    (safetensors({"a": tensor(shape=(3,))}, BODY), "'a' spans 16 bytes, but F32 x [3] needs 12"),
    (safetensors({"a": tensor("BF16", (2 ** 32, 2 ** 32), (0, 0))}, BODY),
     "needs 36893488147419103232"),   # np.prod would wrap around to 0 bytes.
    (safetensors({"a": tensor(shape=(-4,))}, BODY), "shape [-4], not a list of sizes"),
    (safetensors({"a": tensor(offsets=(16, 0))}, BODY), "data_offsets [16, 0], not [begin, end]"),
    (safetensors({"a": tensor("Q7")}, BODY), "dtype 'Q7', not one of F64, F32"),
    (safetensors({"a": tensor(["F32"])}, BODY), "dtype ['F32'], not one of"),
    (safetensors({"a": 5}, BODY), "'a' is not an object with dtype, shape and data_offsets"),
    (safetensors(b"{not json", BODY), "the header is not JSON"),
    (safetensors(b"\xff\xfe\xfd", BODY), "the header is not JSON"),
    (safetensors([1, 2], BODY), "the header is a JSON list, not an object"),
    (safetensors(b"[" * 100_000), "maximum recursion depth"),
    (safetensors(b"{}", length=2 ** 62), "header length is 4611686018427387904 bytes"),
    (b"\x01\x02", "the file has 2 bytes, too few for the header length"),
], ids=["length-past-file", "offsets-past-file", "overlap", "overlap-bf16", "size-vs-shape",
        "shape-overflow", "negative-shape", "reversed-offsets", "unknown-dtype", "list-dtype",
        "entry-not-object", "not-json", "not-utf8", "list-header", "deep-json", "huge-length",
        "too-short"])
def test_safetensors_header_lies(tmp_path, data, why):
  refused(hf_folder(tmp_path, data), "model.safetensors: not a valid safetensors file", why,
          "; expected an 8-byte little-endian header length")


def test_huge_header_length_allocates_nothing(tmp_path):
  path = write(tmp_path / "model.safetensors", safetensors(b"{}" + bytes(1000), length=2 ** 62))
  tracemalloc.start()
  try:
    with pytest.raises(ValueError, match="header length is 4611686018427387904"):
      hf.read_safetensors(str(path))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 1 << 20, f"{peak} bytes allocated"


def test_an_honest_hand_built_file_reads(tmp_path):
  """The builder above writes real safetensors: the same bytes load when they do not lie."""
  bf16 = np.array([1.5, -2.0], np.float32).astype(ml_dtypes.bfloat16).tobytes()
  path = write(tmp_path / "model.safetensors", safetensors(
      {"__metadata__": {"format": "pt"}, "a": tensor(), "b": tensor("BF16", (1, 2), (16, 20)),
       "e": tensor(shape=(0, 3), offsets=(20, 20))}, BODY + bf16))
  got = hf.read_safetensors(str(path))
  np.testing.assert_array_equal(got["a"], np.arange(4, dtype=np.float32))
  assert got["b"].dtype.name == "bfloat16" and got["b"].astype(np.float32).tolist() == [[1.5, -2]]
  assert got["e"].shape == (0, 3)


# ---- Hugging Face folders ---------------------------------------------------------------
@pytest.mark.parametrize("config, fragment", [
    ("{oops", "config.json: not a readable JSON file"),
    ("[1, 2]", "config.json holds a JSON list; expected an object"),
    ({**RESNET18, "architectures": ["BertModel"]},
     "config.json names architectures ['BertModel']; expected ResNetForImageClassification"),
    ({**RESNET18, "layer_type": "preact"},
     "config.json: not a valid ResNet config (Class validation error"),
    ({**RESNET18, "hidden_sizes": 5}, "config.json: not a valid ResNet config (Validation error"),
])
def test_hf_config_refused(tmp_path, config, fragment):
  refused(hf_folder(tmp_path, config=config), fragment, "expected")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """layer_type -> model.safetensors of a randomly initialized HF ResNet of width 8."""
  out = {}
  for layer in ("basic", "bottleneck"):
    config = transformers.ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[8, 16, 32, 64],
                                       embedding_size=8, layer_type=layer, num_labels=2)
    folder = tmp_path_factory.mktemp(layer)
    transformers.ResNetForImageClassification(config).save_pretrained(str(folder))
    out[layer] = (folder / "model.safetensors").read_bytes()
  return out


@pytest.mark.parametrize("layer, config, fragment", [
    ("basic", {**RESNET18, "depths": [3, 4, 6, 3]},
     "config.json gives depths [3, 4, 6, 3] of basic blocks, but the weights have [2, 2, 2, 2] "
     "basic blocks per stage; expected weights that match config.json"),
    ("bottleneck", RESNET18,
     "config.json gives depths [2, 2, 2, 2] of basic blocks, but the weights have [2, 2, 2, 2] "
     "bottleneck blocks"),
    ("basic", RESNET18, "config.json gives channel widths [64, 64, 128, 256, 512] (embedding_size, "
                        "hidden_sizes), but the weights have [8, 8, 16, 32, 64]"),
])
def test_hf_weights_that_do_not_match_the_config(tmp_path, tiny_hf, layer, config, fragment):
  refused(hf_folder(tmp_path, tiny_hf[layer], config), str(tmp_path), fragment)


@pytest.mark.parametrize("index, fragment", [
    ("{oops", "index.json: not a valid safetensors index (JSONDecodeError"),
    ('{"weights": {}}', "index.json: not a valid safetensors index (KeyError"),
    ('{"weight_map": {"a": "../model.safetensors"}}',
     "index.json names shard '../model.safetensors'; expected a file name in its folder"),
    ('{"weight_map": {"a": "model-00001.safetensors"}}',
     "index.json names shard model-00001.safetensors, which is not in"),
])
def test_hf_sharded_index_refused(tmp_path, index, fragment):
  folder = hf_folder(tmp_path / "hf")
  write(folder / "model.safetensors.index.json", index)
  write(tmp_path / "model.safetensors", PNG)   # What a shard path with ../ would reach.
  refused(folder, fragment, exc=FileNotFoundError if "not in" in fragment else ValueError)
