r"""Yosinski et al. 2014 (Figure 2) in miniature: how transferable is each depth?

  ./launch.sh experiments/transferability.py       # budget: ~31 min on 2 CPU cores
  ./launch.sh report runs/transferability

A = a source model trained on Fashion-MNIST classes 0-4 (once); B = base models
trained on the target task itself, classes 5-9 with 50 labelled images per class
(one per seed; "base" below). For each cut n in {stem, stage1, ..., stage4}, the
first n stages are copied from A (AnB) or from B (BnB), the rest is re-initialized
(head included) and trained on the target, with the copied stages frozen (AnB, BnB)
or fine-tuned too (AnB+, BnB+). The paper found: BnB dips at middle layers
(co-adapted features split apart); BnB+ recovers the base; AnB falls with depth
(features grow specific to A); AnB+ is at or above the base.

Paired by seed: seed s uses base model B_s, the same 50-shot draw for every
kind and cut, and the same source A. The source's training noise is not inside
the intervals.
"""

import sys

from jtl import cli, sweep

SEEDS = 3
CUTS = ("stem", "stage1", "stage2", "stage3", "stage4")
ORDER = CUTS + ("head",)
SOURCE, BASE = "{root}/source/run", "{root}/base/seed={seed}"
KINDS = {
    "AnB": {"strategy.name": "freeze_through:{cut}", "init": SOURCE},
    "AnB+": {"strategy.name": "full_finetune", "init": SOURCE},
    "BnB": {"strategy.name": "freeze_through:{cut}", "init": BASE},
    "BnB+": {"strategy.name": "full_finetune", "init": BASE},
}
# Copy the stages up to the cut; re-initialize every stage after it and the head.
COPY = {cut: {"dont_load": tuple(f"{s}/.*" for s in ORDER[i + 1:])} for i, cut in enumerate(CUTS)}
TARGET = "configs/transfer.py:shots=50,batch=50,steps=150,lr=0.03"

STUDY = sweep.Study(
    name="transferability",
    budget="31 minutes on 2 CPU cores (AMD Zen 5), as measured",
    stages=(
        sweep.Stage("source", "configs/source.py", fixed={"progress": False}),
        sweep.Stage("base", TARGET, grid=sweep.seeds(SEEDS),
                    fixed={"strategy.name": "scratch", "init": "", "progress": False}),
        sweep.Stage("transfer", TARGET,
                    grid=sweep.product(sweep.options("cut", COPY), sweep.options("kind", KINDS),
                                       sweep.seeds(SEEDS)),
                    fixed={"progress": False}),
    ),
    report=sweep.Report(
        stage="transfer", compare="kind", by=("cut",), x="cut", reference="base",
        title="Transferability by depth (Yosinski et al. 2014, in miniature)",
        notes="Target: Fashion-MNIST classes 5-9, 50 shots per class, 150 steps of batch 50, "
              "lr 0.03. `base` is B: the target task trained from scratch with the same "
              "recipe. Differences are against base on the same seed."),
)

if __name__ == "__main__":
  sys.exit(cli.run_study(STUDY))
