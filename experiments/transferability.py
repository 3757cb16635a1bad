r"""Yosinski et al. 2014 (Figure 2) in miniature: how transferable is each depth?

  ./launch.sh experiments/transferability.py       # 81 min wall beside other studies (see RESULTS.md)
  ./launch.sh report runs/transferability

A = a source model trained on Fashion-MNIST classes 0-4 (once); B = base models
trained on the target task itself, classes 5-9 with 20 labelled images per class
(one per seed; "base" below). For each cut n in {stage2, stage3, stage4}, the first n
stages are copied from A (AnB) or from B (BnB), the rest is re-initialized (head
included) and trained on the target, with the copied stages frozen (AnB, BnB) or
fine-tuned too (AnB+, BnB+). The paper found: BnB dips at middle layers (co-adapted
features split apart); BnB+ recovers the base; AnB falls with depth (features grow
specific to A); AnB+ is at or above the base.

As Yosinski ran it:
- The re-initialized upper layers are drawn from `init_seed` = 1000 + seed, never from
  B's own seed (else BnB would restart from exactly B's initial weights).
- Every arm's lr is chosen on validation accuracy in its own setting: the base's over
  its grid, and each (cut, kind)'s over its own, on tuning seeds 100-101 (with base
  models of their own) that are never reported. Frozen deep cuts train few parameters
  and take larger lrs, so their grids sit higher.

Paired by seed: seed s uses base model B_s, the same 20-shot draw for every kind and
cut, and the same source A. The source is trained once: its training noise is not
inside the intervals. To pay for the tuning, the earlier version's 50 shots and 150 steps
became 20 and 100, and its cuts after the stem and after stage1 (where almost everything
is re-initialized and the four kinds differed least) were dropped.
"""

import sys

from jtl import cli, sweep

SEEDS = tuple(range(4))      # Reported.
TUNE_SEEDS = (100, 101)      # Choose each lr; never reported.
CUTS = ("stage2", "stage3", "stage4")
ORDER = ("stem", "stage1", *CUTS, "head")
SOURCE = "{root}/source/run"
# Earlier passes chose the bottom of stage2's and stage3's grids (BnB; AnB at stage3, twice)
# and the top of stage4's (AnB), and BnB+ the bottom at stage4: each went further.
FROZEN_LRS = {"stage2": (0.01, 0.03, 0.1, 0.3), "stage3": (0.01, 0.03, 0.1, 0.3, 1.0),
              "stage4": (1.0, 3.0, 10.0, 30.0)}
TUNED_LRS = {"stage2": (0.003, 0.01, 0.03, 0.1), "stage3": (0.003, 0.01, 0.03, 0.1),
             "stage4": (0.001, 0.003, 0.01, 0.03, 0.1)}   # AnB+ and BnB+: everything trains.
BASE_LRS = (0.003, 0.01, 0.03, 0.1)


# Copy the stages up to the cut; re-initialize every stage after it and the head.
COPY = {cut: {"dont_load": tuple(f"{s}/.*" for s in ORDER[ORDER.index(cut) + 1:])}
        for cut in CUTS}
TARGET = "configs/transfer.py:shots=20,batch=25,steps=100,val=50"
FIXED = {"progress": False, "eval_every": 0}


def kinds(base_stage: str) -> dict:
  """The four kinds; BnB's B is this seed's model of `base_stage` at the base's chosen lr."""
  base = {"init": f"{{root}}/{base_stage}/seed={{seed}},lr={{base_lr}}",
          "label:base_lr": sweep.Tuned("base_tune", "lr")}
  return {"AnB": {"strategy.name": "freeze_through:{cut}", "init": SOURCE},
          "AnB+": {"strategy.name": "full_finetune", "init": SOURCE},
          "BnB": {"strategy.name": "freeze_through:{cut}", **base},
          "BnB+": {"strategy.name": "full_finetune", **base}}


def seeds(values):
  """Seeds whose re-initialized layers are drawn independently of B's (init_seed)."""
  return [sweep.Point({"seed": s}, {"seed": s, "init_seed": 1000 + s}) for s in values]


def lrs(cut: str, kind: str):
  return sweep.axis("optim.lr", (TUNED_LRS if kind.endswith("+") else FROZEN_LRS)[cut])


STUDY = sweep.Study(
    name="transferability",
    budget="81 min of wall time on 2 CPU cores (AMD EPYC Zen 4) beside other studies, 47 min of it training; not timed alone",
    stages=(
        sweep.Stage("source", "configs/source.py", fixed={"progress": False}),
        # B for the tuning seeds, over the base's lr grid; the base's lr is chosen here.
        sweep.Stage("base_tune", TARGET,
                    grid=sweep.product(seeds(TUNE_SEEDS), sweep.axis("optim.lr", BASE_LRS)),
                    fixed={**FIXED, "strategy.name": "scratch", "init": ""}),
        sweep.Stage("base", TARGET, grid=seeds(SEEDS),
                    fixed={**FIXED, "strategy.name": "scratch", "init": "",
                           "optim.lr": sweep.Tuned("base_tune", "lr")}),
        sweep.Stage("tune", TARGET,
                    grid=[p for cut in CUTS for kind, fields in kinds("base_tune").items()
                          for p in sweep.product(sweep.options("cut", {cut: COPY[cut]}),
                                                 sweep.options("kind", {kind: fields}),
                                                 lrs(cut, kind), seeds(TUNE_SEEDS))],
                    fixed=FIXED),
        sweep.Stage("transfer", TARGET,
                    grid=sweep.product(sweep.options("cut", COPY),
                                       sweep.options("kind", kinds("base")), seeds(SEEDS)),
                    fixed={**FIXED, "optim.lr": sweep.Tuned("tune", "lr")}),
    ),
    report=sweep.Report(
        stage="transfer", compare="kind", by=("cut",), x="cut", reference="base",
        select="lr", tune_stage="tune", margin=0.02,
        title="Transferability by depth (Yosinski et al. 2014, in miniature)",
        notes="Target: Fashion-MNIST classes 5-9, 20 shots per class, 100 steps of batch 25; "
              "test accuracy on the 5000 target test images. `base` is B: the target task "
              "trained from scratch, its lr chosen on validation (stage `base_tune`, seeds "
              "100-101). Re-initialized layers are drawn from init_seed = 1000 + seed, "
              "independent of B's. Each (cut, kind)'s lr is chosen on validation accuracy on "
              "tuning seeds 100-101, never reported. Differences are against base on the same "
              "seed; the source A is trained once (its noise is not inside the intervals)."),
)

if __name__ == "__main__":
  sys.exit(cli.run_study(STUDY))
