"""Reads a PyTorch `torch.save` zip file into numpy without torch and without running code.

A `.pth` file is a zip holding `data.pkl` plus one raw buffer per storage. A pickle
can call any importable function while it loads, so this unpickler resolves only
the handful of names a plain state dict needs (an OrderedDict, tensors rebuilt
from storages, parameters) and refuses every other global by name. Tensors
become numpy arrays (bfloat16 through ml_dtypes). Only used when torch is not
installed; with torch, `torch.load(weights_only=True)` does the same job.

>>> state = load("resnet18.pth")          # {"conv1.weight": np.ndarray, ...}
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np

# Storage classes torch pickles by name, and the numpy dtype of their bytes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for `torch.FloatStorage` & co.: only its dtype matters here."""

  def __init__(self, name):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None,
                    metadata=None):
  """Strided view of a storage, copied; bounds are checked so no stray memory is read."""
  del requires_grad, hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
    raise pickle.UnpicklingError(f"tensor with negative size, stride or offset "
                                 f"{size}/{stride}/{offset}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise pickle.UnpicklingError(f"tensor of size {size} reaches past its storage "
                                 f"of {storage.size} elements")
  return np.lib.stride_tricks.as_strided(
      storage[offset:], size, tuple(s * storage.itemsize for s in stride)).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
  del requires_grad, hooks
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only allow-listed globals; storages are read from the zip by key."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._root = archive, root

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f"refusing global {module}.{name}: a plain state dict "
                                 "of tensors does not need it, and it could run code")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _, numel = pid
    # torch pickles the storage class itself (a GLOBAL), which find_class mapped.
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    dtype = storage_type.dtype
    raw = self._archive.read(f"{self._root}data/{key}")
    if len(raw) < numel * dtype.itemsize:
      raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes, "
                                   f"{numel * dtype.itemsize} expected")
    return np.frombuffer(raw, dtype, count=numel)


def load(path: str) -> dict:
  """Unpickles a zip-format `torch.save` file with tensors as numpy arrays.

  Raises ValueError naming `path` for a legacy (non-zip) file, a big-endian file,
  a truncated or corrupt archive, or any global outside the allow-list.

  Example:
    >>> state = load("resnet18.pth")
    >>> state["conv1.weight"].shape
    (64, 3, 7, 7)
  """
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      if f.read(2) == b"PK":
        raise ValueError(f"{path}: not a readable zip archive (truncated or corrupt?); "
                         "expected a PyTorch file saved with torch.save.")
    raise ValueError(f"{path} is not a zip-format PyTorch file; without torch only "
                     "those can be read safely. Install torch (`pip install torch`) so "
                     "jtl can read it with torch.load(weights_only=True).")
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
      if len(pickles) != 1:
        raise ValueError(f"expected one data.pkl, found {len(pickles)}")
      root = pickles[0][:-len("data.pkl")]
      if f"{root}byteorder" in archive.namelist() and \
          archive.read(f"{root}byteorder").strip() != b"little":
        raise ValueError("big-endian tensors are not supported")
      return _Unpickler(archive.read(pickles[0]), archive, root).load()
  except (pickle.UnpicklingError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
          OSError) as e:
    raise ValueError(f"refused to load {path}: {e}") from None
