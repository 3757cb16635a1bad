"""What a run needs from the process around it: signals, the compilation cache, logging.

>>> with Preemption() as preemption:   # doctest: +SKIP
...   ...                              # the loop checks preemption.requested after each step
"""

from __future__ import annotations

import os
import signal
import sys

import jax
from tqdm import tqdm


class Preempted(Exception):
  """Raised after SIGTERM or Ctrl-C, once the checkpoint is written; `code` is the exit code."""

  def __init__(self, message: str, code: int):
    super().__init__(message)
    self.code = code

  def __reduce__(self):   # A sweep's worker process sends it back to the sweep (jtl/workers.py).
    return type(self), (str(self), self.code)


class Preemption:
  """Turns SIGTERM (a preempted VM) and a first Ctrl-C into a flag the loop checks after
  each step; a second Ctrl-C interrupts at once. A context manager: leaving it restores
  the previous handlers."""

  def __init__(self):
    self.requested = None    # The signal's name once one arrived.
    self._previous = {sig: signal.signal(sig, self._handle)
                      for sig in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    if self.requested == "Ctrl-C" and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

  def close(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def stop(self, step: int, workdir: str) -> Preempted:
    """The exception that ends the run once the checkpoint of `step` is written."""
    return Preempted(f"{self.requested} at step {step}: checkpoint saved in {workdir}; "
                     "rerun the same command to resume.",
                     code=143 if self.requested == "SIGTERM" else 130)


def enable_compilation_cache() -> str:
  """A persistent XLA compilation cache (~/.cache/jtl/xla or $JTL_COMPILATION_CACHE), so a
  rerun, a resume or a sweep's next cell of the same shape skips most of the compile."""
  path = os.environ.get("JTL_COMPILATION_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "jtl", "xla")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Every program, however quick to compile: a run's ~40 small ones (init, data, metrics) took
  # 40 ms each to compile again, 1.6 s of a warm start on a 2-core Zen 5; reading one is ~15 ms.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  return path


# Compiler options for a program that runs once (the model's init, the optimizer's zeros):
# LLVM's cheapest code generation. The main study's ResNet init compiled in 3.6 s with XLA's
# defaults and in 1.0 s with these (2-core Zen 5), the largest part of a cold first step; the
# values it draws differ from the defaults' in the last bit of a few floats.
RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_once(fn, *args):
  """`jax.jit(fn)(*args)` compiled with `RUN_ONCE_OPTIONS`: for a program that runs once,
  whose compile would cost more than its run.

  >>> run_once(lambda x: x + 1, 1)
  Array(2, dtype=int32, weak_type=True)
  """
  return jax.jit(fn).lower(*args).compile(compiler_options=RUN_ONCE_OPTIONS)(*args)


def log(message: str) -> None:
  """One line from process 0, above any progress bar."""
  if jax.process_index() == 0:
    tqdm.write(f"jtl: {message}")


def show_progress(cfg) -> bool:
  """Progress bars only on a terminal: written to a file or a pipe, a bar's carriage
  returns and cursor moves are noise, so the run prints a plain line every log_every steps."""
  return bool(cfg.progress) and jax.process_index() == 0 and _is_terminal(sys.stderr)


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):   # replaced, or closed
    return False


def progress(bar, cfg, step: int, metrics: dict, lr: float, speed: float) -> None:
  """Loss, accuracy, lr (the largest label's) and images/s: on the bar, or one log line."""
  shown = {"loss": f"{float(metrics['loss']):.4f}", "acc": f"{float(metrics['accuracy']):.3f}",
           "lr": f"{lr:.3g}", "img/s": f"{speed:.0f}"}
  if show_progress(cfg):
    bar.set_postfix(shown, refresh=False)
  elif jax.process_index() == 0 and step % cfg.log_every == 0:
    print(f"jtl: step {step}/{cfg.total_steps} " + " ".join(f"{k} {v}" for k, v in shown.items()),
          flush=True)
