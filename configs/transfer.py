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
  size (pixels; "auto": 28 on fashion_mnist and digits, a folder's typical image side up
  to 224, 224 on a TFDS dataset), channels (1 or 3; "auto": the init checkpoint's, else as
  configs/source.py picks), steps, batch, lr.
"""

import json
import os

from jtl.config import base_config, dataset_defaults, image_args, parse_arg


# The arguments this config takes, with their defaults (`CONFIG --help` lists them).
ARGS = dict(init="runs/seed_transfer/source/seed=0", model="resnet18", dataset="fashion_mnist",
            classes="auto", val="auto", shots=10, strategy="full_finetune", small_stem=True,
            width=0.25, size="auto", channels="auto", steps=200, batch=50, lr=0.01)


def get_config(arg=None):
  a = parse_arg(arg, **ARGS)
  c = base_config()
  c.model.name, c.model.small_stem, c.model.width = a["model"], a["small_stem"], a["width"]
  c.data.name = a["dataset"]
  c.data.update(dataset_defaults(a["dataset"], a["classes"], a["val"], "5-9", 20))
  c.data.shots = a["shots"] or None
  size, channels = image_args(a["dataset"], a["size"], a["channels"])
  if a["channels"] == "auto" and a["strategy"] != "scratch":
    channels = _checkpoint_channels(a["init"]) or channels   # The stem must fit the source.
  if size is None or channels is None:
    from jtl.data import image_shape   # Reads image headers, only when the data must say.
    auto = image_shape(a["dataset"])
    size, channels = size or auto[0], channels or auto[1]
  c.data.image_size, c.data.channels = size, channels
  c.data.batch_size = a["batch"]
  c.strategy.name = a["strategy"]
  # The seed's `pretrained=False`: the same target training from a random init.
  c.init = "" if a["strategy"] == "scratch" else a["init"]
  c.total_steps = a["steps"]
  c.eval_every = 50
  c.checkpoint_every = 100
  c.optim.lr, c.optim.warmup_steps = a["lr"], 10
  return c


def _checkpoint_channels(init: str) -> int | None:
  """The image channels a jtl checkpoint was trained on (its model.json); None for another
  format or a checkpoint not there yet (a sweep's source stage)."""
  if not init:
    return None
  try:
    with open(os.path.join(init, "model.json")) as f:
      return int(json.load(f)["data"]["channels"])
  except (OSError, ValueError, KeyError, TypeError):
    return None
