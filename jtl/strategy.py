"""Transfer strategies as data: ordered (regex, label) rules over parameter paths.

A parameter path is the Flax path joined by "/" (`stage3/block1/conv2/kernel`).
The first rule whose regex fully matches a path gives that parameter its label;
every parameter must match some rule, and every rule must match some parameter.
The label "freeze" means: no gradient, no optimizer state, and (by default) the
BatchNorm statistics of a stage with nothing trainable kept at the source values.
Every other label is trained, with its own lr multiplier, weight decay and schedule.

A strategy is a list of phases, each a set of rules from a given step on: that is
how LP-FT and gradual unfreezing are written.

>>> strat = resolve(config.strategy, params, total_steps=1000)   # e.g. name="partial:2"
>>> strat.phases[0].labels["stage3"]["block0"]["conv1"]["kernel"]
'train'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import flax.traverse_util as tu

from jtl.models import STAGES, stage_of

FREEZE = "freeze"
TRAIN = "train"
LINEAR_PROBE = (("head/.*", TRAIN), (".*", FREEZE))
FULL = ((".*", TRAIN),)
DOMAIN_HEAD = "domain_head"   # Domain adaptation's classifier, jtl/adapt.py.

# Stage order from the input up; "head" last.
ORDER = STAGES + ("head",)


@dataclasses.dataclass(frozen=True)
class Phase:
  """From step `start` on (steps already done), parameters follow `rules`."""
  start: int
  rules: tuple[tuple[str, str], ...]
  lr_mult: Mapping[str, float] = dataclasses.field(default_factory=dict)
  labels: Any = None      # Filled by `resolve`: a pytree like params holding labels.
  bn: str | None = None   # This phase's BatchNorm mode (see bn_train_stages); None: the config's.

  def bn_train(self, bn: str = "auto") -> tuple[str, ...]:
    """The stages whose BatchNorm trains in this phase; `bn`: config.strategy.bn."""
    return bn_train_stages(self.labels, self.bn or bn)


@dataclasses.dataclass(frozen=True)
class Strategy:
  name: str
  phases: tuple[Phase, ...]
  pretrained: bool = True   # False: train from a random init (the "scratch" baseline).

  def phase_at(self, steps_done: int) -> int:
    """Index of the phase that governs the next step."""
    return max(i for i, p in enumerate(self.phases) if p.start <= steps_done)


# ---------------------------------------------------------------------------
# Presets: name[:arg] -> phases. Each is a few lines of data.
# ---------------------------------------------------------------------------
def _stage_rules(trainable: Sequence[str]) -> tuple[tuple[str, str], ...]:
  if set(ORDER) <= set(trainable):
    return FULL
  return tuple((f"{s}/.*", TRAIN) for s in ORDER if s in trainable) + ((".*", FREEZE),)


def _check_stage(stage: str, spec: str) -> str:
  if stage not in STAGES:
    raise ValueError(f"strategy {spec!r}: {stage!r} is not a stage; expected one of "
                     f"{', '.join(STAGES)}.")
  return stage


def _partial(arg, cfg, paths, total):
  n = int(arg)
  if not 0 <= n < len(STAGES):
    raise ValueError(f"strategy 'partial:{arg}': N must be 0..{len(STAGES) - 1} "
                     "(stem counts as 0; N=4 freezes the whole backbone).")
  return [Phase(0, _stage_rules(ORDER[n + 1:]))]


def _freeze_through(arg, cfg, paths, total):
  ordered = sorted(paths, key=model_order)
  hits = [i for i, p in enumerate(ordered) if p == arg or p.startswith(arg.rstrip("/") + "/")]
  if not hits:
    raise ValueError(f"strategy 'freeze_through:{arg}': no parameter path is or starts with "
                     f"{arg!r} (e.g. stage2/block1 or stage2/block1/conv2/kernel).")
  frozen = ordered[:hits[-1] + 1]
  return [Phase(0, tuple((re.escape(p), FREEZE) for p in frozen) + ((".*", TRAIN),))]


def _surgical(arg, cfg, paths, total):
  return [Phase(0, _stage_rules((_check_stage(arg, f"surgical:{arg}"), "head")))]


def _discriminative(arg, cfg, paths, total):
  # Layer-wise lr decay: head x1, stage4 x d, stage3 x d^2, ... stem x d^5.
  decay = float(arg) if arg else float(cfg.get("lr_decay", 0.5))
  rules = tuple((f"{s}/.*", s) for s in reversed(ORDER))
  mult = {s: decay ** k for k, s in enumerate(reversed(ORDER))}
  return [Phase(0, rules, mult)]


def _gradual_unfreeze(arg, cfg, paths, total):
  # Head first, then one more stage every `every` steps, from the top down (ULMFiT).
  every = int(arg) if arg else int(cfg.get("unfreeze_every", 0)) or max(total // len(ORDER), 1)
  top_down = tuple(reversed(ORDER))
  return [Phase(k * every, _stage_rules(top_down[:k + 1])) for k in range(len(ORDER))]


def _lp_ft(arg, cfg, paths, total):
  # Kumar et al. 2022: linear probe, then fine-tune everything, each phase at its own rate
  # (lr x lp_lr_mult, then lr x ft_lr_mult). ft_bn: how BatchNorm behaves once everything
  # trains: "auto" (its statistics follow the target batches, renormalizing the features the
  # probe was fitted to) or "frozen" (the source's statistics are kept throughout).
  lp_steps = int(arg) if arg else int(cfg.get("lp_steps", 0)) or total // 2
  ft_bn = cfg.get("ft_bn", "auto")
  if ft_bn not in ("auto", "frozen"):
    raise ValueError(f"config field strategy.ft_bn={ft_bn!r}; expected 'auto' or 'frozen'.")
  return [Phase(0, LINEAR_PROBE, {TRAIN: float(cfg.get("lp_lr_mult", 1.0))}),
          Phase(lp_steps, FULL, {TRAIN: float(cfg.get("ft_lr_mult", 0.1))},
                bn=None if ft_bn == "auto" else "frozen")]


PRESETS = {
    "full_finetune": lambda *a: [Phase(0, FULL)],
    "linear_probe": lambda *a: [Phase(0, LINEAR_PROBE)],
    "scratch": lambda *a: [Phase(0, FULL)],
    "partial": _partial,                  # partial:N — stem..stageN frozen.
    "freeze_through": _freeze_through,    # freeze_through:PATH — everything up to PATH frozen.
    "surgical": _surgical,                # surgical:STAGE — that stage and the head.
    "discriminative": _discriminative,    # discriminative[:DECAY]
    "gradual_unfreeze": _gradual_unfreeze,  # gradual_unfreeze[:EVERY]
    "lp_ft": _lp_ft,                      # lp_ft[:LP_STEPS]
    # BitFit (Ben Zaken et al. 2022): biases only; in a ResNet those are the BatchNorm offsets.
    "bitfit": lambda *a: [Phase(0, (("head/.*", TRAIN), (".*/bias", TRAIN), (".*", FREEZE)))],
    "norm_only": lambda *a: [Phase(0, (("head/.*", TRAIN), (r".*/bn\d*/(scale|bias)", TRAIN),
                                       (".*", FREEZE)))],
    # Test-time adaptation from a checkpoint (with adapt.method of the same name, jtl/adapt.py).
    # TENT (Wang et al. 2021): BatchNorm scales and offsets only; "auto" puts every BatchNorm
    # in training mode, since every stage has one that trains.
    "tent": lambda *a: [Phase(0, ((r".*/bn\d*/(scale|bias)", TRAIN), (".*", FREEZE)))],
    # SHOT-IM (Liang et al. 2020): the feature extractor trains, the classifier is frozen.
    "shot_im": lambda *a: [Phase(0, (("head/.*", FREEZE), (".*", TRAIN)))],
}
NEEDS_ARG = ("partial", "freeze_through", "surgical")
# One line each, for `jtl list` and error messages.
DESCRIPTIONS = {
    "full_finetune": "everything trains, from the source weights",
    "linear_probe": "the new head only; backbone frozen",
    "scratch": "everything trains, from a random init (the source is not loaded)",
    "partial": "partial:N: stem..stageN frozen, the rest trains",
    "freeze_through": "freeze_through:PATH: everything up to PATH (forward order) frozen",
    "surgical": "surgical:STAGE: that stage and the head train (Lee et al. 2023)",
    "discriminative": "discriminative[:D]: everything, lr x D per stage below the head",
    "gradual_unfreeze": "gradual_unfreeze[:EVERY]: head first, one more stage every EVERY steps",
    "lp_ft": "lp_ft[:STEPS]: linear probe (lr x strategy.lp_lr_mult), then everything "
             "(lr x strategy.ft_lr_mult; BatchNorm per strategy.ft_bn)",
    "bitfit": "biases (BatchNorm offsets) and the head (Ben Zaken et al. 2022)",
    "norm_only": "BatchNorm scales and offsets and the head",
    "tent": "BatchNorm scales and offsets only, BatchNorm in training mode (TENT; with "
            "adapt.method=tent)",
    "shot_im": "everything but the head, which stays frozen (SHOT-IM; with adapt.method=shot_im)",
}


def resolve(cfg, params, total_steps: int) -> Strategy:
  """Builds the strategy of config `strategy` (name, rules, ...) and labels `params`."""
  paths = param_paths(params)
  if cfg.get("rules"):
    name, phases = "custom", [Phase(0, check_rules(cfg.rules, cfg))]
  else:
    name = cfg.name
    base, _, arg = name.partition(":")
    if base not in PRESETS:
      raise ValueError(f"unknown strategy {name!r}; known presets: "
                       f"{', '.join(p + (':ARG' if p in NEEDS_ARG else '') for p in PRESETS)}.")
    if base in NEEDS_ARG and not arg:
      raise ValueError(f"strategy {base!r} needs an argument, e.g. {base}:2 or {base}:stage3.")
    phases = PRESETS[base](arg, cfg, paths, total_steps)
    if any(p.startswith(DOMAIN_HEAD + "/") for p in paths):
      # A domain classifier (jtl/adapt.py) is new in every run: presets train it throughout.
      phases = [dataclasses.replace(p, rules=((f"{DOMAIN_HEAD}/.*", TRAIN),) + p.rules)
                for p in phases]
  overrides = dict(cfg.get("lr_mult") or {})
  phases = [dataclasses.replace(p, lr_mult={**p.lr_mult, **overrides},
                                labels=assign_labels(p.rules, params)) for p in phases]
  return Strategy(name, tuple(phases), pretrained=name != "scratch")


def check_rules(rules, cfg) -> tuple[tuple[str, str], ...]:
  """Custom rules as (regex, label) pairs whose labels are "freeze", "train" or declared.

  A label is declared by giving it an lr multiplier (strategy.lr_mult.LABEL) or its own
  settings (strategy.labels.LABEL); any other word would silently train at full lr.
  """
  example = "\"(('head/.*','train'),('.*','freeze'))\""
  if isinstance(rules, str) or not all(
      isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, str) for x in r)
      for r in rules):
    raise ValueError(f"config field strategy.rules={rules!r} must be (regex, label) pairs, "
                     f"e.g. --config.strategy.rules={example}.")
  declared = {FREEZE, TRAIN} | set(cfg.get("lr_mult") or {}) | set(cfg.get("labels") or {})
  for regex, label in rules:
    if label not in declared:
      hint = " (did you mean 'freeze'?)" if label.lower().startswith("froz") else ""
      raise ValueError(f"strategy.rules label {label!r}{hint} is neither 'freeze' nor 'train' "
                       "nor declared in strategy.lr_mult or strategy.labels.")
    try:
      re.compile(regex)
    except re.error as e:
      raise ValueError(f"strategy.rules regex {regex!r} does not compile: {e}.") from None
  return tuple((str(r), str(l)) for r, l in rules)


# ---------------------------------------------------------------------------
# Rules -> labels.
# ---------------------------------------------------------------------------
def param_paths(params) -> list[str]:
  return ["/".join(k) for k in tu.flatten_dict(params)]


def assign_labels(rules: Sequence[tuple[str, str]], params) -> Any:
  """Returns a pytree like `params` holding each parameter's label.

  Raises ValueError naming every uncovered parameter and every rule that matched
  nothing, so a typo in a regex cannot silently train (or freeze) the wrong thing.
  """
  compiled = [(re.compile(r), label) for r, label in rules]
  used = [False] * len(rules)
  flat, uncovered = {}, []
  for key in tu.flatten_dict(params):
    path = "/".join(key)
    for i, (rx, label) in enumerate(compiled):
      if rx.fullmatch(path):
        flat[key], used[i] = label, True
        break
    else:
      uncovered.append(path)
  if uncovered:
    uncovered.sort(key=model_order)
    raise ValueError(f"no strategy rule covers {len(uncovered)} parameter(s): {', '.join(uncovered[:8])}"
                     f"{' …' if len(uncovered) > 8 else ''}; add a rule such as ('.*', 'freeze').")
  unused = [r for (r, _), u in zip(rules, used) if not u]
  if unused:
    raise ValueError(f"strategy rule(s) {', '.join(map(repr, unused))} match no parameter "
                     "(or only parameters an earlier rule already took).")
  return tu.unflatten_dict(flat)


def frozen_paths(labels) -> frozenset[str]:
  return frozenset(p for p, l in tu.flatten_dict(labels, sep="/").items() if l == FREEZE)


def frozen_prefix(strat: Strategy, bn: str = "auto") -> int:
  """How many stages from the input on (stem, stage1, ...) no phase of `strat` trains,
  neither their weights nor their BatchNorm statistics: 0 when the stem trains, up to
  len(STAGES) when only the head does. The prefix cache and `jtl recommend` both ask this.

  >>> frozen_prefix(resolve(cfg_of("partial:2"), params, 100))   # doctest: +SKIP
  3
  """
  fixed = len(STAGES)
  for phase in strat.phases:
    trained = set(phase.bn_train(bn)) | {
        stage_of(p) for p, label in tu.flatten_dict(phase.labels, sep="/").items()
        if label != FREEZE}
    fixed = min(fixed, next((i for i, s in enumerate(STAGES) if s in trained), len(STAGES)))
  return fixed


def bn_train_stages(labels, bn: str = "auto") -> tuple[str, ...]:
  """Stages whose BatchNorm updates its statistics in training mode.

  bn="train": all stages; bn="frozen": none (every BatchNorm in inference mode,
  source statistics kept); bn="auto" (default): a stage trains its statistics
  iff it has a trainable parameter, so a frozen block behaves exactly as it did
  in the source model.
  """
  if bn == "train":
    return STAGES
  if bn == "frozen":
    return ()
  if bn != "auto":
    raise ValueError(f"config field strategy.bn must be 'auto', 'train' or 'frozen', not {bn!r}.")
  flat = tu.flatten_dict(labels, sep="/")
  return tuple(s for s in STAGES if any(l != FREEZE for p, l in flat.items() if stage_of(p) == s))


_LAYER_ORDER = {n: i for i, n in enumerate(
    ("conv", "bn", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"))}


def model_order(path: str):
  """Sort key putting parameter paths in forward order (block10 after block9)."""
  parts = path.split("/")
  key = [ORDER.index(stage_of(path))]
  for part in parts[1:]:
    m = re.fullmatch(r"block(\d+)", part)
    key.append(int(m[1]) if m else _LAYER_ORDER.get(part, 99))
  return tuple(key)
