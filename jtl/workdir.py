"""A run's workdir: one run at a time, and no silent resume under other settings.

>>> release = lock("runs/x")          # refuses if a live run holds runs/x
>>> changes = config_changes("runs/x", config)   # ["optim.lr: 0.1 -> 0.01"] on a resume
>>> release()
"""

from __future__ import annotations

import json
import os
import socket

from jtl.config import base_config

LOCK = ".jtl.lock"
CONFIG_JSON = "config.json"
# Fields that change how a run is watched, not what it computes: free to differ on resume.
HARMLESS = ("progress", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
            "data.eval_batch_size", "allow_changed")


class WorkdirInUse(ValueError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def lock(workdir: str):
  """Takes `workdir` for this process; returns the function that gives it back.

  A lock left by a dead process on this host (a kill -9, a crash), or by this very
  process, is taken over; a live one is refused naming its pid and host.
  """
  path = os.path.join(workdir, LOCK)
  me = {"pid": os.getpid(), "host": socket.gethostname()}
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        with open(path) as f:
          other = json.load(f)
      except (OSError, ValueError):
        other = {}   # Half-written by a process that died: stale.
      stale = other.get("host") == me["host"] and (
          other.get("pid") == me["pid"] or not _alive(int(other.get("pid", 0)) or -1))
      if other and not stale:
        raise WorkdirInUse(
            f"{workdir} is in use by another run (pid {other.get('pid')} on host "
            f"{other.get('host')}); wait for it, use another --workdir, or delete {path} if "
            "that run is gone.") from None
      try:
        os.remove(path)
      except FileNotFoundError:
        pass
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break

  def release():
    try:
      with open(path) as f:
        if json.load(f) == me:
          os.remove(path)
    except (OSError, ValueError):
      pass
  return release


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out |= _flat(v, f"{prefix}{k}.")
    else:
      out[f"{prefix}{k}"] = v
  return out


def stored_config(workdir: str) -> dict | None:
  """The config a run in `workdir` wrote (config.json) over today's defaults: a field the
  run predates counts as its default (a new field's default keeps the earlier behaviour).
  None when the workdir holds no run yet."""
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)

  def merge(base: dict, over: dict) -> dict:
    return {**base, **{k: merge(base[k], v) if isinstance(base.get(k), dict) and
                       isinstance(v, dict) else v for k, v in over.items()}}
  return merge(json.loads(base_config().to_json_best_effort()), saved)


def config_changes(workdir: str, config) -> list[str]:
  """"field: stored -> new" for every setting that differs from the run in `workdir`.

  Empty when the workdir holds no run yet. Fields in HARMLESS and in
  `config.allow_changed` may differ; a field the stored run predates counts as its default
  (stored_config).
  """
  stored = stored_config(workdir)
  if stored is None:
    return []
  stored = _flat(stored)
  new = _flat(json.loads(config.to_json_best_effort()))
  allowed = set(HARMLESS) | set(config.get("allow_changed") or ())
  return [f"{k}: {stored.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
          for k in sorted(set(stored) | set(new))
          if k not in allowed and stored.get(k) != new.get(k)]


def check_resume(workdir: str, config) -> None:
  """Refuses to continue a run in `workdir` under other settings, naming the fields."""
  changes = config_changes(workdir, config)
  if changes:
    names = ", ".join(repr(c.split(":")[0]) for c in changes)
    raise ValueError(
        f"{workdir} holds a run with other settings ({'; '.join(changes[:4])}"
        f"{' …' if len(changes) > 4 else ''}); use another --workdir, or allow them with "
        f"--config.allow_changed=\"({names},)\".")
