r"""How the gap to training from scratch changes with the amount of target data.

  ./launch.sh experiments/strategy_ablation.py     # budget: ~40 min on 2 idle CPU cores
  ./launch.sh report runs/strategy_ablation

Fashion-MNIST classes 0-4 (source, trained once) -> classes 5-9 (target), shots per
class in {1, 5, 10, 50, 500} x {scratch, linear_probe, partial:2, full_finetune,
lp_ft, l2_sp} x 3 seeds. l2_sp is full fine-tuning plus the L2-SP penalty toward
the source weights (reg.l2_sp = 0.01). Steps and batch grow with the data (SCHEDULE);
each strategy keeps one learning rate (the main study's pilot choice on validation;
lp_ft and l2_sp take full_finetune's). A seed fixes the data draw for every strategy,
so differences against scratch are paired.

For a cloud run, change values, not code: e.g. `init` to hf:/data/resnet-50 with
model "auto", size 224, more SEEDS, and shots up to the full dataset.
"""

import sys

from jtl import cli, sweep

SEEDS = 3
SOURCE = "{root}/source/run"
STRATEGIES = {
    "scratch": {"strategy.name": "scratch", "optim.lr": 0.01, "init": ""},
    "linear_probe": {"strategy.name": "linear_probe", "optim.lr": 0.3, "init": SOURCE},
    "partial:2": {"strategy.name": "partial:2", "optim.lr": 0.1, "init": SOURCE},
    "full_finetune": {"strategy.name": "full_finetune", "optim.lr": 0.03, "init": SOURCE},
    "lp_ft": {"strategy.name": "lp_ft", "optim.lr": 0.03, "init": SOURCE},
    "l2_sp": {"strategy.name": "full_finetune", "reg.l2_sp": 0.01, "optim.lr": 0.03,
              "init": SOURCE},
}
# shots per class -> (steps, batch): about 100 epochs at few shots, 12 at 500 shots.
SCHEDULE = {1: (60, 5), 5: (100, 25), 10: (100, 50), 50: (200, 50), 500: (600, 50)}

STUDY = sweep.Study(
    name="strategy_ablation",
    budget="about 40 minutes on 2 idle CPU cores (AMD Zen 5); measured 60 min with the test "
           "suite running beside it",
    stages=(
        sweep.Stage("source", "configs/source.py", fixed={"progress": False}),
        sweep.Stage("target", "configs/transfer.py",
                    grid=sweep.product(sweep.schedule(SCHEDULE),
                                       sweep.options("strategy", STRATEGIES), sweep.seeds(SEEDS)),
                    fixed={"progress": False, "checkpoint_every": 200}),
    ),
    report=sweep.Report(
        stage="target", compare="strategy", baseline="scratch", by=("shots",), x="shots",
        title="Fashion-MNIST 0-4 -> 5-9: accuracy against shots per class",
        notes="Source trained once on classes 0-4 (its training noise is not inside the "
              "intervals). Steps and batch per shots: " + ", ".join(
                  f"{k} shots {s} steps x {b}" for k, (s, b) in SCHEDULE.items()) + "."),
)

if __name__ == "__main__":
  sys.exit(cli.run_study(STUDY))
