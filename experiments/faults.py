r"""Fault injection: kill, preempt, fill the disk and race runs; check every recovery.

  ./launch.sh experiments/faults.py                          # ~13 min on 2 busy cores
  ./launch.sh experiments/faults.py --trials 5 --seed 1 --workdir runs/faults
  ./launch.sh experiments/faults.py --faults kill,sigterm   # some of them

A short real run (configs/tiny.py, the tests' tiny run: 12 steps, a checkpoint every 2,
validation every 4, a metrics row every step) is the reference; a second uninterrupted
run is the control that shows two runs agree bit for bit. Each fault starts the same
command as a subprocess in its own process group, injects the fault, reruns the command
until it exits 0, and checks against the reference:

  recovered         the rerun exits 0: no half-written checkpoint, lock or file blocks it;
  params identical  every array of params and batch_stats is equal (np.array_equal), and
                    so are the summary's steps, test and validation accuracies and losses;
  data lost         metrics.jsonl holds each of the reference's rows exactly once, with
                    equal values (images/s aside): rows missing, duplicated or changed.

Faults: kill -9 of the process group at --trials random moments drawn over the control's
duration, and at chosen ones (mid-checkpoint write, validation, the final evaluation);
SIGTERM likewise (exit 143 within 30 s, a checkpoint kept); a disk that fills during a
save and a read-only workdir (a tmpfs: needs root); two runs on one workdir 0.5 s apart
and a stale lock; a rerun under a changed config; a sweep killed mid-cell.
Prints a table and writes WORKDIR/faults.json; exits 1 if any fault was not survived.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/tiny.py"   # 8x8 digits, width 1/8, a metrics row every step.
FIELDS = {"data.val_per_class": 5, "checkpoint_every": 2, "eval_every": 4}
STEPS, EVAL_EVERY, CKPT_EVERY = 12, 4, 2
TIMING = {"train/images_per_sec"}   # The one metric that differs between equal runs.
SUMMARY = ("steps", "test_accuracy", "test_loss", "val_accuracy", "best_val_step",
           "best_val_accuracy", "trainable_params")
RUN_TIMEOUT_S = 300
ASYNCIO_NOISE = "RuntimeError: Event loop is closed"
FAULTS = ("kill", "sigterm", "disk", "lock", "config", "sweep")


# ---------------------------------------------------------------------------
# Processes: each run in its own group, so a kill leaves no child behind.
# ---------------------------------------------------------------------------
class Lab:
  """The harness's workdir, the runs' environment and settings, and the reference run.

  own_caches: XLA and prefix caches under ROOT/cache, so that a kill mid-write cannot
  damage ~/.cache/jtl (the tests pass the caches of their session, tests/conftest.py).
  """

  def __init__(self, root: str, *, steps: int = STEPS, own_caches: bool = True):
    self.root, self.steps = os.path.abspath(root), steps
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    if own_caches:
      self.env |= {"JTL_COMPILATION_CACHE": os.path.join(self.root, "cache", "xla"),
                   "JTL_PREFIX_CACHE": os.path.join(self.root, "cache", "prefix")}
    self.ref = None
    self.started = time.time()

  def command(self, workdir: str, *extra: str) -> list[str]:
    """The run's command line: the launcher's `python -m jtl.main` with the tiny fields."""
    fields = [f"--config.{k}={v}" for k, v in FIELDS.items()]
    return [sys.executable, "-m", "jtl.main", f"--config={CONFIG}", *fields,
            f"--config.total_steps={self.steps}", *extra, f"--workdir={workdir}"]

  def path(self, name: str) -> str:
    """A fresh folder ROOT/name for one trial."""
    path = os.path.join(self.root, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def log(self, message: str) -> None:
    print(f"[{time.time() - self.started:5.0f} s] {message}", flush=True)


class Proc:
  """A started command; its stdout and stderr go to LOG.out and LOG.err."""

  def __init__(self, lab: Lab, argv: list[str], log: str):
    self.log = log
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
      self.popen = subprocess.Popen(argv, cwd=ROOT, env=lab.env, stdout=out, stderr=err,
                                    start_new_session=True)
    self.pid, self.started = self.popen.pid, time.time()

  def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
      return self.popen.wait(timeout)
    except subprocess.TimeoutExpired:
      signal_group(self.pid, signal.SIGKILL)
      self.popen.wait()
      raise RuntimeError(f"{self.log}: still running after {timeout} s; killed") from None

  def stderr(self) -> str:
    with open(self.log + ".err") as f:
      return f.read()

  def errors(self) -> list[str]:
    """The 'jtl: error:' lines of its stderr."""
    return [l for l in self.stderr().splitlines() if l.startswith("jtl: error:")]


def signal_group(pgid: int, sig: int) -> None:
  try:
    os.killpg(pgid, sig)
  except ProcessLookupError:
    pass


def survivors(pgid: int) -> list[int]:
  """Live (not zombie) processes still in group `pgid`."""
  out = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[2]) == pgid and fields[0] != "Z":
      out.append(int(pid))
  return out


def wait_for(proc: Proc, trigger, poll_s: float = 0.005) -> bool:
  """Polls `trigger(elapsed_s)` until it holds (True) or the process exits (False)."""
  while proc.popen.poll() is None:
    if trigger(time.time() - proc.started):
      return True
    time.sleep(poll_s)
  return False


def hit(proc: Proc, sig: int, timeout: float = 60) -> dict:
  """Sends `sig` to the group; returns exit code, seconds to exit, and survivors."""
  t = time.time()
  signal_group(proc.pid, sig)
  try:
    rc = proc.popen.wait(timeout)
  except subprocess.TimeoutExpired:
    signal_group(proc.pid, signal.SIGKILL)
    rc = proc.popen.wait()
  seconds = time.time() - t
  left = survivors(proc.pid)
  signal_group(proc.pid, signal.SIGKILL)
  return {"rc": rc, "exit_s": round(seconds, 2), "survivors": left}


# ---------------------------------------------------------------------------
# Reading a workdir.
# ---------------------------------------------------------------------------
def read_rows(workdir: str) -> list[dict]:
  """metrics.jsonl's rows; a torn last line (a kill mid-write) is returned as {"torn": text}."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        rows.append({"torn": line})
  return rows


def kind(row: dict) -> str:
  """"train", "val", "test": what wrote a row, from its first metric's prefix."""
  names = [k for k in row if k != "step"]
  return names[0].split("/")[0] if names else "?"


def checkpoint_entries(workdir: str) -> list[str]:
  folder = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def saved_steps(workdir: str) -> list[int]:
  return sorted(int(n) for n in checkpoint_entries(workdir) if n.isdigit())


def moment(workdir: str, steps: int = STEPS) -> str:
  """Where a run was when a fault hit it, read from what it had written so far."""
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return "after the summary (exiting)"
  writing = [n for n in checkpoint_entries(workdir) if not n.isdigit()]
  if writing:
    return f"mid-checkpoint write (step {writing[-1].split('.')[0]})"
  rows = [r for r in read_rows(workdir) if "step" in r]
  if not rows:
    started = os.path.exists(os.path.join(workdir, "config.json"))
    return "first step (compiling)" if started else "start-up (imports, data, restore)"
  last, step = kind(rows[-1]), rows[-1]["step"]
  if last == "test":
    return "final summary"
  if step == steps and step in saved_steps(workdir):
    return "final evaluation"
  if last == "train" and (step % EVAL_EVERY == 0 or step == steps):
    return f"validation at step {step}"
  if step % CKPT_EVERY == 0 and step not in saved_steps(workdir):
    return f"before the checkpoint of step {step}"
  return f"training (step {step + 1})"


# ---------------------------------------------------------------------------
# Checks against the reference.
# ---------------------------------------------------------------------------
def load(workdir: str) -> dict:
  """A finished run's params, batch_stats, summary and metrics rows."""
  from jtl import checkpoint
  params, stats = checkpoint.load_model(workdir)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  return {"params": params, "batch_stats": stats, "summary": summary, "rows": read_rows(workdir)}


def same_arrays(a, b) -> list[str]:
  """Paths of arrays that differ (or exist in one tree only)."""
  import flax.traverse_util as tu
  import numpy as np
  fa, fb = tu.flatten_dict(a, sep="/"), tu.flatten_dict(b, sep="/")
  return sorted(k for k in fa.keys() | fb.keys()
                if k not in fa or k not in fb or not np.array_equal(fa[k], fb[k]))


def data_check(rows: list[dict], ref_rows: list[dict]) -> dict:
  """Rows missing, duplicated, changed or unexpected against the reference, as 'step N kind'."""
  def key(r):
    return (r.get("step", -1), kind(r))
  ref = {key(r): {k: v for k, v in r.items() if k not in TIMING} for r in ref_rows}
  counts = collections.Counter(key(r) for r in rows)
  name = lambda k: f"step {k[0]} {k[1]}"
  return {
      "missing": [name(k) for k in sorted(ref) if k not in counts],
      "duplicated": [name(k) for k in sorted(counts) if counts[k] > 1],
      "changed": [name(key(r)) for r in rows if key(r) in ref
                  and {k: v for k, v in r.items() if k not in TIMING} != ref[key(r)]],
      "unexpected": [name(k) for k in sorted(counts) if k not in ref],
  }


def compare(lab: Lab, workdir: str, trial: dict) -> dict:
  """Fills `trial` with params_identical, summary_diff and the data check."""
  try:
    run = load(workdir)
  except (OSError, ValueError) as e:
    trial["problems"].append(f"cannot read the recovered run: {e}")
    trial["params_identical"] = False
    return trial
  ref = lab.ref
  differ = (same_arrays(run["params"], ref["params"])
            + same_arrays(run["batch_stats"], ref["batch_stats"]))
  trial["params_identical"] = not differ
  if differ:
    trial["problems"].append(f"{len(differ)} arrays differ, e.g. {differ[0]}")
  trial["summary_diff"] = {k: [run["summary"].get(k), ref["summary"].get(k)] for k in SUMMARY
                           if run["summary"].get(k) != ref["summary"].get(k)}
  trial["data"] = data_check(run["rows"], ref["rows"])
  trial["left_behind"] = [n for n in checkpoint_entries(workdir) if not n.isdigit()]
  return trial


def new_trial(fault: str, **fields) -> dict:
  """A trial's record, as faults.json holds it."""
  return {"fault": fault, "injected": False, "moment": None, "recovered": False,
          "params_identical": None, "summary_diff": {}, "data": {}, "problems": [], **fields}


def data_lost(trial: dict) -> bool:
  return any(trial["data"].get(k) for k in ("missing", "duplicated", "changed", "unexpected"))


def survived(trial: dict) -> bool:
  return (trial["recovered"] and trial["params_identical"] is not False
          and not trial["summary_diff"] and not data_lost(trial) and not trial["problems"])


def recover(lab: Lab, workdir: str, trial: dict, name: str, *extra: str) -> dict:
  """Reruns the command until it exits 0 (no more faults: at most twice), then compares."""
  for attempt in range(2):
    proc = Proc(lab, lab.command(workdir, *extra), f"{lab.root}/logs/{name}.rerun{attempt}")
    rc = proc.wait()
    trial.setdefault("rerun_rc", []).append(rc)
    if rc == 0:
      trial["recovered"] = True
      return compare(lab, workdir, trial)
  said = (proc.errors() or [proc.stderr()[-300:]])[-1]
  trial["problems"].append(f"the rerun exits {rc}: {said}")
  return trial


# ---------------------------------------------------------------------------
# Triggers: when to inject.
# ---------------------------------------------------------------------------
def after(seconds: float):
  return lambda workdir, elapsed: elapsed >= seconds


def writing_checkpoint(step: int):
  """While orbax writes step `step` into its temporary folder."""
  prefix = f"{step}."
  return lambda workdir, _: any(n.startswith(prefix) for n in checkpoint_entries(workdir))


def saved(step: int):
  return lambda workdir, _: step in saved_steps(workdir)


def logged(step: int, what: str):
  """Once the `what` row ("train", "val", "test") of `step` is in metrics.jsonl."""
  return lambda workdir, _: any(r.get("step") == step and kind(r) == what
                                for r in read_rows(workdir))


def locked(workdir: str, _) -> bool:
  return os.path.exists(os.path.join(workdir, ".jtl.lock"))


def inject(lab: Lab, fault: str, name: str, sig: int, trigger, **fields) -> tuple[dict, dict]:
  """Starts a run, waits for `trigger`, sends `sig` to its group; returns (trial, the hit)."""
  workdir = lab.path(f"trials/{name}")
  proc = Proc(lab, lab.command(workdir), f"{lab.root}/logs/{name}")
  trial = new_trial(fault, name=name, workdir=workdir, **fields)
  if not wait_for(proc, lambda elapsed: trigger(workdir, elapsed)):
    trial["moment"] = f"after exit (rc {proc.popen.returncode}): the fault missed"
    return trial, {"rc": proc.popen.returncode, "exit_s": 0.0, "survivors": []}
  trial["at_s"] = round(time.time() - proc.started, 2)
  trial["moment"] = moment(workdir, lab.steps)
  shot = hit(proc, sig)
  trial["injected"], trial["rc"] = True, shot["rc"]
  if shot["survivors"]:
    trial["problems"].append(f"processes {shot['survivors']} outlived the kill of their group")
  return trial, shot


# ---------------------------------------------------------------------------
# The faults.
# ---------------------------------------------------------------------------
def reference(lab: Lab) -> None:
  """The uninterrupted run every recovery is compared with."""
  ref = lab.path("reference")
  rc = Proc(lab, lab.command(ref), f"{lab.root}/logs/reference").wait()
  if rc:
    raise RuntimeError(f"the reference run failed (exit {rc}); see "
                       f"{lab.root}/logs/reference.err")
  lab.ref = load(ref)


def control(lab: Lab) -> list[dict]:
  """A second uninterrupted run, which must equal the reference; its duration is the one
  random faults are drawn over."""
  control = lab.path("control")
  t = time.time()
  proc = Proc(lab, lab.command(control), f"{lab.root}/logs/control")
  trial = new_trial("control: a second uninterrupted run", name="control", injected=None,
                    moment="no fault")
  trial["recovered"] = proc.wait() == 0
  lab.ref["duration_s"] = time.time() - t
  lab.log(f"reference and control: {lab.ref['duration_s']:.1f} s a run, "
          f"test accuracy {lab.ref['summary']['test_accuracy']:.4f}")
  return [compare(lab, control, trial) if trial["recovered"] else trial]


KILL_MOMENTS = (
    ("kill -9 mid-checkpoint write", "kill_ckpt_first", writing_checkpoint(2)),
    ("kill -9 mid-checkpoint write", "kill_ckpt_later", writing_checkpoint(8)),
    ("kill -9 during validation", "kill_eval", logged(8, "train")),
    ("kill -9 during the final evaluation", "kill_final_eval", saved(STEPS)),
    ("kill -9 at the end (test row logged)", "kill_end", logged(STEPS, "test")),
)
SIGTERM_MOMENTS = (
    ("SIGTERM during start-up", "term_startup", after(1.0)),
    ("SIGTERM mid-checkpoint write", "term_ckpt", writing_checkpoint(6)),
    ("SIGTERM during validation", "term_eval", logged(4, "train")),
    ("SIGTERM during the final evaluation", "term_final_eval", saved(STEPS)),
)
MISSED = "rerun of a finished run (the fault came after exit)"


def signal_trials(lab: Lab, rng: random.Random, n: int, sig: int) -> list[dict]:
  """`sig` at n random moments drawn over a run's duration (a miss is redrawn), then at
  the chosen ones; each run is then rerun to the end and compared."""
  what = "kill -9" if sig == signal.SIGKILL else "SIGTERM"
  trials = []
  while sum(t["fault"] != MISSED for t in trials) < n and len(trials) < 2 * n:
    delay = rng.uniform(0, lab.ref["duration_s"])
    trials.append(signal_trial(lab, f"{what} at a random moment",
                               f"{what.split()[0].lower()}{len(trials):02d}", sig, after(delay)))
  for fault, name, trigger in KILL_MOMENTS if sig == signal.SIGKILL else SIGTERM_MOMENTS:
    trials.append(signal_trial(lab, fault, name, sig, trigger))
  return trials


def signal_trial(lab: Lab, fault: str, name: str, sig: int, trigger) -> dict:
  """One run hit by `sig` when `trigger` holds, rerun and compared."""
  trial, shot = inject(lab, fault, name, sig, trigger)
  if not trial["injected"]:
    trial["fault"] = MISSED
  elif sig == signal.SIGTERM:
    trial["exit_s"] = shot["exit_s"]
    trial["checkpoint"] = (saved_steps(trial["workdir"]) or [None])[-1]
    trial["problems"] += sigterm_problems(trial, shot, lab.steps)
  trial = recover(lab, trial["workdir"], trial, name)
  lab.log(line(trial))
  return trial


def sigterm_problems(trial: dict, shot: dict, steps: int) -> list[str]:
  """143 with a checkpoint within 30 s. Outside the train loop, before training starts
  (nothing to save yet) and after the summary (nothing left to save), jtl says one line and
  exits 143 without a checkpoint, or -15 before Python has set its handler; during the
  final evaluation the run may also finish (0)."""
  rc, problems = shot["rc"], []
  if shot["exit_s"] > 30:
    problems.append(f"took {shot['exit_s']} s to exit after SIGTERM")
  outside = trial["moment"].startswith(("start-up", "first step", "after the summary"))
  if rc == 143:
    if trial["checkpoint"] is None and not outside:
      problems.append("exited 143 without a checkpoint")
  elif not (rc == -signal.SIGTERM and outside) and not (rc == 0 and trial["checkpoint"] == steps):
    problems.append(f"exit code {rc} at {trial['moment']}")
  return problems


def mount_tmpfs(path: str, size_kb: int) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", path],
                        capture_output=True).returncode == 0


@contextlib.contextmanager
def tmpfs(path: str, size_kb: int):
  """A tmpfs of `size_kb` mounted at `path` for the block, unmounted after it."""
  if not mount_tmpfs(path, size_kb):
    raise RuntimeError(f"cannot mount a tmpfs at {path}")
  try:
    yield path
  finally:
    unmount(path)


def remount(path: str, options: str) -> None:
  subprocess.run(["mount", "-o", f"remount,{options}", path], check=True, capture_output=True)


def unmount(path: str) -> None:
  subprocess.run(["umount", path], capture_output=True)
  shutil.rmtree(path, ignore_errors=True)


def du_kb(path: str) -> int:
  return int(subprocess.run(["du", "-sk", path], capture_output=True, text=True,
                            check=True).stdout.split()[0])


def disk_trials(lab: Lab) -> list[dict]:
  """A disk that fills during a save, and a workdir that cannot be written."""
  mnt = lab.path("tmpfs")
  if not mount_tmpfs(mnt, 1024):
    note = "not run: mount -t tmpfs is not permitted here (needs root)"
    return [new_trial(f, name=f, injected=None, moment=note, recovered=None)
            for f in ("disk full during a save", "read-only workdir")]
  unmount(mnt)
  return [disk_full(lab, mnt), read_only(lab, mnt)]


def disk_full(lab: Lab, mnt: str) -> dict:
  """A tmpfs at `mnt` with room for the first checkpoint, not the second."""
  ref = os.path.join(lab.root, "reference")
  one = du_kb(os.path.join(ref, "checkpoints", str(lab.steps)))
  size = du_kb(ref) - du_kb(os.path.join(ref, "checkpoints")) + one * 3 // 2
  workdir = os.path.join(mnt, "run")
  trial = new_trial("disk full during a save", name="disk_full", workdir=workdir,
                    tmpfs_kb=size, checkpoint_kb=one)
  with tmpfs(mnt, size):
    proc = Proc(lab, lab.command(workdir), f"{lab.root}/logs/disk_full")
    trial["rc"] = proc.wait()
    trial["injected"] = trial["rc"] != 0
    kept = max(saved_steps(workdir), default=0)
    trial["moment"] = f"saving step {kept + CKPT_EVERY} on a {size} KB tmpfs (step {kept} kept)"
    trial["error"] = (proc.errors() or [""])[-1]
    if not trial["injected"]:
      trial["problems"].append(f"the run fit in {size} KB: no fault")
    trial["problems"] += message_problems(proc, workdir, "no space left")
    trial["asyncio_tracebacks"] = noise(proc)
    trial["problems"] += usable(workdir)
    remount(mnt, "size=64m")
    trial = recover(lab, workdir, trial, "disk_full")
  lab.log(line(trial))
  return trial


def message_problems(proc: Proc, path: str, words: str) -> list[str]:
  """The run failed in one 'jtl: error:' line naming `path` and saying `words`, no traceback."""
  errors, problems = proc.errors(), []
  if len(errors) != 1:
    problems.append(f"{len(errors)} 'jtl: error:' lines (expected 1)")
  elif path not in errors[0] or words not in errors[0].lower():
    problems.append(f"the error does not name {path} and say {words!r}: {errors[0]}")
  raised = [e for e in tracebacks(proc.stderr()) if e != ASYNCIO_NOISE]
  if raised:
    problems.append(f"a traceback on stderr ({raised[0]})")
  return problems


def tracebacks(text: str) -> list[str]:
  """The exception lines ("ValueError: ...") of the tracebacks in `text` (threads may
  interleave them, so they are found by their form, not after their header)."""
  return [l for l in text.splitlines()
          if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", l)]


def noise(proc: Proc) -> int:
  """Tracebacks that orbax's writer threads print when a failed save closes their event loop
  while tensorstore still completes writes: not jtl's, reported apart."""
  return proc.stderr().count(ASYNCIO_NOISE)


def usable(workdir: str) -> list[str]:
  """The latest complete checkpoint loads."""
  from jtl import checkpoint
  if not saved_steps(workdir):
    return ["no checkpoint was kept"]
  try:
    checkpoint.load_model(workdir)
    return []
  except (OSError, ValueError) as e:
    return [f"the kept checkpoint does not load: {e}"]


def read_only(lab: Lab, mnt: str) -> dict:
  """An interrupted run's workdir (a tmpfs at `mnt`) remounted read-only, then writable."""
  probe = lab.path("chmod_probe")
  os.makedirs(probe)
  os.chmod(probe, 0o555)
  workdir = os.path.join(mnt, "run")
  trial = new_trial("read-only workdir", name="read_only", workdir=workdir, injected=True,
                    chmod_555_effective=not os.access(probe, os.W_OK))   # Not as root.
  with tmpfs(mnt, 64 * 1024):
    proc = Proc(lab, lab.command(workdir), f"{lab.root}/logs/read_only.first")
    wait_for(proc, lambda _: saved(4)(workdir, 0))
    hit(proc, signal.SIGKILL)
    remount(mnt, "ro")
    proc = Proc(lab, lab.command(workdir), f"{lab.root}/logs/read_only")
    trial["rc"] = proc.wait()
    kept = max(saved_steps(workdir), default=0)
    trial["moment"] = f"rerun of a run killed after its step-{kept} checkpoint, mounted read-only"
    trial["error"] = (proc.errors() or [""])[-1]
    if trial["rc"] == 0:
      trial["problems"].append("the run succeeded on a read-only workdir")
    trial["problems"] += message_problems(proc, workdir, "read-only")
    remount(mnt, "rw")
    trial = recover(lab, workdir, trial, "read_only")
  lab.log(line(trial))
  return trial


def lock_trials(lab: Lab) -> list[dict]:
  """Two runs on one workdir 0.5 s apart; then a lock left by a kill -9 is taken over."""
  workdir = lab.path("trials/lock")
  first = Proc(lab, lab.command(workdir), f"{lab.root}/logs/lock.first")
  time.sleep(0.5)
  second = Proc(lab, lab.command(workdir), f"{lab.root}/logs/lock.second")
  rcs = {p: p.wait() for p in (first, second)}
  trial = new_trial("two runs on one workdir", name="lock", workdir=workdir, injected=True,
                    rc=[rcs[first], rcs[second]])
  refused = [p for p in (first, second) if rcs[p] == 2]
  winner = [p for p in (first, second) if rcs[p] == 0]
  if len(refused) != 1 or len(winner) != 1:
    trial["problems"].append(f"exit codes {trial['rc']}: expected one 0 and one 2")
  else:
    trial["moment"] = ("the second refused" if refused[0] is second
                       else "the first refused (the second reached the lock first)")
    trial["error"] = (refused[0].errors() or [""])[-1]
    trial["problems"] += message_problems(
        refused[0], f"pid {winner[0].pid} on host {socket.gethostname()}", "in use")
    trial["recovered"] = True
    compare(lab, workdir, trial)
  lab.log(line(trial))
  stale, _ = inject(lab, "stale lock of a killed run", "stale_lock", signal.SIGKILL, locked)
  if stale["injected"] and not locked(stale["workdir"], 0):
    stale["problems"].append("the killed run left no lock: nothing to take over")
  stale = recover(lab, stale["workdir"], stale, "stale_lock")
  lab.log(line(stale))
  return [trial, stale]


def config_trials(lab: Lab) -> list[dict]:
  """A changed lr is refused on an interrupted workdir (which stays resumable); an allowed
  total_steps change continues the finished run."""
  trial, _ = inject(lab, "rerun with a changed config", "changed_config", signal.SIGKILL, saved(4))
  workdir = trial["workdir"]
  proc = Proc(lab, lab.command(workdir, "--config.optim.lr=0.05"),
              f"{lab.root}/logs/changed_config.lr")
  trial["rc"] = proc.wait()
  trial["error"] = (proc.errors() or [""])[-1]
  if trial["rc"] != 2:
    trial["problems"].append(f"a changed optim.lr exits {trial['rc']}, not 2")
  trial["problems"] += message_problems(proc, "'optim.lr'", "allow_changed")
  trial = recover(lab, workdir, trial, "changed_config")
  lab.log(line(trial))

  more = lab.steps + 2
  allowed = new_trial(f"allowed change (total_steps {lab.steps} -> {more})",
                      name="allowed_change", workdir=workdir, injected=True,
                      moment="after the run above finished")
  proc = Proc(lab, lab.command(workdir, f"--config.total_steps={more}",
                               "--config.allow_changed=('total_steps',)"),
              f"{lab.root}/logs/allowed_change")
  allowed["rc"] = proc.wait()
  allowed["recovered"] = allowed["rc"] == 0
  if allowed["recovered"]:
    rows = read_rows(workdir)
    train = [r["step"] for r in rows if kind(r) == "train"]
    allowed["data"] = {"missing": [s for s in range(1, more + 1) if s not in train],
                       "duplicated": sorted({s for s in train if train.count(s) > 1})}
    with open(os.path.join(workdir, "summary.json")) as f:
      steps = json.load(f)["steps"]
    if steps != more:
      allowed["problems"].append(f"summary says {steps} steps, not {more}")
  else:
    allowed["problems"].append(f"refused: {(proc.errors() or [''])[-1]}")
  lab.log(line(allowed))
  return [trial, allowed]


STUDY = '''
from jtl import sweep
STUDY = sweep.Study(name="faults", stages=(sweep.Stage(
    "target", {config!r}, fixed={fields!r},
    grid=sweep.product(sweep.axis("strategy.name", ["linear_probe", "full_finetune"]),
                       sweep.seeds(2))),))
'''


def sweep_trial(lab: Lab) -> list[dict]:
  """A sweep killed (kill -9 of launch.sh's group) mid-cell resumes to the same results."""
  study = os.path.join(lab.path("sweep"), "study.py")
  os.makedirs(os.path.dirname(study))
  with open(study, "w") as f:
    f.write(STUDY.format(config=CONFIG, fields=FIELDS))
  sweep_cmd = lambda root: ["./launch.sh", "sweep", study, f"--workdir={root}"]
  full = os.path.join(os.path.dirname(study), "full")
  rc = Proc(lab, sweep_cmd(full), f"{lab.root}/logs/sweep.full").wait()
  killed = os.path.join(os.path.dirname(study), "killed")
  cell = os.path.join(killed, "target", "strategy=full_finetune,seed=0")
  trial = new_trial("sweep killed mid-cell", name="sweep", workdir=killed, full_rc=rc)
  proc = Proc(lab, sweep_cmd(killed), f"{lab.root}/logs/sweep.killed")
  if wait_for(proc, lambda _: saved(6)(cell, 0)):
    trial["moment"] = f"cell 3 of 4, {moment(cell)}"
    shot = hit(proc, signal.SIGKILL)
    trial["injected"] = True
    if shot["survivors"]:
      trial["problems"].append(f"processes {shot['survivors']} outlived the kill of their group")
  rerun = Proc(lab, sweep_cmd(killed), f"{lab.root}/logs/sweep.rerun")
  trial["rerun_rc"] = [rerun.wait()]
  trial["recovered"] = rc == 0 and trial["rerun_rc"] == [0]
  if trial["recovered"]:
    compare_sweeps(full, killed, trial)
  lab.log(line(trial))
  return [trial]


def compare_sweeps(full: str, killed: str, trial: dict) -> None:
  """Each cell once in results.jsonl, with the uninterrupted sweep's accuracies and params."""
  from jtl import checkpoint
  rows = {name: [json.loads(l) for l in open(os.path.join(root, "results.jsonl"))]
          for name, root in (("full", full), ("killed", killed))}
  cells = collections.Counter(r["cell"] for r in rows["killed"])
  trial["data"] = {"missing": sorted({r["cell"] for r in rows["full"]} - set(cells)),
                   "duplicated": sorted(c for c, n in cells.items() if n > 1)}
  by_cell = {r["cell"]: r for r in rows["full"]}
  trial["summary_diff"] = {
      f"{r['cell']} {k}": [r[k], by_cell[r["cell"]][k]] for r in rows["killed"]
      for k in ("test_accuracy", "test_loss", "val_accuracy", "best_val_accuracy")
      if r["cell"] in by_cell and r[k] != by_cell[r["cell"]][k]}
  differ = []
  for r in rows["full"]:
    a = checkpoint.load_model(r["workdir"])
    b = checkpoint.load_model(r["workdir"].replace(full, killed, 1))
    differ += [f"{r['cell']}: {p}" for p in same_arrays(a[0], b[0]) + same_arrays(a[1], b[1])]
  trial["params_identical"] = not differ
  if differ:
    trial["problems"].append(f"{len(differ)} arrays differ, e.g. {differ[0]}")


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------
def line(trial: dict) -> str:
  """One progress line for a trial."""
  verdict = "ok" if survived(trial) else "FAILED: " + "; ".join(
      trial["problems"] + [f"summary {trial['summary_diff']}"] * bool(trial["summary_diff"])
      + [f"data {trial['data']}"] * data_lost(trial))
  return f"{trial['name']}: {trial['fault']} at {trial['moment']} -> {verdict}"


def table(trials: list[dict]) -> tuple[str, list[dict]]:
  """One row per fault: injected, recovered, identical and data-lost counts."""
  rows = []
  for fault in dict.fromkeys(t["fault"] for t in trials):
    ts = [t for t in trials if t["fault"] == fault]
    n = len(ts)
    compared = [t for t in ts if t["params_identical"] is not None]
    identical = sum(bool(t["params_identical"]) and not t["summary_diff"] for t in compared)
    not_run = all(t["recovered"] is None for t in ts)
    rows.append({
        "fault": fault,
        "injected": "n/a" if not_run or ts[0]["injected"] is None
                    else sum(bool(t["injected"]) for t in ts),
        "recovered": "not run" if not_run else f"{sum(bool(t['recovered']) for t in ts)}/{n}",
        "params identical": f"{identical}/{len(compared)}" if compared else "n/a",
        "data lost": sum(data_lost(t) for t in ts) or "none",
        "survived": not_run or all(survived(t) for t in ts),
    })
  head = ["fault", "injected", "recovered", "params identical", "data lost"]
  text = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  text += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
  return "\n".join(text), rows


def notes(trials: list[dict]) -> str:
  """Where the faults landed, and every problem, per fault."""
  out = []
  for fault in dict.fromkeys(t["fault"] for t in trials):
    ts = [t for t in trials if t["fault"] == fault]
    where = collections.Counter(str(t["moment"]).split(" (step")[0].split(" at step")[0]
                                for t in ts)
    out.append(f"- {fault}: " + ", ".join(f"{m} x{k}" for m, k in where.items()))
    out += [f"    {t['name']}: {p}" for t in ts for p in t["problems"]]
    out += [f"    {t['name']}: summary differs {t['summary_diff']}"
            for t in ts if t["summary_diff"]]
    out += [f"    {t['name']}: data {t['data']}" for t in ts if data_lost(t)]
    out += [f"    {t['name']}: {t['error']}" for t in ts if t.get("error")]
    out += [f"    {t['name']}: also {t['asyncio_tracebacks']} x '{ASYNCIO_NOISE}' (orbax threads)"
            for t in ts if t.get("asyncio_tracebacks")]
    out += [f"    {t['name']}: left in checkpoints/ after recovery: {', '.join(t['left_behind'])}"
            for t in ts if t.get("left_behind")]
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=20, help="kill -9 at random moments")
  parser.add_argument("--sigterm_trials", type=int, default=3, help="SIGTERM at random moments")
  parser.add_argument("--workdir", default="runs/faults")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--faults", default=",".join(FAULTS), help=f"some of {','.join(FAULTS)}")
  args = parser.parse_args(argv)
  chosen = args.faults.split(",")
  unknown = set(chosen) - set(FAULTS)
  if unknown:
    parser.error(f"--faults: unknown {', '.join(sorted(unknown))}; expected some of "
                 f"{','.join(FAULTS)}")
  os.environ["JAX_PLATFORMS"] = "cpu"   # This process only reads checkpoints.
  lab, rng = Lab(args.workdir), random.Random(args.seed)
  reference(lab)
  trials = control(lab)
  steps = {"kill": lambda: signal_trials(lab, rng, args.trials, signal.SIGKILL),
           "sigterm": lambda: signal_trials(lab, rng, args.sigterm_trials, signal.SIGTERM),
           "disk": lambda: disk_trials(lab), "lock": lambda: lock_trials(lab),
           "config": lambda: config_trials(lab), "sweep": lambda: sweep_trial(lab)}
  for name in FAULTS:
    if name in chosen:
      trials += steps[name]()
  text, rows = table(trials)
  wall = time.time() - lab.started
  print(f"\n{text}\n\n{notes(trials)}\n\n{len(trials)} trials in {wall:.0f} s (seed {args.seed})")
  out = {"command": " ".join(["experiments/faults.py", *(argv or sys.argv[1:])]),
         "seed": args.seed, "wall_s": round(wall, 1), "run_s": round(lab.ref["duration_s"], 2),
         "reference": {k: lab.ref["summary"].get(k) for k in SUMMARY},
         "table": rows, "trials": trials}
  with open(os.path.join(lab.root, "faults.json"), "w") as f:
    json.dump(out, f, indent=2, default=str)
  print(f"wrote {os.path.join(lab.root, 'faults.json')}")
  return 0 if all(r["survived"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
