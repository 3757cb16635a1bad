r"""Source run: train a ResNet on the source task and leave a checkpoint for transfer.

  ./launch.sh configs/source.py --workdir runs/source

Default: small-stem ResNet-18 (width 0.25) on Fashion-MNIST classes 0-4 (T-shirt,
Trouser, Pullover, Dress, Coat), 28 px, 500 steps of batch 128 on CPU; expect
about 0.92 test accuracy on those five classes (0.922 here, 175 s on 2 cores).

Arguments (config string after ":"), e.g. `configs/source.py:model=resnet50,dataset=digits,size=32`:
  model, dataset (jtl or TFDS name, or folder:PATH), classes ("0-4", "1+3", "all";
  "auto": 0-4 on fashion_mnist, all on any other dataset), val (validation: a count per
  class, a fraction of each class, or 0; "auto": 100 per class, 0.1 on a folder:PATH),
  small_stem, width, size (pixels; "auto": 28 on fashion_mnist and digits, a folder's
  typical image side up to 224, 224 on a TFDS dataset), channels (1 or 3; "auto": 3, or 1
  on a folder of grayscale images), steps, batch.
A folder:PATH holding only class folders gets a test split carved from each class
(data.test_fraction, 0.2).
"""

from jtl.config import base_config, dataset_defaults, image_args, parse_arg


# The arguments this config takes, with their defaults (`CONFIG --help` lists them).
ARGS = dict(model="resnet18", dataset="fashion_mnist", classes="auto", val="auto",
            small_stem=True, width=0.25, size="auto", channels="auto", steps=500, batch=128)


def get_config(arg=None):
  a = parse_arg(arg, **ARGS)
  c = base_config()
  c.model.name, c.model.small_stem, c.model.width = a["model"], a["small_stem"], a["width"]
  c.data.name = a["dataset"]
  c.data.update(dataset_defaults(a["dataset"], a["classes"], a["val"], "0-4", 100))
  size, channels = image_args(a["dataset"], a["size"], a["channels"])
  if size is None or channels is None:
    from jtl.data import image_shape   # Reads image headers, only when the data must say.
    auto = image_shape(a["dataset"])
    size, channels = size or auto[0], channels or auto[1]
  c.data.image_size, c.data.channels = size, channels
  c.data.batch_size = a["batch"]
  c.total_steps = a["steps"]
  c.eval_every = 200
  c.checkpoint_every = 200
  c.optim.lr, c.optim.warmup_steps = 0.1, 50
  return c
