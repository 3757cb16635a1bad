"""Optimizers and learning-rate schedules, built from the `optim` config with optax.

>>> tx, hparams = make_optimizer(config.optim, labels, total_steps=1000)
>>> opt_state = tx.init(params)   # frozen parameters hold no state
>>> hparams["train"].lr(0), hparams["train"].weight_decay   # what label "train" gets
"""

from __future__ import annotations

import dataclasses

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import optax

from jtl.strategy import FREEZE

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "lars")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "lr_range")
RANGE_START = 1e-4   # lr_range: the lr rises geometrically from lr x RANGE_START to lr.


def make_schedule(cfg, total_steps: int, name: str | None = None) -> optax.Schedule:
  """lr(step) from cfg.lr, cfg.schedule (or `name`) and cfg.warmup_steps."""
  lr, warmup = float(cfg.lr), int(cfg.get("warmup_steps", 0))
  name = name or cfg.get("schedule", "constant")
  if name == "constant":
    main = optax.constant_schedule(lr)
  elif name in ("cosine", "warmup_cosine"):
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  elif name == "lr_range":   # An lr range test (Smith 2017): jtl recommend reads its losses.
    if warmup > 0:
      raise ValueError(f"config field optim.schedule='lr_range' rises from the first step; set "
                       f"optim.warmup_steps=0 (it is {warmup}).")
    main = optax.exponential_decay(lr * RANGE_START, max(total_steps - warmup - 1, 1),
                                   1 / RANGE_START)
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
  if name == "lars":
    # You et al. 2017: per-layer trust ratio, then momentum (as optax.lars orders it).
    return [optax.scale_by_trust_ratio(trust_coefficient=cfg.get("trust_coefficient", 0.001)),
            optax.trace(decay=momentum)]
  raise ValueError(f"config field optim.name is {name!r}; expected one of {', '.join(OPTIMIZERS)}.")


@dataclasses.dataclass(frozen=True)
class LabelHparams:
  """What one label is trained with: `lr(step)` (base lr x multiplier x schedule) and wd."""
  lr: optax.Schedule
  lr_mult: float
  weight_decay: float
  schedule: str


def _for_label(cfg, h: LabelHparams) -> optax.GradientTransformation:
  train = [optax.clip_by_global_norm(float(cfg.clip_norm))] if cfg.get("clip_norm") else []
  # cfg.decay_all=True also decays BatchNorm scales/offsets and biases (frozen params never).
  mask = None if cfg.get("decay_all", False) else _decay_mask
  decay = [optax.add_decayed_weights(h.weight_decay, mask=mask)] if h.weight_decay else []
  # SGD-style methods and LARS decay through the gradient (classic L2); adamw decouples it.
  train += _direction(cfg) + decay if cfg.name == "adamw" else decay + _direction(cfg)
  train.append(optax.scale_by_learning_rate(h.lr))
  return optax.chain(*train)


def label_hparams(cfg, labels, total_steps: int, lr_mult: dict | None = None,
                  per_label: dict | None = None) -> dict[str, LabelHparams]:
  """label -> its lr schedule and weight decay; the one place these are worked out.

  lr_mult: label -> multiplier of the base lr (default 1). per_label: label ->
  {"weight_decay": float, "schedule": name} overriding `cfg` for that label.
  "freeze" gets no entry: it is never trained.
  """
  lr_mult, per_label = lr_mult or {}, per_label or {}
  out = {}
  for label in sorted(set(tu.flatten_dict(labels).values()) - {FREEZE}):
    own = per_label.get(label, {})
    mult = float(lr_mult.get(label, 1.0))
    schedule = own.get("schedule", cfg.get("schedule", "constant"))
    base = make_schedule(cfg, total_steps, schedule)
    out[label] = LabelHparams(lr=lambda step, base=base, mult=mult: base(step) * mult,
                              lr_mult=mult, schedule=schedule,
                              weight_decay=float(own.get("weight_decay", cfg.get("weight_decay", 0.0))))
  return out


def make_optimizer(cfg, labels, total_steps: int, lr_mult: dict | None = None,
                   per_label: dict | None = None
                   ) -> tuple[optax.GradientTransformation, dict[str, LabelHparams]]:
  """One optax transform per label, and the per-label hyperparameters it was built from.

  "freeze" gets `set_to_zero` (no state, no update). The trainer logs
  `train/lr/<label>` and the dry run prints from the returned `LabelHparams`.
  """
  hparams = label_hparams(cfg, labels, total_steps, lr_mult, per_label)
  transforms = {label: _for_label(cfg, h) for label, h in hparams.items()}
  if FREEZE in set(tu.flatten_dict(labels).values()):
    transforms[FREEZE] = optax.set_to_zero()
  return optax.multi_transform(transforms, labels), hparams


def transplant(old_state, new_state, step: int):
  """Carries optimizer state across a phase switch.

  Every leaf of `new_state` found at the same path (label, transform, parameter)
  and shape in `old_state` is taken from it, so parameters that stay trainable keep
  their momentum; step counters of new labels start at `step` so schedules continue.
  """
  old = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(old_state)}

  def pick(path, new):
    key = jax.tree_util.keystr(path)
    if key in old and jnp.shape(old[key]) == jnp.shape(new):
      return old[key]
    if key.endswith(".count"):
      return jnp.full_like(new, step)
    return new
  return jax.tree_util.tree_map_with_path(pick, new_state)


def state_bytes_per_label(opt_state) -> dict[str, int]:
  """Optimizer-state bytes of each label of a `make_optimizer` state."""
  return {label: optimizer_state_bytes(inner)
          for label, inner in opt_state.inner_states.items()}


def optimizer_state_bytes(opt_state) -> int:
  """Bytes of optimizer state held on device (scalars such as step counts excluded)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state)
             if hasattr(x, "dtype") and jnp.ndim(x) > 0)
