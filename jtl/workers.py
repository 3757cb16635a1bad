"""A sweep's cells side by side: worker processes that stop as a single run does.

A small cell cannot keep a machine's cores busy (the main study ran in 24 min 17 s one cell
at a time and in 19 min 30 s two at a time on a 2-core Zen 5), so `jtl sweep` runs the cells
of a stage in `auto_jobs()` worker processes unless `--jobs` says otherwise.

Stopping keeps a single run's contract:
- Ctrl-C or SIGTERM reaches the sweep (the workers have a process group of their own, so a
  terminal's Ctrl-C is not delivered twice); it passes it on to every worker once, as
  Ctrl-C. A worker inside its training loop finishes the step, writes a checkpoint and stops
  (runtime.Preemption); one between cells starts no other. The sweep then exits 130 (143
  after SIGTERM) with the first cell's line; a second Ctrl-C stops everything at once.
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
import time

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
  handlers back; the workers end when their queue does, or, after a stop signal or an error,
  once their cells have checkpointed (at most `grace_s`); at once after a second Ctrl-C.

  multiprocessing's `Pool.terminate` is not used: it takes the task queue's lock and then
  relies on SIGTERM killing every worker, while a worker here turns SIGTERM into a
  checkpoint; a worker killed while it holds that lock would block the others."""

  def __init__(self, jobs: int, fn, grace_s: float = 600):
    self._fn, self._grace_s = fn, grace_s
    self._pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_init)
    self.first_signal, self.signals = None, 0
    self._previous = {sig: signal.signal(sig, self._pass_on) for sig in STOP_SIGNALS}

  def imap(self, items):
    """`fn` of each item, in the items' order; a worker's exception is raised here."""
    return self._pool.imap(_call, [(self._fn, item) for item in items])

  def _pass_on(self, signum, frame):
    self.signals += 1
    self.first_signal = self.first_signal or signum
    # As SIGINT whatever came: a worker between cells keeps it as a flag (SIGTERM would end
    # it, maybe while it holds the queue's lock); the exit code is put right in __exit__.
    self._signal_workers(signal.SIGINT)
    if self.signals > 1:   # As in a single run: the second Ctrl-C does not wait.
      raise KeyboardInterrupt

  def _signal_workers(self, signum):
    for process in self._pool._pool:   # The pool's worker processes (a stable attribute).
      try:
        os.kill(process.pid, signum)
      except (ProcessLookupError, TypeError):   # Gone, or not started.
        pass

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if exc_type is not KeyboardInterrupt:   # Not a second Ctrl-C: the workers end cleanly.
      if exc_type is not None and not self.signals:   # An error: other cells stop as at Ctrl-C.
        self._signal_workers(signal.SIGINT)
      self._pool.close()   # No more cells; each worker ends its cell (checkpointed) and exits.
      deadline = time.time() + self._grace_s
      for process in list(self._pool._pool):
        process.join(max(0.0, deadline - time.time()))
    if any(process.exitcode is None for process in self._pool._pool):
      from multiprocessing.pool import TERMINATE
      self._pool._worker_handler._state = TERMINATE   # Else it would start new workers.
      self._pool._worker_handler.join(5)
      self._signal_workers(signal.SIGKILL)
      self._pool._terminate.cancel()   # Its clean-up would wait on a dead worker's lock.
    else:
      self._pool.join()
    if (self.first_signal == signal.SIGTERM and exc_type is not KeyboardInterrupt
        and isinstance(exc, _runtime().Preempted)):
      raise _runtime().Preempted(str(exc).replace("Ctrl-C", "SIGTERM", 1), 143) from None


def _runtime():
  from jtl import runtime
  return runtime


# ---------------------------------------------------------------------------
# Inside a worker.
# ---------------------------------------------------------------------------
_stopped: list[int] = []    # The stop signal that reached this worker, if one did.
_parent: list[int] = []     # The sweep's process id.


def _worker_init() -> None:
  from jtl import runtime
  runtime.enable_compilation_cache()
  _parent.append(os.getppid())
  os.setpgrp()   # A terminal's Ctrl-C goes to the sweep alone, which passes it on once.
  if sys.platform.startswith("linux"):   # SIGTERM from the kernel when the sweep dies.
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:   # It died before the line above.
      os._exit(143)
  _between_cells()


def _between_cells() -> None:
  """An idle worker keeps a Ctrl-C as a flag and starts no other cell; SIGTERM (its sweep
  died) ends it."""
  signal.signal(signal.SIGINT, _remember)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _remember(signum, frame):
  _stopped.append(signum)


def _in_a_cell(signum, frame):
  """A stop signal inside a cell but outside its training loop (which takes its own):
  the cell ends, unfinished, and no other starts."""
  _stopped.append(signum)
  raise _not_finished(signum, "before the end of its cell")


def _not_finished(signum: int, when: str):
  return _runtime().Preempted(f"{_NAMES[signum]} {when}: rerun the same command to go on (a "
                              "sweep keeps its finished cells, and a cell resumes from its "
                              "last checkpoint).", _CODES[signum])


def _call(fn_item):
  fn, item = fn_item
  if _stopped:
    raise _not_finished(_stopped[0], "before a cell started")
  for sig in STOP_SIGNALS:
    signal.signal(sig, _in_a_cell)
  try:
    return fn(item)
  except _runtime().Preempted as e:   # Its training loop took the signal: start no other cell.
    _stopped.append(signal.SIGTERM if e.code == _CODES[signal.SIGTERM] else signal.SIGINT)
    raise
  except Exception as e:
    try:   # The sweep must be able to read it back: one that does not unpickle hangs the pool.
      pickle.loads(pickle.dumps(e))
    except Exception:
      raise RuntimeError(f"{type(e).__name__}: {e}") from None
    raise
  finally:
    _between_cells()
    if _stopped and os.getppid() != _parent[0]:   # The sweep is gone: nobody to answer.
      os._exit(_CODES[_stopped[0]])
