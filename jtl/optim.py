"""Optimizers and learning-rate schedules, built from the `optim` config with optax.

>>> tx = make_optimizer(config.optim, labels, total_steps=1000)
>>> opt_state = tx.init(params)   # frozen parameters hold no state
"""

from __future__ import annotations

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import optax

from jtl.strategy import FREEZE

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """lr(step) from cfg.lr, cfg.schedule and cfg.warmup_steps."""
  lr, warmup = float(cfg.lr), int(cfg.get("warmup_steps", 0))
  name = cfg.get("schedule", "constant")
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name in ("cosine", "warmup_cosine"):
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  else:
    raise ValueError(f"config field optim.schedule is {name!r}; expected one of {', '.join(SCHEDULES)}.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params):
  # Decoupled weight decay on kernels only: decaying BatchNorm scales or biases
  # hurts small-data transfer and is not what any of the reference recipes do.
  return tu.unflatten_dict({k: k[-1] == "kernel" for k in tu.flatten_dict(params)})


def _direction(cfg) -> list[optax.GradientTransformation]:
  name, momentum = cfg.name, cfg.get("momentum", 0.9)
  if name == "sgd":
    return []
  if name in ("momentum", "nesterov"):
    return [optax.trace(decay=momentum, nesterov=name == "nesterov")]
  if name in ("adam", "adamw"):
    return [optax.scale_by_adam(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999))]
  raise ValueError(f"config field optim.name is {name!r}; expected one of {', '.join(OPTIMIZERS)}.")


def make_optimizer(cfg, labels, total_steps: int) -> optax.GradientTransformation:
  """One optax transform per label; "freeze" gets `set_to_zero` (no state, no update)."""
  train = [optax.clip_by_global_norm(float(cfg.clip_norm))] if cfg.get("clip_norm") else []
  decay = ([optax.add_decayed_weights(float(cfg.weight_decay), mask=_decay_mask)]
           if cfg.get("weight_decay") else [])
  # SGD-style methods decay through the gradient (classic L2); adamw decouples it.
  if cfg.name == "adamw":
    train += _direction(cfg) + decay
  else:
    train += decay + _direction(cfg)
  train.append(optax.scale_by_learning_rate(make_schedule(cfg, total_steps)))
  names = set(tu.flatten_dict(labels).values())
  transforms = {l: optax.set_to_zero() if l == FREEZE else optax.chain(*train) for l in names}
  return optax.multi_transform(transforms, labels)


def optimizer_state_bytes(opt_state) -> int:
  """Bytes of optimizer state held on device (scalars such as step counts excluded)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state)
             if hasattr(x, "dtype") and jnp.ndim(x) > 0)
