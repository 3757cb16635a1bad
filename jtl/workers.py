"""A sweep's cells side by side: worker processes that stop as a single run does.

A small cell cannot keep a machine's cores busy (the main study ran in 24 min 17 s one cell
at a time and in 19 min 30 s two at a time on a 2-core Zen 5), so `jtl sweep` runs the cells
of a stage in `auto_jobs()` worker processes unless `--jobs` says otherwise.

Stopping keeps a single run's contract:
- Ctrl-C or SIGTERM reaches the sweep (the workers have a process group of their own, so a
  terminal's Ctrl-C is not delivered twice); it passes the signal on to every worker once.
  A worker inside its training loop finishes the step, writes a checkpoint and stops
  (runtime.Preemption); one between cells starts no other. The sweep then exits 130 or 143
  with the first cell's line; a second Ctrl-C stops everything at once.
- A worker whose sweep died (even by SIGKILL) gets SIGTERM from the kernel and stops the same
  way, so no cell trains on for a sweep that is gone.

>>> with Workers(2, run_cell) as pool:               # doctest: +SKIP
...   for result in pool.imap(cells): ...
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# Below this much memory per worker, fewer workers: a ResNet-50 cell at 224 px holds ~3 GiB.
GIB_PER_WORKER = 4
MAX_AUTO_JOBS = 4


def auto_jobs() -> int:
  """The cells a stage runs side by side by default: one per CPU core this process may use,
  at most 4 and one per 4 GiB of memory; one where JAX computes on an accelerator, whose
  memory a single process takes."""
  import jax
  if jax.default_backend() != "cpu":
    return 1
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  try:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError, AttributeError):
    memory_gib = GIB_PER_WORKER * MAX_AUTO_JOBS
  return max(1, min(cores or 1, MAX_AUTO_JOBS, int(memory_gib // GIB_PER_WORKER)))


class Workers:
  """`jobs` fresh worker processes (spawn: JAX's threads do not survive a fork), each
  importing jtl once and running `fn` on the items it is given, with stop signals passed on
  as the module docstring says. A context manager: leaving it puts the sweep's own signal
  handlers back and lets the workers finish their checkpoints (at once after a second
  Ctrl-C or an error)."""

  def __init__(self, jobs: int, fn):
    self._fn = fn
    self._pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_init)
    self.signals = 0
    self._previous = {sig: signal.signal(sig, self._pass_on) for sig in STOP_SIGNALS}

  def imap(self, items):
    """`fn` of each item, in the items' order; a worker's exception is raised here."""
    return self._pool.imap(_call, [(self._fn, item) for item in items])

  def _pass_on(self, signum, frame):
    self.signals += 1
    for child in multiprocessing.active_children():
      try:
        os.kill(child.pid, signum)
      except ProcessLookupError:
        pass
    if self.signals > 1:   # As in a single run: the second Ctrl-C does not wait.
      raise KeyboardInterrupt

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if self.signals == 1 and exc_type is not KeyboardInterrupt:
      self._pool.close()   # Each worker ends its cell's checkpoint; queued cells refuse to start.
      self._pool.join()
    else:
      self._pool.terminate()


# ---------------------------------------------------------------------------
# Inside a worker.
# ---------------------------------------------------------------------------
_stopped: list[int] = []    # The stop signal that reached this worker, if one did.
_busy: list[bool] = [False]


def _worker_init() -> None:
  from jtl import runtime
  runtime.enable_compilation_cache()
  os.setpgrp()   # A terminal's Ctrl-C goes to the sweep alone, which passes it on once.
  if sys.platform.startswith("linux"):   # SIGTERM from the kernel when the sweep dies.
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:   # It died before the line above.
      os._exit(143)
  for sig in STOP_SIGNALS:
    signal.signal(sig, _stop_between_cells)


def _stop_between_cells(signum, frame):
  """A stop signal outside a training loop (which takes its own): remember it, and end a
  cell that is setting up or evaluating."""
  _stopped.append(signum)
  if _busy[0]:
    raise _not_finished(signum, "before the end of its cell")


def _not_finished(signum: int, when: str):
  from jtl import runtime
  return runtime.Preempted(f"{_NAMES[signum]} {when}: rerun the same command to go on (a "
                           "sweep keeps its finished cells, and a cell resumes from its last "
                           "checkpoint).", _CODES[signum])


def _call(fn_item):
  fn, item = fn_item
  if _stopped:
    raise _not_finished(_stopped[0], "before a cell started")
  from jtl import runtime
  _busy[0] = True
  try:
    return fn(item)
  except runtime.Preempted as e:   # Its training loop took the signal: start no other cell.
    _stopped.append(signal.SIGTERM if e.code == _CODES[signal.SIGTERM] else signal.SIGINT)
    raise
  except Exception as e:
    try:   # The sweep must be able to read it back: one that does not unpickle hangs the pool.
      pickle.loads(pickle.dumps(e))
    except Exception:
      raise RuntimeError(f"{type(e).__name__}: {e}") from None
    raise
  finally:
    _busy[0] = False
