"""Metric writers: one dict of scalars per step, to JSONL and TensorBoard.

>>> w = MetricWriter("runs/x")
>>> w.write(10, {"train/loss": 0.7, "train/accuracy": 0.8})
>>> w.close()
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

METRICS = "metrics.jsonl"


class MetricWriter:
  """Writes on process 0 only; other processes get a writer that does nothing."""

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS)
    if resume_step is not None:
      _truncate_after(self.path, resume_step)
    self._jsonl = open(self.path, "a")
    from tensorboardX import SummaryWriter  # Imported lazily: it pulls in protobuf.
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)

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


def _truncate_after(path: str, step: int) -> None:
  # A resumed run recomputes the steps after its checkpoint; drop their old rows
  # so the log reads as one uninterrupted run.
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(rows)
