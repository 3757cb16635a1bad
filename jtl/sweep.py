r"""Sweeps as data: a study declares stages of config grids; the runner runs each cell once.

A study is one Python file (see experiments/) with

  STUDY = sweep.Study(
      name="seed_transfer",
      stages=(
          sweep.Stage("source", "configs/source.py", grid=sweep.seeds(3)),
          sweep.Stage("target", "configs/transfer.py:shots=5",
                      grid=sweep.product(
                          sweep.options("strategy", {"scratch": {"strategy.name": "scratch"},
                                                     "l2_sp": {"strategy.name": "full_finetune",
                                                               "reg.l2_sp": 0.01}}),
                          sweep.axis("optim.lr", [0.01, 0.1]),
                          sweep.seeds(3)),
                      fixed={"init": "{root}/source/seed={seed}"}),
      ),
      report=sweep.Report(stage="target", compare="strategy", select="lr", baseline="scratch"))

A grid is a list of points; `axis`, `options` and `seeds` make one-axis grids,
`product` and `zipit` combine them (big_vision's `hyper.product` / `hyper.zipit`
in spirit). A point sets config fields ("optim.lr"); each axis has a short name
("lr") that names the cell's workdir, `ROOT/STAGE/lr=0.1,seed=0`, and the columns of
results.jsonl. String values may refer to the cell's other axes and to `{root}`.

Everything is validated before the first cell runs: unknown fields, values the
config refuses, unknown strategies and bad rules fail naming the cell and field.

  ./launch.sh sweep experiments/seed_transfer.py [--workdir DIR] [--print_commands]

A cell with a summary.json is finished and skipped; an interrupted one resumes
from its checkpoint. Each finished cell appends one row to DIR/results.jsonl, and
`jtl report DIR` turns that file into DIR/RESULTS.md and plots (jtl/report/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from jtl.config import first_line, import_file, load_config  # Loaded in one place.
from jtl.results import (DIAGNOSTICS, RESULTS, STUDY_JSON, SUMMARY, append_result, read_results,
                         result_row, tune_stages)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL_ONLY = "label:"   # A grid field under this prefix names a label, not a config field.


# ---------------------------------------------------------------------------
# Declaring a grid.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Point:
  """One grid point: short axis names -> shown values, and config fields -> values."""
  labels: Mapping[str, Any]
  fields: Mapping[str, Any]


def short_name(field: str) -> str:
  """"optim.lr" -> "lr", "strategy.name" -> "strategy", "seed" -> "seed"."""
  parts = field.split(".")
  return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def axis(field: str, values: Sequence, name: str | None = None) -> list[Point]:
  """One config field over `values`: `axis("optim.lr", [0.01, 0.1])`."""
  name = name or short_name(field)
  return [Point({name: v}, {field: v}) for v in values]


def options(name: str, choices: Mapping[str, Mapping[str, Any]]) -> list[Point]:
  """Named bundles of fields: `options("strategy", {"l2_sp": {"strategy.name": ..., "reg.l2_sp": 0.01}})`."""
  return [Point({name: label}, dict(fields)) for label, fields in choices.items()]


def schedule(by_shots: Mapping[int, tuple[int, int]]) -> list[Point]:
  """Shots per class zipped with the steps and batch size each gets: {shots: (steps, batch)}."""
  return zipit(axis("data.shots", list(by_shots)),
               axis("total_steps", [s for s, _ in by_shots.values()], name="steps"),
               axis("data.batch_size", [b for _, b in by_shots.values()], name="batch"))


def seeds(n_or_list: int | Sequence[int]) -> list[Point]:
  """The `seed` axis: `seeds(5)` is seeds 0..4."""
  values = range(n_or_list) if isinstance(n_or_list, int) else n_or_list
  return axis("seed", list(values))


def _merge(points: Sequence[Point]) -> Point:
  labels, fields = {}, {}
  for p in points:
    for k in p.labels:
      if k in labels:
        raise ValueError(f"sweep axis {k!r} appears twice in one grid.")
    labels |= p.labels
    fields |= p.fields
  return Point(labels, fields)


def product(*grids: Sequence[Point]) -> list[Point]:
  """Every combination, the last grid varying fastest."""
  return [_merge(ps) for ps in itertools.product(*grids)]


def zipit(*grids: Sequence[Point]) -> list[Point]:
  """Grids of equal length, taken side by side."""
  if len({len(g) for g in grids}) > 1:
    raise ValueError(f"zipit needs grids of equal length, got {[len(g) for g in grids]}.")
  return [_merge(ps) for ps in zip(*grids)]


@dataclasses.dataclass(frozen=True)
class Tuned:
  """A field chosen on validation in an earlier stage, per setting.

  `fixed={"optim.lr": Tuned("tune", "lr")}` sets each cell's lr to the value of axis `lr`
  with the best mean `select_on` over stage "tune"'s cells that share this cell's other
  axes (strategy, shots, ...; seeds aside), the rule `jtl report` selects by. The choice
  joins the cell's labels and name (`strategy=scratch,seed=0,lr=0.01`), so a changed
  choice is a new cell; until every one of those tuning cells has finished, the cell waits.
  Give the tuning stage seeds of its own, and Report(tune_stage=...) to show each
  candidate's validation mean beside the choice.

  leave_out: an axis (e.g. "shift") whose own value never chooses: the value for shift X
  is chosen on the tuning cells of every other shift (leave-one-out), which shows how a
  setting does where nobody tuned for it.
  where: labels the tuning cells must have instead of this cell's own, to borrow another
  arm's choice: LP-FT's probe phase takes linear_probe's lr with
  `Tuned("tune", "lr", where={"strategy": "linear_probe"}, label="lp_lr")`.
  label: the name the choice joins the cell's labels under (default: `axis`).

  Under a key "label:NAME" instead of a config field, the choice only joins the labels,
  for a template: BnB's init `{root}/base/seed={seed},lr={base_lr}` with
  `{"label:base_lr": Tuned("base_tune", "lr")}`.
  """
  stage: str
  axis: str
  select_on: str = "val_accuracy"
  leave_out: str | None = None
  where: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  label: str | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
  """A config (path[:arg]) and the grid of cells run from it; `fixed` fields apply to all."""
  name: str
  config: str
  grid: Sequence[Point] = (Point({}, {}),)
  fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Report:
  """How `jtl report` reads a stage's results.

  compare: the axis whose values are compared (e.g. "strategy"); select: an axis
  chosen per compared value on mean validation accuracy (e.g. "lr"), or None; by:
  axes that split the table (e.g. ("shots",)); baseline: the compared value that
  paired differences are taken against; reference: instead of a baseline, a stage
  (e.g. a base model trained on the target alone) whose cells are paired by seed; x:
  an axis to plot accuracy against; select_on: the result a `select` maximizes (e.g.
  "target_val_accuracy", a labeled target carve); columns: further results shown as
  means (e.g. ("source_test_accuracy",)); tune_seeds: seeds whose validation results
  make the `select` choice and which are then left out of every reported mean and
  difference (so no seed both tunes and reports); tune_stage: the stage whose cells chose a
  `Tuned` field of this stage, or several such stages (their seeds become the tune seeds,
  their rows show each candidate's validation mean); contrasts: pairs (a, b) of compared
  values whose paired differences join the baseline's family (e.g. ("lp_ft",
  "full_finetune")); metrics: further results (e.g. "test_accuracy@fashion_mnist+shift:blur:3",
  an OOD test set) shown as means, whose differences form a family of their own each;
  margin: the equivalence margin (e.g. 0.02, two points) below which a TOST may call a
  difference "indistinguishable".
  """
  stage: str
  compare: str
  baseline: str | None = None
  reference: str | None = None
  select: str | None = None
  by: tuple[str, ...] = ()
  x: str | None = None
  select_on: str = "val_accuracy"
  columns: tuple[str, ...] = ()
  contrasts: tuple[tuple[str, str], ...] = ()
  metrics: tuple[str, ...] = ()
  tune_seeds: tuple[int, ...] = ()
  tune_stage: str | tuple[str, ...] | None = None
  margin: float | None = None
  title: str = ""
  notes: str = ""


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  stages: Sequence[Stage]
  report: Report | None = None
  budget: str = ""          # The time this study takes on the machine it was sized for.


# ---------------------------------------------------------------------------
# Cells: a stage's grid points as configs with workdirs.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Cell:
  stage: str
  name: str             # "strategy=scratch,lr=0.1,seed=0"
  labels: dict
  fields: dict          # Config field -> value, fixed fields included, templates filled.
  config: str           # path[:arg] of the base config.
  workdir: str
  pending: bool = False   # A Tuned field whose tuning cells have not all finished.

  @property
  def finished(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, SUMMARY))


def _fmt(value) -> str:
  text = f"{value:g}" if isinstance(value, float) else str(value)
  return text.replace("/", "_").replace(":", "-").replace(" ", "")


def cells(study: Study, root: str) -> list[Cell]:
  """Every cell of every stage, in run order, with templates filled in and Tuned fields
  chosen from the finished cells of their tuning stage (see `Tuned`)."""
  out, rows = [], None
  for stage in study.stages:
    seen = set()
    for point in stage.grid:
      labels, fields, pending = dict(point.labels), {}, False
      for field, value in {**stage.fixed, **point.fields}.items():
        label_only = field[len(LABEL_ONLY):] if field.startswith(LABEL_ONLY) else None
        if isinstance(value, Tuned):
          rows = read_results(root) if rows is None else rows
          tuned, (value, waits) = value, _choose(study, stage, value, labels, rows, out)
          labels[label_only or tuned.label or tuned.axis], pending = value, pending or waits
        elif label_only:
          labels[label_only] = value
        if not label_only:
          fields[field] = value
      name = ",".join(f"{k}={_fmt(v)}" for k, v in labels.items()) or "run"
      if name in seen:
        raise ValueError(f"stage {stage.name!r}: two grid points are both named {name!r}.")
      seen.add(name)
      env = {"root": root, **{k: _fmt(v) for k, v in labels.items()}}
      for field, value in fields.items():
        if isinstance(value, str):
          try:
            fields[field] = value.format(**env)
          except KeyError as e:
            raise ValueError(f"stage {stage.name!r}: field {field}={value!r} refers to "
                             f"{{{e.args[0]}}}, which is not an axis of this grid "
                             f"({', '.join(labels) or 'none'}) nor root.") from None
      out.append(Cell(stage.name, name, labels, fields, stage.config,
                      os.path.join(root, stage.name, name), pending))
  return out


def _choose(study: Study, stage: Stage, tuned: Tuned, labels: dict, rows: list[dict],
            earlier: list[Cell]) -> tuple[Any, bool]:
  """(the value of `tuned.axis` chosen for a cell with these labels, whether it waits).

  The candidates are the cells of stage `tuned.stage` whose labels agree with `labels` on
  every axis the two share (seeds aside), less those of this cell's `leave_out` value;
  while any of them is unfinished, the cell waits and carries the first candidate's value,
  so that it can be validated. (A report of a leave-one-out stage shows each cell's value
  in its name; Report.select would choose again without leaving out.)"""
  from jtl.report import stats
  tuning = [c for c in earlier if c.stage == tuned.stage]
  if not tuning:
    raise ValueError(f"stage {stage.name!r}: Tuned({tuned.stage!r}, {tuned.axis!r}) names no "
                     "earlier stage of this study.")
  free = ("seed", tuned.axis, tuned.leave_out)
  labels = {**labels, **tuned.where}
  shared = lambda c: all(c.labels[k] == v for k, v in labels.items()
                         if k in c.labels and k not in free)
  candidates = [c for c in tuning if shared(c) and (
      not tuned.leave_out or c.labels.get(tuned.leave_out) != labels.get(tuned.leave_out))]
  if not candidates or tuned.axis not in candidates[0].labels:
    raise ValueError(f"stage {stage.name!r}: stage {tuned.stage!r} has no cell with axis "
                     f"{tuned.axis!r} and labels {labels}.")
  finished = {r["cell"]: r for r in rows if r["stage"] == tuned.stage}
  if any(c.name not in finished for c in candidates):
    return candidates[0].labels[tuned.axis], True
  choice, _ = stats.choose([finished[c.name] for c in candidates], tuned.axis, tuned.select_on)
  return choice, False


def cell_config(cell: Cell):
  """The cell's resolved config; a field the config does not have, or a wrong type, fails here."""
  config = load_config(cell.config)
  config.lock()
  for field, value in cell.fields.items():
    try:
      _set(config, field, value)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      raise ValueError(f"sweep cell {cell.stage}/{cell.name}: config field {field!r} = {value!r} "
                       f"is refused by {cell.config}: {first_line(e)}") from None
  return config


def _set(config, field: str, value) -> None:
  *parents, leaf = field.split(".")
  target = config
  for p in parents:
    target = target[p]
  if leaf not in target:
    raise KeyError(f"no field {leaf!r} in {'.'.join(parents) or 'the config'}")
  if isinstance(value, list):
    value = tuple(value)
  target[leaf] = value


def checked_config(cell: Cell):
  """The cell's config, checked as a run would check it, naming the cell when refused."""
  from jtl import config as config_lib, dry_run, workdir  # JAX is imported only here.
  config = cell_config(cell)
  try:
    config_lib.check(config)
    dry_run.resolve(config)
    workdir.check_resume(cell.workdir, config)   # A study edited after its cells ran.
  except ValueError as e:
    raise ValueError(f"sweep cell {cell.stage}/{cell.name}: {first_line(e)}") from None
  return config


def validate(study: Study, root: str) -> list[tuple[Cell, Any]]:
  """Every cell's config, checked (fields, values, strategy rules) before anything runs; a
  cell that waits on a tuning stage is checked with its first candidate value."""
  out = [(cell, checked_config(cell)) for cell in cells(study, root)]
  if study.report:
    names = {k for c, _ in out if c.stage == study.report.stage for k in c.labels}
    wanted = [study.report.compare, study.report.select, study.report.x, *study.report.by]
    missing = [w for w in wanted if w and w not in names]
    stages = {s.name for s in study.stages}
    if study.report.stage not in stages or missing or study.report.reference not in stages | {None}:
      raise ValueError(f"study {study.name}: report names stage {study.report.stage!r} and "
                       f"axes {missing or wanted}, which its grid does not have.")
    from jtl.report import stats
    stats.check_select_on(study.report.select_on)
    seeds = {c.labels.get("seed") for c, _ in out if c.stage == study.report.stage}
    tuning = tune_stages(study.report.tune_stage)
    tune_seeds = {c.labels.get("seed") for c, _ in out if c.stage in tuning}
    if not set(tuning) <= stages or seeds & tune_seeds:
      raise ValueError(f"study {study.name}: report tune_stage={study.report.tune_stage!r} must "
                       f"name stages whose seeds are not reported; seeds {sorted(seeds & tune_seeds)} "
                       f"are in both and in stage {study.report.stage!r}.")
    if study.report.tune_seeds and not seeds - set(study.report.tune_seeds):
      raise ValueError(f"study {study.name}: every seed of stage {study.report.stage!r} is a "
                       "tuning seed (report tune_seeds); add seeds to report on.")
  return out


def command(cell: Cell) -> str:
  """The one-run command line that trains this cell, for a cluster queue."""
  def value(v):
    return repr(tuple(v)) if isinstance(v, (list, tuple)) else str(v)
  overrides = " ".join(shlex.quote(f"--config.{k}={value(v)}") for k, v in cell.fields.items())
  return f"./launch.sh {shlex.quote(cell.config)} {overrides} --workdir {shlex.quote(cell.workdir)}"


# ---------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------
def typed_command(argv: Sequence[str]) -> str:
  """The command as the user typed it: launch.sh's own line ($JTL_COMMAND), else `jtl ...`
  for the jtl command (or `python -m jtl.cli`), else the script and its arguments.

  >>> typed_command(["/repo/jtl/cli.py", "sweep", "experiments/x.py"])   # no $JTL_COMMAND
  'jtl sweep experiments/x.py'
  """
  if os.environ.get("JTL_COMMAND"):
    return os.environ["JTL_COMMAND"].strip()
  argv = list(argv) or ["jtl"]
  if os.path.basename(argv[0]) == "jtl" or argv[0].replace(os.sep, "/").endswith("jtl/cli.py"):
    argv[0] = "jtl"
  return " ".join(shlex.quote(a) for a in argv)


def provenance(argv: Sequence[str]) -> dict:
  """What a table needs to be traced back: command, date, commit, versions, device."""
  import jax
  import jaxlib
  try:
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], text=True,
                            capture_output=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           text=True, capture_output=True).stdout.strip()
    commit += " (with uncommitted changes)" if dirty else ""
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  device = jax.devices()[0]
  return {"command": typed_command(argv),
          "date": datetime.datetime.now().isoformat(timespec="seconds"),
          "commit": commit, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})",
          "host": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"}


def run(study: Study, root: str, *, print_commands: bool = False, diagnose: bool = False,
        jobs: int | str = 1, log=print) -> list[dict]:
  """Runs every unfinished cell of `study` under `root`; returns results.jsonl's rows.
  `jobs`: cells of a stage run side by side in that many worker processes (a small cell
  cannot fill a machine's cores), with the results of the serial run; "auto" is
  `workers.auto_jobs()` (jtl sweep's default).
  `diagnose`: also write each report-stage cell's drift, CKA and feature picture
  (jtl/diagnose/after.py), for cells finished earlier too."""
  checked = validate(study, root)
  if diagnose and not study.report:
    raise ValueError(f"--diagnose diagnoses the cells of the study's report stage, and study "
                     f"{study.name} declares no report=sweep.Report(...).")
  todo = [c for c, _ in checked if not c.finished or c.pending]
  if print_commands:
    waiting = [c for c in todo if c.pending]
    for cell in todo:
      if not cell.pending:
        print(command(cell))
    if waiting:
      print(f"# {len(waiting)} more cell(s) wait for their tuning stage's results; print the "
            "commands again once the cells above have finished.")
    if not todo:
      print(f"# all {len(checked)} cells of study {study.name} are finished in {root}; "
            "nothing to run.")
    return read_results(root)
  from jtl import runtime, workers
  os.makedirs(root, exist_ok=True)
  runtime.enable_compilation_cache()
  write_study_json(study, root, sys.argv)
  recorded = {(r["stage"], r["cell"]) for r in read_results(root)}
  jobs = min(workers.auto_jobs() if jobs == "auto" else jobs, max(len(todo), 1))
  log(f"jtl sweep {study.name}: {len(checked)} cells, {len(checked) - len(todo)} finished, "
      f"{len(todo)} to run, in {root}" + (f", {jobs} at a time" if jobs > 1 else "")
      + (f" (budget: {study.budget})" if study.budget else ""))
  t0, ran, i = time.time(), 0, 0
  with workers.Workers(jobs, _run_cell) if jobs > 1 else contextlib.nullcontext() as pool:
    for stage in study.stages:
      # Made again stage by stage: a Tuned field is chosen once its tuning stage has run.
      stage_cells = [c for c in cells(study, root) if c.stage == stage.name]
      waiting = [c for c in stage_cells if c.pending]
      if waiting:
        raise RuntimeError(f"sweep cell {waiting[0].stage}/{waiting[0].name} still waits for "
                           "its tuning stage after that stage ran; is a tuning cell's summary "
                           "missing?")
      unfinished = [c for c in stage_cells if not c.finished]
      # A stage's cells are independent of each other (a template or Tuned field names
      # earlier stages only), so up to `jobs` of them run at once; rows are appended in the
      # cells' own order, so results.jsonl reads as a serial run's.
      done = pool.imap(unfinished) if pool else map(_run_cell, unfinished)
      to_run = {c.name for c in unfinished}   # Not `cell.finished`: a worker may finish it first.
      for cell in stage_cells:
        i += 1
        if cell.name in to_run:
          eta = (f", ~{(time.time() - t0) / ran * (len(todo) - ran) / 60:.0f} min left" if ran
                 else "")
          log(f"[{i}/{len(checked)}] {cell.stage}/{cell.name}{eta}")
          diverged = next(done)
          if diverged:   # A diverged setting is a result: never chosen.
            log(f"  {cell.stage}/{cell.name} diverged: {diverged}")
          ran += 1
        record(root, cell, recorded)
        if diagnose and cell.stage == study.report.stage and _stale(cell.workdir, DIAGNOSTICS):
          from jtl.diagnose import after
          log(f"diagnostics of {cell.stage}/{cell.name}")
          try:
            after.diagnose_run(cell.workdir)
          except (ValueError, OSError) as e:   # The result stands; say why its picture does not.
            log(f"  no diagnostics for {cell.stage}/{cell.name}: {first_line(e)}")
  return read_results(root)


def record(root: str, cell: Cell, recorded: set) -> bool:
  """Appends finished `cell`'s row to results.jsonl unless `recorded` ((stage, cell) pairs
  already there) holds it; whether it did."""
  if (cell.stage, cell.name) in recorded:
    return False
  with open(os.path.join(cell.workdir, SUMMARY)) as f:
    append_result(root, result_row(cell, json.load(f)))
  recorded.add((cell.stage, cell.name))
  return True


def _run_cell(cell: Cell) -> str | None:
  """Trains one cell (in this process or a pool's worker); its error message if it diverged."""
  import jax
  from jtl import train
  try:
    train.train_and_evaluate(checked_config(cell), cell.workdir)
  except FloatingPointError as e:
    os.makedirs(cell.workdir, exist_ok=True)
    with open(os.path.join(cell.workdir, SUMMARY), "w") as f:
      json.dump({"diverged": first_line(e)}, f)
    return first_line(e)
  finally:
    # Each cell compiles its own steps; kept, they hold ~770 memory maps a cell on CPU,
    # and a long sweep met the kernel's limit (65530) at its ~130th cell. The disk
    # cache makes the next cell's compile a lookup.
    jax.clear_caches()
  return None


def _stale(workdir: str, name: str) -> bool:
  """Whether `name` in `workdir` is missing or older than the run's summary."""
  path = os.path.join(workdir, name)
  return not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(
      os.path.join(workdir, SUMMARY))


def write_study_json(study: Study, root: str, argv: Sequence[str]) -> None:
  path = os.path.join(root, STUDY_JSON)
  previous = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
  meta = {"name": study.name, "budget": study.budget,
          "report": dataclasses.asdict(study.report) if study.report else None,
          "stages": [{"name": s.name, "config": s.config, "fixed": dict(s.fixed)}
                     for s in study.stages],
          "runs": previous.get("runs", []) + [provenance(argv)]}
  with open(path, "w") as f:
    json.dump(meta, f, indent=2, default=str)


def load_study(path: str) -> Study:
  """The `STUDY` of a study file, found relative to the working directory or the repo."""
  if not os.path.isfile(path) and os.path.isfile(os.path.join(ROOT, path)):
    path = os.path.join(ROOT, path)   # The repository's own experiments/, from anywhere.
  if not os.path.isfile(path):
    raise FileNotFoundError(f"study file {path} does not exist; expected e.g. "
                            "experiments/seed_transfer.py.")
  # A study may import its neighbours (cross_domain.py takes strategy_ablation's strategies).
  folder = os.path.dirname(os.path.abspath(path))
  if folder not in sys.path:
    sys.path.insert(0, folder)
  module = import_file(path, "jtl_study_" + os.path.basename(path)[:-3])
  study = getattr(module, "STUDY", None)
  if not isinstance(study, Study):
    raise ValueError(f"{path} declares no STUDY = jtl.sweep.Study(...).")
  return study
