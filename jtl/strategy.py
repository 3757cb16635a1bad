"""Transfer strategies as data: ordered (regex, label) rules over parameter paths.

A parameter path is the Flax path joined by "/" (`stage3/block1/conv2/kernel`).
The first rule whose regex fully matches a path gives that parameter its label;
every parameter must match some rule, and every rule must match some parameter.
The label "freeze" means: no gradient, no optimizer state, BatchNorm statistics
of a fully frozen stage kept at the source values.

>>> rules = PRESETS["linear_probe"]          # [("head/.*", "train"), (".*", "freeze")]
>>> labels = assign_labels(rules, params)   # {"head": {"kernel": "train", ...}, "stem": ...}
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.traverse_util as tu

from jtl.models import stage_of

FREEZE = "freeze"
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")

# The presets this issue needs; each is just a list of rules.
PRESETS: dict[str, list[tuple[str, str]]] = {
    "full_finetune": [(".*", "train")],
    "linear_probe": [("head/.*", "train"), (".*", FREEZE)],
    # The seed's `pretrained=False` baseline: same rules as full fine-tuning; the
    # transfer config also drops the source checkpoint (see configs/transfer.py).
    "scratch": [(".*", "train")],
}


def get_rules(name_or_rules: str | Sequence[Sequence[str]]) -> list[tuple[str, str]]:
  """Returns the rules of a preset name, or the given rules as a list of pairs."""
  if isinstance(name_or_rules, str):
    if name_or_rules not in PRESETS:
      raise ValueError(f"unknown strategy {name_or_rules!r}; known presets: "
                       f"{', '.join(sorted(PRESETS))}.")
    return list(PRESETS[name_or_rules])
  return [(str(r), str(l)) for r, l in name_or_rules]


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
    raise ValueError(f"no strategy rule covers parameter(s) {', '.join(uncovered[:8])}"
                     f"{' …' if len(uncovered) > 8 else ''}; add a rule such as ('.*', 'freeze').")
  unused = [r for (r, _), u in zip(rules, used) if not u]
  if unused:
    raise ValueError(f"strategy rule(s) {', '.join(map(repr, unused))} match no parameter "
                     "(or only parameters an earlier rule already took).")
  return tu.unflatten_dict(flat)


def trainable_mask(labels) -> Any:
  """True where a parameter is trained, False where it is frozen."""
  return _tree_map_str(lambda l: l != FREEZE, labels)


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
  flat = tu.flatten_dict(labels)
  return tuple(s for s in STAGES
               if any(l != FREEZE for k, l in flat.items() if stage_of("/".join(k)) == s))


def _tree_map_str(fn, tree):
  return tu.unflatten_dict({k: fn(v) for k, v in tu.flatten_dict(tree).items()})
