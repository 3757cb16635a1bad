r"""Transfer run: start from a source checkpoint, new head, train on the target task.

  ./launch.sh configs/transfer.py:strategy=linear_probe --workdir runs/linear_probe

Default: the source model that the main study (./launch.sh experiments/seed_transfer.py)
leaves in runs/seed_transfer/source/seed=0 (or train one: ./launch.sh configs/source.py
--workdir runs/source, then init=runs/source), target Fashion-MNIST classes 5-9
(Sandal, Shirt, Sneaker, Bag, Ankle boot) with 10 labelled images per class,
evaluated on the target's 5000 test images. One run is one seed: compare strategies
with a sweep over seeds (experiments/seed_transfer.py reports mean ± 95% CI).

Strategies (jtl/strategy.py): linear_probe, full_finetune, scratch (the seed's
pretrained=False baseline: the source is not loaded), partial:N, freeze_through:PATH,
surgical:STAGE, discriminative[:D], gradual_unfreeze[:EVERY], lp_ft[:STEPS], bitfit,
norm_only; or --config.strategy.rules. Add --dry_run to see what a strategy trains.

Arguments, e.g. `configs/transfer.py:init=runs/src,shots=5,strategy=full_finetune`:
  init (source: a jtl workdir, hf:PATH, torchvision:PATH, bit:PATH), model ("auto":
  the source's), dataset, classes ("auto": 5-9 on fashion_mnist, all on any other
  dataset), val (validation: a count per class, a fraction of each class, or 0; "auto":
  20 per class, 0.1 on a folder:PATH), shots (0 = all), strategy, small_stem, width,
  size, steps, batch, lr.
"""

from jtl.config import base_config, dataset_defaults, parse_arg


# The arguments this config takes, with their defaults (`CONFIG --help` lists them).
ARGS = dict(init="runs/seed_transfer/source/seed=0", model="resnet18", dataset="fashion_mnist",
            classes="auto", val="auto", shots=10, strategy="full_finetune", small_stem=True,
            width=0.25, size=28, steps=200, batch=50, lr=0.01)


def get_config(arg=None):
  a = parse_arg(arg, **ARGS)
  c = base_config()
  c.model.name, c.model.small_stem, c.model.width = a["model"], a["small_stem"], a["width"]
  c.data.name = a["dataset"]
  c.data.update(dataset_defaults(a["dataset"], a["classes"], a["val"], "5-9", 20))
  c.data.shots = a["shots"] or None
  c.data.image_size = a["size"]
  c.data.batch_size = a["batch"]
  c.strategy.name = a["strategy"]
  # The seed's `pretrained=False`: the same target training from a random init.
  c.init = "" if a["strategy"] == "scratch" else a["init"]
  c.total_steps = a["steps"]
  c.eval_every = 50
  c.checkpoint_every = 100
  c.optim.lr, c.optim.warmup_steps = a["lr"], 10
  return c
