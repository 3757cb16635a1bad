"""A sweep's worker processes (jtl/workers.py): how many, and that they stop as a run does."""

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jtl import runtime, workers


def test_auto_jobs_is_one_per_core_capped_by_count_and_memory_and_one_off_cpu(monkeypatch):
  import jax
  pages = {"SC_PAGE_SIZE": 4096}
  monkeypatch.setattr(os, "sysconf", lambda name: pages.get(name) or pages["pages"])
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(pages["cores"])))
  for cores, gib, expected in [(2, 24, 2), (1, 24, 1), (16, 256, 4), (16, 9, 2), (8, 2, 1)]:
    pages.update(cores=cores, pages=gib * 2**30 // 4096)
    assert workers.auto_jobs() == expected, (cores, gib)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert workers.auto_jobs() == 1


def test_a_preempted_cell_keeps_its_line_and_exit_code_across_processes():
  e = pickle.loads(pickle.dumps(runtime.Preempted("SIGTERM at step 3: checkpoint saved", 143)))
  assert isinstance(e, runtime.Preempted) and str(e).startswith("SIGTERM at step 3") and e.code == 143


def drain(results, timeout=60):
  """Every result, failing rather than hanging when one never comes back."""
  while True:
    try:
      results.next(timeout=timeout)
    except StopIteration:
      return


def train_until_stopped(item):
  """A stand-in cell: trains until a stop signal, then stops as the trainer does."""
  name, ready_dir = item
  with runtime.Preemption() as preemption:
    open(os.path.join(ready_dir, name), "w").close()
    step = 0
    while not preemption.requested:
      step += 1
      time.sleep(0.01)
    raise preemption.stop(step, f"W/{name}")


@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "Ctrl-C at step "),
                                                (signal.SIGTERM, 143, "SIGTERM at step ")])
def test_a_stop_reaches_each_busy_worker_once_and_queued_cells_do_not_start(
    tmp_path, signum, code, line):
  items = [(name, str(tmp_path)) for name in ("a", "b", "c", "d")]
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(runtime.Preempted) as stopped:
    with workers.Workers(2, train_until_stopped) as pool:
      results = pool.imap(items)
      deadline = time.time() + 60
      while len(os.listdir(tmp_path)) < 2 and time.time() < deadline:
        time.sleep(0.05)
      assert sorted(os.listdir(tmp_path)) == ["a", "b"]
      os.kill(os.getpid(), signum)   # As a terminal's Ctrl-C reaches the sweep alone.
      drain(results)
  # The first cell's own line: it finished its step, so one Ctrl-C was not taken as two.
  assert stopped.value.code == code and str(stopped.value).startswith(line)
  assert "W/a" in str(stopped.value)
  assert sorted(os.listdir(tmp_path)) == ["a", "b"]   # c and d never started.
  assert signal.getsignal(signal.SIGINT) == before   # Put back.
  assert not any(p.is_alive() for p in multiprocessing.active_children()), multiprocessing.active_children()


class Unreadable(Exception):
  def __init__(self, message, detail):   # pickle rebuilds it with one argument: fails
    super().__init__(message)


def fail_unreadably(item):
  raise Unreadable(f"cell {item} failed", "detail")


def test_a_cells_error_that_does_not_unpickle_comes_back_as_its_message():
  with pytest.raises(RuntimeError, match="Unreadable: cell x failed"):
    with workers.Workers(2, fail_unreadably) as pool:
      drain(pool.imap(["x"]))
  assert not any(p.is_alive() for p in multiprocessing.active_children())   # None left over.


def square(x):
  return x * x


def test_workers_give_results_in_order_and_end_with_their_queue():
  with workers.Workers(2, square) as pool:
    assert list(pool.imap(range(7))) == [0, 1, 4, 9, 16, 25, 36]
  assert not any(p.is_alive() for p in multiprocessing.active_children()), multiprocessing.active_children()


@pytest.mark.slow
def test_workers_stop_when_their_sweep_is_killed(tmp_path):
  script = tmp_path / "sweep.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys, time
      sys.path.insert(0, {os.path.dirname(__file__)!r})
      from jtl import workers
      from test_workers import train_until_stopped
      if __name__ == "__main__":
        with workers.Workers(2, train_until_stopped) as pool:
          results = pool.imap([("a", {str(tmp_path)!r}), ("b", {str(tmp_path)!r})])
          while not all(os.path.exists(os.path.join({str(tmp_path)!r}, n)) for n in "ab"):
            time.sleep(0.05)
          import multiprocessing
          print(*[p.pid for p in multiprocessing.active_children()], flush=True)
          list(results)
  """))
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  pids = [int(p) for p in proc.stdout.readline().split()]
  assert len(pids) == 2
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 60
  while time.time() < deadline and any(_alive(p) for p in pids):
    time.sleep(0.1)
  assert not any(_alive(p) for p in pids), "a worker outlived its killed sweep"


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"   # A zombie has exited.
  except FileNotFoundError:
    return False
