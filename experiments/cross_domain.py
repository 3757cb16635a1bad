r"""Across domains: Fashion-MNIST (all 10 classes) -> scikit-learn's 8x8 digits, at few shots.

  ./launch.sh experiments/cross_domain.py          # budget: ~20 min on 2 CPU cores (19 measured)
  ./launch.sh report runs/cross_domain

The source learns clothing; the target is handwritten digits, upsampled from 8x8 to
28x28 (bilinear), so little beyond low-level filters should carry over. Strategies
and seeds as in strategy_ablation.py, at 1, 5 and 10 shots per class; test
accuracy on scikit-learn's held-out digits (360 images, so each cell's accuracy
has a binomial sd of about 2 points; pairing by seed cancels part of it).
"""

import sys

from jtl import cli, sweep

from strategy_ablation import SEEDS, STRATEGIES  # The same strategies, lrs and seeds.

SCHEDULE = {1: (60, 10), 5: (100, 50), 10: (100, 50)}   # shots -> (steps, batch)

STUDY = sweep.Study(
    name="cross_domain",
    budget="about 20 minutes on 2 CPU cores (AMD Zen 5)",
    stages=(
        sweep.Stage("source", "configs/source.py:classes=all", fixed={"progress": False}),
        sweep.Stage("target", "configs/transfer.py:dataset=digits,classes=all",
                    grid=sweep.product(sweep.schedule(SCHEDULE),
                                       sweep.options("strategy", STRATEGIES), sweep.seeds(SEEDS)),
                    fixed={"progress": False, "data.val_per_class": 10}),
    ),
    report=sweep.Report(
        stage="target", compare="strategy", baseline="scratch", by=("shots",), x="shots",
        title="Fashion-MNIST (10 classes) -> digits 8x8, few shots",
        notes="Source trained once on all of Fashion-MNIST (its noise is not inside the "
              "intervals). Target: scikit-learn digits upsampled to 28 px, 10 validation images "
              "per class carved from train. Steps x batch per shots: " + ", ".join(
                  f"{k}: {s} x {b}" for k, (s, b) in SCHEDULE.items()) + "."),
)

if __name__ == "__main__":
  sys.exit(cli.run_study(STUDY))
