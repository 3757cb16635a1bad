r"""The main study's learning rates, chosen on validation accuracy (never test).

  ./launch.sh experiments/seed_transfer_lr.py      # ~7 min on 2 CPU cores

The target recipe of experiments/seed_transfer.py (5 shots, 100 steps of batch 25)
for each strategy at lr in {0.01, 0.03, 0.1, 0.3}, on seeds 100 and 101 (kept apart
from the main study's seeds 0-9). The report picks, per strategy, the lr with the
best mean validation accuracy; seed_transfer.py fixes those. Two seeds give wide
test intervals: this study chooses, it does not compare.

The committed experiments/seed_transfer_lr/RESULTS.md was made by this file under its
first name (seed_transfer_tune, run from /tmp), with its source stage filled by an
earlier run of configs/source.py's defaults on the same machine.
"""

import sys

from jtl import cli, sweep
STUDY = sweep.Study(
    name="seed_transfer_lr",
    stages=(
        sweep.Stage("source", "configs/source.py"),
        sweep.Stage("target", "configs/transfer.py:shots=5,batch=25,steps=100",
                    grid=sweep.product(
                        sweep.options("strategy", {s: {"strategy.name": s} for s in
                                                   ("linear_probe", "full_finetune", "scratch", "partial:2")}),
                        sweep.axis("optim.lr", [0.01, 0.03, 0.1, 0.3]),
                        sweep.seeds([100, 101])),
                    fixed={"init": "{root}/source/run", "progress": False}),
    ),
    report=sweep.Report(stage="target", compare="strategy", select="lr", baseline="scratch"))

if __name__ == "__main__":
  sys.exit(cli.run_study(STUDY))
