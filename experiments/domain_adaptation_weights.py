r"""The domain-adaptation study's weights, chosen on labeled target validation (never test).

  ./launch.sh experiments/domain_adaptation_weights.py   # budget: see STUDY.budget

The recipe of experiments/domain_adaptation.py for DANN, CORAL and MMD at the weights
below on each shift, on seed 100 (kept apart from that study's seeds 0-2). Each cell
carves 10 labeled images per class off the target's train split; the report picks, per
method and shift, the weight with the best accuracy on them, and domain_adaptation.py
fixes those in WEIGHTS. One seed: this study chooses, it does not compare.

The committed experiments/domain_adaptation_weights/RESULTS.md was made by this file with
its source stage filled by a copy of runs/domain_adaptation/source/run (the same command,
configs/source.py:classes=all, run once for both studies). Three choices sit at the edge of
the grid (CORAL 100 on invert and noise5, MMD 10 on invert and blur5): a wider grid may
find more.
"""

import sys

from jtl import cli, sweep

from domain_adaptation import BASE, FIXED, cells

WEIGHTS = {"dann": [0.1, 0.3, 1.0], "coral": [1.0, 10.0, 100.0], "mmd": [0.1, 1.0, 10.0]}

STUDY = sweep.Study(
    name="domain_adaptation_weights",
    budget="30 min for 30 cells, measured on 2 CPU cores (AMD Zen 5) shared with a test suite",
    stages=(
        sweep.Stage("source", "configs/source.py:classes=all", fixed={"progress": False}),
        sweep.Stage("adapt", BASE, grid=cells([100], WEIGHTS), fixed=FIXED),
    ),
    report=sweep.Report(
        stage="adapt", compare="method", select="weight", select_on="target_val_accuracy",
        by=("shift",), columns=("source_test_accuracy",),
        title="Domain adaptation weights, chosen on target validation (seed 100)"),
)

if __name__ == "__main__":
  sys.exit(cli.run_study(STUDY))
