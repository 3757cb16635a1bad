"""What a strategy does, before any training: `--dry_run` or `jtl strategy show CONFIG`.

The images per class in train / val / test as the run will carve them (class names,
shots, image size; labels are read, no image is decoded), then per phase and label:
parameter count, trainable fraction, learning rate, weight decay, optimizer-state bytes
and the paths covered. Shapes come from `jax.eval_shape`, so nothing is computed or loaded.

>>> print(describe(config))
"""

from __future__ import annotations

import collections
import functools

import flax.traverse_util as tu
import jax
import numpy as np

from jtl import config as config_lib
from jtl import optim, prefix_cache, strategy

SHOWN_CLASSES = 20   # Classes listed one per line; the rest are summed.


def _num_classes(config) -> int:
  if config.data.classes:
    return len(config.data.classes)
  from jtl import data  # Only when the class count must be read off the dataset.
  return data.load_source(config.data.name, "train", config.data.data_dir).num_classes


def _covered(paths: list[str], all_paths: list[str]) -> str:
  """Shortest description: whole stages, then whole blocks, then single paths."""
  out, rest = [], set(paths)
  for depth in (1, 2):
    groups = collections.defaultdict(list)
    for p in all_paths:
      groups["/".join(p.split("/")[:depth])].append(p)
    for prefix, members in groups.items():
      if len(p.split("/")) > depth and set(members) <= rest:
        out.append(prefix + "/*")
        rest -= set(members)
  out = sorted(out, key=lambda p: strategy.model_order(p[:-2])) + sorted(rest, key=strategy.model_order)
  return ", ".join(out[:8]) + (f", … (+{len(out) - 8})" if len(out) > 8 else "")


def split_sizes(config) -> list[str]:
  """The run's data, as make_splits will carve it: images per class in train / val / test,
  with the class names, the shots and the image size.

  >>> print("\n".join(split_sizes(load_config("configs/tiny.py"))))   # doctest: +SKIP
  data digits, 8 px, 1 channel(s): train 721 / val 0 / test 180 images
    class              train      val     test
    0 '0'                142        0       36
  ...
  """
  from jtl import data   # Reads labels only; no image is decoded.
  splits = data.make_splits(config.data, seed=config.seed)
  names = splits["train"].class_names
  counts = {k: (np.bincount(v.labels, minlength=len(names)) if v is not None
                else np.zeros(len(names), np.int64)) for k, v in splits.items()}
  shots = f" ({config.data.shots} shots per class)" if config.data.shots else ""
  lines = [f"data {config.data.name}, {config.data.image_size} px, {config.data.channels} "
           f"channel(s): train {counts['train'].sum()}{shots} / val {counts['val'].sum()} / "
           f"test {counts['test'].sum()} images"]
  shown = [f"{i} {name!r}" for i, name in enumerate(names[:SHOWN_CLASSES])]
  w = max([16, *map(len, shown)])
  lines.append(f"  {'class':<{w}} {'train':>7} {'val':>8} {'test':>8}")
  for i, name in enumerate(shown):
    lines.append(f"  {name:<{w}} {counts['train'][i]:>7} {counts['val'][i]:>8} "
                 f"{counts['test'][i]:>8}")
  if len(names) > SHOWN_CLASSES:
    rest = slice(SHOWN_CLASSES, None)
    lines.append(f"  {f'… {len(names) - SHOWN_CLASSES} more':<{w}} "
                 f"{counts['train'][rest].sum():>7} {counts['val'][rest].sum():>8} "
                 f"{counts['test'][rest].sum():>8}")
  return lines


def resolve(config):
  """Parameter shapes (no arrays) and the resolved strategy of `config`."""
  from jtl import adapt, convert
  from jtl.models import build
  # model="auto" reads the architecture off the init checkpoint, as the trainer does.
  meta = convert.load(config.init)[2] if config.model.name == "auto" and config.init else {}
  built = build.build(config, meta, _num_classes(config), abstract=True)
  arch, shapes = built.arch, built.variables["params"]
  shapes = jax.eval_shape(functools.partial(adapt.add_head, config.adapt, shapes),
                          jax.random.key(1))   # A domain head (dann, cdan) trains like the rest.
  strat = strategy.resolve(config.strategy, shapes, config.total_steps)
  for phase in strat.phases:   # Optimizer, schedule and BatchNorm settings are checked too.
    optim.make_optimizer(config.optim, phase.labels, config.total_steps, phase.lr_mult,
                         config.strategy.get("labels", {}))
    phase.bn_train(config.strategy.bn)
  return arch, shapes, strat


def describe(config) -> str:
  arch, shapes, strat = resolve(config)
  flat = tu.flatten_dict(shapes, sep="/")
  total = sum(int(np.prod(v.shape)) for v in flat.values())
  lines = [f"strategy {strat.name} on {arch['name']} ({total:,} parameters), "
           f"{config.total_steps} steps, optimizer {config.optim.name}, base lr {config.optim.lr}"
           + ("" if strat.pretrained else "; from a random init (source not loaded)")]
  lines += [f"warning: {doubt}" for doubt in config_lib.doubts(config)]
  lines += [""] + split_sizes(config)
  for k, phase in enumerate(strat.phases):
    tx, hparams = optim.make_optimizer(config.optim, phase.labels, config.total_steps,
                                       phase.lr_mult, config.strategy.get("labels", {}))
    end = strat.phases[k + 1].start if k + 1 < len(strat.phases) else config.total_steps
    state_bytes = optim.state_bytes_per_label(jax.eval_shape(tx.init, shapes))
    bn = phase.bn_train(config.strategy.bn)
    lines += ["", f"phase {k}: from step {phase.start}; BatchNorm statistics update in "
              f"{', '.join(bn) or 'no stage'}",
              f"  {'label':<10} {'params':>12} {'fraction':>9} {'peak lr':>10} {'wd':>8} "
              f"{'opt bytes':>11}  paths"]
    by_label = collections.defaultdict(list)
    for path, label in tu.flatten_dict(phase.labels, sep="/").items():
      by_label[label].append(path)
    for label, paths in sorted(by_label.items(), key=lambda kv: strategy.model_order(kv[1][0])):
      n = sum(int(np.prod(flat[p].shape)) for p in paths)
      h = hparams.get(label)   # None for "freeze".
      steps = np.arange(phase.start, max(end, phase.start + 1))
      lr = "-" if h is None else f"{float(np.max(h.lr(steps))):.3g}"
      wd = "-" if h is None else f"{h.weight_decay:.3g}"
      lines.append(f"  {label:<10} {n:>12,} {n / total:>9.1%} {lr:>10} {wd:>8} "
                   f"{state_bytes.get(label, 0):>11,}  {_covered(paths, list(flat))}")
  start, why = prefix_cache.cut(config, strat)
  lines += ["", f"frozen prefix: stem through {start} computed once per dataset and cached "
            "(data.cache_prefix)"
            if start else f"frozen prefix: not cached: {why}"]
  return "\n".join(lines)
