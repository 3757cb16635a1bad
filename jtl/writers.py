"""Metric writers: one dict of scalars per step, to JSONL and TensorBoard.

>>> w = MetricWriter("runs/x")
>>> w.write(10, {"train/loss": 0.7, "train/accuracy": 0.8})
>>> w.close()
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def _summary_writer():
  """tensorboardX's SummaryWriter, imported lazily (it pulls in protobuf) and without torch:
  tensorboardX imports torch whenever it is installed, only to accept its tensors, and that
  took 1.7 s of every run's start on a 2-core Zen 5 (jtl writes floats)."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None   # `import torch` raises ImportError, which tensorboardX expects.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Writes on process 0 only; other processes get a writer that does nothing."""

  def __init__(self, workdir: str, *, resume_step: int | None = None,
               redo: tuple[str, ...] = ()):
    """`resume_step`: rows after it are dropped (the resumed run writes them again), and so
    are rows whose metric names start with a prefix in `redo` (written again at any step).
    `kept`: the rows left from earlier runs (none on other processes)."""
    self.active = jax.process_index() == 0
    self.kept = []
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS)
    self.kept = _truncate_after(self.path, resume_step, redo) if resume_step is not None else []
    self._jsonl = open(self.path, "a")
    SummaryWriter = _summary_writer()
    tb_dir = os.path.join(workdir, TENSORBOARD)
    if resume_step is not None:
      # TensorBoard events cannot be truncated: rebuild them from the kept rows, so a
      # resumed run never holds a point twice.
      shutil.rmtree(tb_dir, ignore_errors=True)
    self._tb = SummaryWriter(tb_dir)
    for row in self.kept:
      self._add_scalars(row)

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    self._add_scalars(row)

  def _add_scalars(self, row: dict) -> None:
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, row["step"])

  def close(self) -> None:
    if self.active:
      self._jsonl.close()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All rows of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, METRICS)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _scalar(v):
  v = np.asarray(jax.device_get(v))
  return v.item() if v.ndim == 0 else v.tolist()


def _truncate_after(path: str, step: int, redo: tuple[str, ...] = ()) -> list[dict]:
  """Drops rows after `step`, and rows of metrics starting with a prefix in `redo`; returns
  the kept ones.

  A resumed run recomputes the steps after its checkpoint (and a fresh run, step 0,
  all of them); dropping their old rows makes the log read as one uninterrupted run.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if r["step"] <= step
          and not any(k.startswith(p) for k in r if k != "step" for p in redo)]
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` so that a reader (or a rerun after a kill) sees the old file or
  the whole new one, never a half-written one."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
