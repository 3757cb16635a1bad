r"""A study's cells on a SLURM cluster: one job array per stage, one cell per task.

  jtl sweep experiments/strategy_ablation.py --workdir /shared/runs/sa --slurm --sbatch="-p cpu -t 60"

Each call submits the unfinished cells that can run now: those of the first stage that has
any, since a later stage's cells start from this one's checkpoints or take their lrs from
its results (`sweep.Tuned`). Every task runs its cell's `./launch.sh ...` line (the same as
`--print_commands`) in the shared workdir; tasks never write results.jsonl. Call it again
when the array has finished: it collects the finished cells' rows into results.jsonl (in
the cells' order, one writer) and submits the next stage. Cells already submitted are not
submitted again while their array is listed in `DIR/slurm/submitted.json`, unless
--resubmit (say, after a task failed).

>>> script("/runs/x/slurm/tune.cmds", 12, "/home/me", "/runs/x/slurm")   # doctest: +ELLIPSIS
'#!/bin/bash\n#SBATCH --array=0-11\n...'
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from typing import Sequence

from jtl import sweep
from jtl.results import read_results

SUBMITTED = "submitted.json"


def script(commands_file: str, n: int, cwd: str, log_dir: str) -> str:
  """The sbatch script of an array of `n` tasks, task i running line i+1 of commands_file."""
  return "\n".join([
      "#!/bin/bash",
      f"#SBATCH --array=0-{n - 1}",
      f"#SBATCH --output={log_dir}/%A_%a.out",
      "set -euo pipefail",
      f"cd {shlex.quote(cwd)}",
      f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(commands_file)})',
      'echo "jtl cell: $line"',
      'eval "$line"', ""])


def collect(study: sweep.Study, root: str) -> int:
  """Appends the rows of finished cells not yet in results.jsonl, in the cells' order;
  returns how many it added."""
  recorded = {(r["stage"], r["cell"]) for r in read_results(root)}
  return sum(sweep.record(root, cell, recorded) for cell in sweep.cells(study, root)
             if cell.finished)


def submit(study: sweep.Study, root: str, sbatch_options: Sequence[str] = (),
           resubmit: bool = False, log=print) -> str | None:
  """Collects finished cells, then submits the next runnable stage's unfinished cells as one
  job array; returns the job id (None when nothing could be submitted)."""
  checked = sweep.validate(study, root)
  os.makedirs(root, exist_ok=True)
  sweep.write_study_json(study, root, sys.argv)
  added = collect(study, root)
  if added:
    log(f"collected {added} finished cell(s) into {os.path.join(root, sweep.RESULTS)}")
  slurm_dir = os.path.join(os.path.abspath(root), "slurm")
  os.makedirs(slurm_dir, exist_ok=True)
  submitted_path = os.path.join(slurm_dir, SUBMITTED)
  submitted = {}
  if os.path.exists(submitted_path):
    with open(submitted_path) as f:
      submitted = json.load(f)
  todo = [c for c, _ in checked if not c.finished]
  if not todo:
    log(f"all {len(checked)} cells of study {study.name} are finished in {root}.")
    return None
  stage = todo[0].stage
  ready = [c for c in todo if c.stage == stage and not c.pending]
  waiting = [c for c in ready if c.workdir in submitted and not resubmit]
  ready = [c for c in ready if c not in waiting]
  if not ready:
    log(f"the {len(waiting)} unfinished cell(s) of stage {stage!r} are submitted already "
        f"(job {', '.join(sorted({submitted[c.workdir] for c in waiting}))}); call again when "
        "they have finished, or pass --resubmit.")
    return None
  commands_file = os.path.join(slurm_dir, f"{stage}.cmds")
  launch = shlex.quote(os.path.join(sweep.ROOT, "launch.sh"))
  with open(commands_file, "w") as f:
    f.writelines(sweep.command(c).replace("./launch.sh", launch, 1) + "\n" for c in ready)
  script_file = os.path.join(slurm_dir, f"{stage}.sbatch")
  with open(script_file, "w") as f:
    f.write(script(commands_file, len(ready), os.getcwd(), slurm_dir))
  name = f"--job-name=jtl-{study.name}-{stage}"
  try:
    out = subprocess.run(["sbatch", name, *sbatch_options, script_file], text=True,
                         capture_output=True)
  except FileNotFoundError:
    raise FileNotFoundError("--slurm submits through SLURM's sbatch, which is not on PATH here; "
                            "run it on the cluster's login node, or drop --slurm.") from None
  if out.returncode:
    raise RuntimeError(f"sbatch {script_file} failed ({out.returncode}): "
                       f"{(out.stderr or out.stdout).strip()}")
  found = re.search(r"(\d+)", out.stdout)
  job = found.group(1) if found else out.stdout.strip()
  submitted |= {c.workdir: job for c in ready}
  with open(submitted_path, "w") as f:
    json.dump(submitted, f, indent=1)
  later = len(todo) - len(ready) - len(waiting)
  log(f"submitted job array {job}: {len(ready)} cell(s) of stage {stage!r} ({script_file}); "
      + (f"{later} cell(s) of later stages wait: call this again when it has finished."
         if later else "call this again when it has finished to collect the results."))
  return job
