r"""Tiny run: the smallest real run, for tests, fault drills and smoke checks.

  ./launch.sh configs/tiny.py --workdir runs/tiny

Default: small-stem ResNet-18 of width 1/8 on scikit-learn's 8x8 digits, classes 0-4, one
channel, no augmentation; 8 steps of batch 16, a metrics row every step, a checkpoint every
4, no validation. It checks that the machinery works and measures nothing: expect test
accuracy near chance, and about 10 s on 2 cores, nearly all of it start-up and compile.
The tests build every tiny run on it (tests/test_train.py `tiny_config(**overrides)`), and
so does the fault harness (experiments/faults.py).

Arguments, e.g. `configs/tiny.py:classes=0-2,shots=5,steps=4`:
  dataset, classes ("0-4", "1+3", "all"), shots (0 = all), size (pixels), width, steps, batch.
"""

from jtl.config import base_config, parse_arg, parse_classes


# The arguments this config takes, with their defaults (`CONFIG --help` lists them).
ARGS = dict(dataset="digits", classes="0-4", shots=0, size=8, width=0.125, steps=8, batch=16)


def get_config(arg=None):
  a = parse_arg(arg, **ARGS)
  c = base_config()
  c.model.small_stem, c.model.width = True, a["width"]
  c.data.name, c.data.image_size, c.data.channels = a["dataset"], a["size"], 1
  c.data.classes = parse_classes(a["classes"])
  c.data.shots = a["shots"] or None
  c.data.batch_size, c.data.eval_batch_size = a["batch"], 64
  c.data.augment = False
  c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = a["steps"], 1, 0, 4
  c.optim.warmup_steps = 0
  c.progress = False
  return c
