"""Config files: the argument-string parser, the base config, and the one loader.

Config files under configs/ are `get_config(arg)` functions; `arg` is a short
string such as "model=resnet18,dataset=fashion_mnist". A config file declares the
arguments it takes, with their defaults, as a module-level `ARGS = dict(...)` and
parses with `parse_arg(arg, **ARGS)`; `CONFIG --help` lists them from there.

>>> parse_arg("model=resnet50,shots=10", model="resnet18", shots=0, dataset="digits")
{'model': 'resnet50', 'shots': 10, 'dataset': 'digits'}
"""

from __future__ import annotations

import importlib.util
import os
import re

import ml_collections


def parse_arg(arg: str | None, **defaults) -> dict:
  """Parses "k=v,k2=v2" into a dict, typed like `defaults`; unknown keys are refused."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; this config takes "
                       f"{', '.join(sorted(defaults))}.")
    default = defaults[key]
    try:
      out[key] = _typed(value, default) if sep else _typed("true", default)
    except ValueError:
      kind = {bool: "true or false", int: "an integer", float: "a number"}[type(default)]
      raise ValueError(f"config argument {key}={value!r} must be {kind}.") from None
  return out


def _typed(value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("", "1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(value)
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def check(c) -> None:
  """Refuses values no run can use, naming the field: call before any work is done.

  >>> c = base_config(); c.optim.lr = -0.1; check(c)
  Traceback (most recent call last):
  ValueError: config field optim.lr=-0.1 must be > 0.
  """
  # total_steps=0 evaluates config.init as it is (with adapt.adabn: AdaBN with no training).
  if c.total_steps == 0 and not c.init:
    raise ValueError("config field total_steps=0 evaluates a checkpoint without training, and "
                     "config.init names none; set init or total_steps > 0.")
  positive = {"optim.lr": c.optim.lr, "total_steps": c.total_steps or 1,
              "data.batch_size": c.data.batch_size, "data.eval_batch_size": c.data.eval_batch_size,
              "data.image_size": c.data.image_size, "checkpoint_every": c.checkpoint_every,
              "log_every": c.log_every, "optim.accum_steps": c.optim.accum_steps}
  if c.data.shots is not None:
    positive["data.shots"] = c.data.shots
  for field, value in positive.items():
    if not value > 0:
      raise ValueError(f"config field {field}={value!r} must be > 0.")
  for field, value in {"eval_every": c.eval_every, "data.val_per_class": c.data.val_per_class,
                       "optim.weight_decay": c.optim.weight_decay,
                       "optim.warmup_steps": c.optim.warmup_steps}.items():
    if value < 0:
      raise ValueError(f"config field {field}={value!r} must be >= 0.")
  for field in ("val_fraction", "test_fraction"):
    value = c.data[field]
    if value is not None and not 0 < value < 1:
      raise ValueError(f"config field data.{field}={value!r} must be between 0 and 1 "
                       "(a fraction of each class), or None.")
  if c.data.val_per_class and c.data.val_fraction:
    raise ValueError(f"config fields data.val_per_class={c.data.val_per_class} and "
                     f"data.val_fraction={c.data.val_fraction} both carve validation; set "
                     "data.val_per_class=0 or data.val_fraction=None.")
  if c.data.batch_size % c.optim.accum_steps:
    raise ValueError(f"config field data.batch_size={c.data.batch_size} must be divisible by "
                     f"optim.accum_steps={c.optim.accum_steps}.")
  if c.adapt.method not in ADAPT_METHODS:
    raise ValueError(f"config field adapt.method={c.adapt.method!r}; expected one of "
                     f"{', '.join(ADAPT_METHODS)}.")
  if c.adapt.method != "none" and not c.adapt.target:
    raise ValueError(f"config field adapt.method={c.adapt.method!r} needs unlabeled target "
                     "images: set adapt.target to a dataset (e.g. fashion_mnist+shift:invert:1).")
  if c.adapt.get("adabn") and not c.adapt.target:
    raise ValueError("config field adapt.adabn=True recomputes BatchNorm statistics on unlabeled "
                     "target images: set adapt.target to a dataset (e.g. "
                     "fashion_mnist+shift:blur:5).")
  if c.adapt.method in SOURCE_FREE_METHODS:
    if not c.init or any(re.fullmatch(p, "head/kernel") for p in c.dont_load):
      raise ValueError(f"config field adapt.method={c.adapt.method!r} adapts a trained model with "
                       "its own classifier: set config.init to its checkpoint and "
                       "--config.dont_load='()' (the head is loaded, not re-initialized).")
  if min(c.adapt.weight, c.adapt.target_batch_size, c.adapt.target_val_per_class,
         c.adapt.target_pool) < 0:
    raise ValueError("config fields adapt.weight, adapt.target_batch_size, "
                     "adapt.target_val_per_class and adapt.target_pool must be >= 0.")
  if c.model.dtype not in DTYPES:
    raise ValueError(f"config field model.dtype={c.model.dtype!r}; expected one of "
                     f"{', '.join(DTYPES)}.")


def doubts(c) -> list[str]:
  """Settings a run can use but that are probably not meant, one sentence each naming the
  fields; the trainer and the dry run say them before any work.

  >>> c = base_config(); c.total_steps, c.optim.warmup_steps = 20, 50; doubts(c)[0][:46]
  'config field optim.warmup_steps=50 is more tha'
  """
  out = []
  warmup, steps = c.optim.warmup_steps, c.total_steps
  if warmup > steps > 0:
    out.append(f"config field optim.warmup_steps={warmup} is more than total_steps={steps}: "
               f"the lr rises for the whole run and never reaches optim.lr={c.optim.lr} (it "
               f"ends at {c.optim.lr * steps / warmup:.3g}); lower optim.warmup_steps or raise "
               "total_steps.")
  return out


DTYPES = ("float32", "bfloat16", "float16")
# Domain adaptation's methods (jtl/adapt.py implements them; named here so that checking a
# config needs no JAX). The source-free ones train on target images alone.
SOURCE_FREE_METHODS = ("tent", "shot_im")
ADAPT_METHODS = ("none", "dann", "cdan", "coral", "mmd", "tent", "shot_im")


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every run; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.log_every = 50
  c.eval_every = 250        # Validation accuracy every N steps (0: only at the end).
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.progress = True         # tqdm progress bars.
  # Fields allowed to differ when a workdir's run is resumed, e.g. ("total_steps",);
  # any other change is refused (jtl/workdir.py).
  c.allow_changed = ml_collections.FieldReference((), field_type=tuple)

  # name="auto" takes name, small_stem and width from the source checkpoint (config.init).
  # dtype: the compute dtype. "bfloat16" runs convolutions and matmuls in bf16 (GPU/TPU
  # tensor cores) while parameters, optimizer state, BatchNorm statistics and the loss stay
  # float32 (the master weights).
  c.model = ml_collections.ConfigDict(dict(
      name="resnet18", small_stem=False, width=1.0, dtype="float32"))

  c.data = ml_collections.ConfigDict(dict(
      name="fashion_mnist", data_dir=ml_collections.FieldReference(None, field_type=str),
      classes=ml_collections.FieldReference(None, field_type=tuple),
      shots=ml_collections.FieldReference(None, field_type=int),
      val_per_class=0, skip_corrupt=False,
      # Validation as a fraction of each train class instead of a count (val_per_class=0).
      val_fraction=ml_collections.FieldReference(None, field_type=float),
      # A folder:PATH without train/ and test/: this fraction of each class is the test split,
      # carved with a fixed seed (jtl/data/folder.py); None refuses such a folder's test split.
      test_fraction=ml_collections.FieldReference(0.2, field_type=float),
      image_size=224, channels=3, augment=True, batch_size=128, eval_batch_size=256,
      # More test sets, scored at the end as summary["test_accuracy@NAME"]: datasets over the
      # same classes, e.g. ("fashion_mnist+shift:blur:3",) for out-of-distribution accuracy.
      extra_test=(),
      # A frozen prefix (linear_probe, partial:N) on un-augmented images is computed once and
      # cached: "auto", "never", or "no_augment" (cache it, dropping augmentation).
      cache_prefix="auto",
      # Normalization of uint8 images on device: x/255 - mean) / std. None takes the
      # source checkpoint's constants when transferring, else 0.5 / 0.5.
      mean=ml_collections.FieldReference(None, field_type=tuple),
      std=ml_collections.FieldReference(None, field_type=tuple)))

  # Where the source weights come from: a jtl workdir, a Hugging Face folder or hub id,
  # a torchvision .pth, a BiT .npz (auto-detected, or prefixed hf:, torchvision:, bit:,
  # orbax:), or "" to start from scratch.
  c.init = ""
  c.dont_load = ("head/.*",)   # Re-initialized on transfer instead of loaded.
  # The seed of the random init (new head, re-initialized layers); None: config.seed. A
  # transfer from a model trained with the same seed would otherwise re-draw exactly that
  # model's own initial weights (Yosinski's BnB re-initializes independently).
  c.init_seed = ml_collections.FieldReference(None, field_type=int)
  c.zero_head = False          # Zero the re-initialized head (as BiT does).

  # A preset name (see jtl/strategy.py) or explicit rules; the preset's knobs below.
  c.strategy = ml_collections.ConfigDict(dict(
      name="full_finetune",
      rules=ml_collections.FieldReference(None, field_type=tuple),  # ((regex, label), ...)
      bn="auto",             # "auto": a stage's BatchNorm trains iff the stage does.
      lr_decay=0.5,          # discriminative: lr x lr_decay per stage below the head.
      unfreeze_every=0,      # gradual_unfreeze: steps per stage (0: total_steps / 6).
      lp_steps=0,            # lp_ft: linear-probe steps (0: total_steps / 2).
      lp_lr_mult=1.0,        # lp_ft: lr multiplier of the linear-probe phase.
      ft_lr_mult=0.1,        # lp_ft: lr multiplier of the fine-tuning phase.
      ft_bn="auto",          # lp_ft: BatchNorm once everything trains: "auto" or "frozen".
      lr_mult=ml_collections.ConfigDict(),   # label -> lr multiplier (overrides the preset's).
      labels=ml_collections.ConfigDict()))   # label -> {weight_decay, schedule} overrides.

  # Penalties (jtl/regularizers.py); 0 turns a term off.
  c.reg = ml_collections.ConfigDict(dict(
      l1=0.0, l2=0.0, labels=ml_collections.FieldReference(None, field_type=tuple),
      l2_sp=0.0, l2_sp_beta=0.0, delta=0.0, bss=0.0, bss_k=1))

  c.optim = ml_collections.ConfigDict(dict(
      name="momentum", lr=0.1, momentum=0.9, weight_decay=5e-4, decay_all=False, clip_norm=0.0,
      schedule="warmup_cosine", warmup_steps=50,
      # Gradient accumulation: each step averages the gradients of accum_steps micro-batches
      # of data.batch_size / accum_steps examples (a large effective batch in less memory).
      accum_steps=1))

  c.loss = ml_collections.ConfigDict(dict(name="xent", label_smoothing=0.0))

  # Domain adaptation (jtl/adapt.py). With a target, the run's test accuracy is measured on
  # the target's test split; its labels are never read in training.
  c.adapt = ml_collections.ConfigDict(dict(
      target="",             # Unlabeled target images: a dataset name, e.g. fashion_mnist+shift:invert:1.
      # none (source only), dann, cdan, coral, mmd; source-free (no labeled images): tent, shot_im.
      method="none",
      # AdaBN: before the final evaluation, every BatchNorm's statistics are recomputed on the
      # target's unlabeled train images (exact population mean and variance); any method.
      adabn=False,
      weight=1.0,            # The term's coefficient.
      target_batch_size=0,   # Unlabeled images per step (0: data.batch_size).
      target_val_per_class=0,   # Labeled target images per class carved off for validation.
      # Unlabeled target train images in the pool (0: all): what AdaBN's statistics and the
      # label-free scores pass over, and what a method draws its target batches from.
      target_pool=0,
      hidden=256,            # dann / cdan: width of the domain head's two hidden layers.
      gamma=10.0,            # dann / cdan: steepness of the reversal weight's rise.
      mmd_bandwidths=(0.25, 0.5, 1.0, 2.0, 4.0)))   # mmd: kernel widths x mean sq. distance.
  return c


# ---------------------------------------------------------------------------
# Loading a config file: the one place a `path[:arg]` becomes a ConfigDict (jtl.main,
# `CONFIG --help`, sweeps and studies all come here).
# ---------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_file(path: str, name: str):
  """The Python file at `path`, executed as a module named `name` (not added to sys.modules)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_module(path: str):
  """A config file's module, the path found relative to the working directory or the repo.

  >>> load_module("configs/transfer.py").ARGS["strategy"]
  'full_finetune'
  """
  found = next((p for p in (path, os.path.join(ROOT, path)) if os.path.isfile(p)), None)
  if found is None:
    places = " and ".join(dict.fromkeys([os.getcwd(), ROOT]))
    raise FileNotFoundError(f"config file {path} does not exist (looked in {places}); expected "
                            "e.g. configs/transfer.py[:ARGS].")
  return import_file(found, "jtl_config_" + os.path.splitext(os.path.basename(path))[0])


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path[:arg]` -> the file's `get_config(arg)`; the arg string may hold colons itself.

  >>> load_config("configs/transfer.py:shots=5,strategy=partial:2").strategy.name
  'partial:2'
  """
  path, _, arg = spec.partition(":")
  return load_module(path).get_config(arg or None)


def first_line(e: BaseException) -> str:
  """The first line of an error's message (a KeyError's without its quotes)."""
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return (text.strip().splitlines() or [type(e).__name__])[0]


MAIN_DATASET = "fashion_mnist"   # The main study's dataset: its configs split its classes.
# The image size and channels of the datasets jtl names itself, as every shipped study ran
# them: Fashion-MNIST's 28 px, and the 8x8 digits upsampled to 28 px, in 3 channels.
IMAGE_SHAPES = {"fashion_mnist": (28, 3), "digits": (28, 3)}


def image_args(dataset: str, size: str, channels: str) -> tuple[int | None, int | None]:
  """A config argument string's `size` and `channels` as numbers. "auto" is the dataset's
  own (IMAGE_SHAPES), or None where the data must be read (jtl.data.image_shape: an image
  folder, a TFDS dataset).

  >>> image_args("fashion_mnist", "auto", "auto"), image_args("folder:x", "32", "auto")
  ((28, 3), (32, None))
  """
  known = IMAGE_SHAPES.get(dataset.split("+shift:")[0], (None, None))
  out = []
  for name, value, auto, allowed in (("size", size, known[0], None),
                                     ("channels", channels, known[1], (1, 3))):
    if str(value) == "auto":
      out.append(auto)
      continue
    try:
      number = int(value)
    except ValueError:
      number = 0
    if number <= 0 or allowed and number not in allowed:
      raise ValueError(f"config argument {name}={value!r} must be "
                       + ("1 or 3" if allowed else "a positive number of pixels") + ", or auto.")
    out.append(number)
  return out[0], out[1]



def dataset_defaults(dataset: str, classes: str, val: str, main_classes: str,
                     main_val: int) -> dict:
  """The data fields of a config argument string's `classes` and `val`, where "auto" picks
  for the dataset: the main study's class subset on MAIN_DATASET, every class on any other;
  `main_val` examples per class for validation, but 10 % of each class on an image folder
  (its classes may be few and small).

  >>> dataset_defaults("folder:x", "auto", "auto", "0-4", 100)
  {'classes': None, 'val_per_class': 0, 'val_fraction': 0.1}
  >>> dataset_defaults("fashion_mnist", "auto", "20", "5-9", 100)["val_per_class"]
  20
  """
  if classes == "auto":
    classes = main_classes if dataset == MAIN_DATASET else "all"
  if val == "auto":
    folder = dataset.startswith("folder:") or os.path.isdir(dataset.split("+shift:")[0])
    val = "0.1" if folder else str(main_val)
  try:
    number = float(val)
  except ValueError:
    raise ValueError(f"config argument val={val!r} must be a count per class (e.g. 100), "
                     "a fraction of each class (e.g. 0.1), 0, or auto.") from None
  fraction = 0 < number < 1
  if number < 0 or not fraction and number != int(number):
    raise ValueError(f"config argument val={val!r} must be a count per class (e.g. 100), "
                     "a fraction of each class (e.g. 0.1), 0, or auto.")
  return {"classes": parse_classes(classes), "val_per_class": 0 if fraction else int(number),
          "val_fraction": number if fraction else None}


def parse_classes(spec: str) -> tuple[int, ...] | None:
  """"0-4" -> (0, 1, 2, 3, 4); "1+3+7-9" -> (1, 3, 7, 8, 9); "all" or "" -> None."""
  if spec in ("", "all"):
    return None
  out = []
  for part in spec.split("+"):
    lo, _, hi = part.partition("-")
    out.extend(range(int(lo), int(hi or lo) + 1))
  return tuple(out)
