"""`jtl recommend CONFIG`: a strategy, cut depth and lr range from cheap signals.

Three signals, for a small fixed budget (seconds on a CPU for the shipped studies):
  1. transferability scores per stage (jtl/diagnose/estimate.py) of the source's and
     of a random init's features on the target's labeled train split;
  2. a closed-form ridge probe per cut depth: fit on train, accuracy on the
     validation carve (data.val_per_class), for the source and the random init;
  3. a short lr range test (Smith 2017) of the recommended strategy: RANGE_STEPS
     steps with the lr rising geometrically, through the real trainer.

The rule (designed on strategy_ablation's settings, then scored on those and on the
held-out cross_domain settings in experiments/diagnose.py):
  - scratch, if a random init's best depth probes clearly better (by 2 standard errors
    of the validation accuracy) than the source's best: the source hurts;
  - linear_probe, if the source's pre_logits probe is within one standard error of its
    best depth and at or above SOLVED: the frozen features already solve the task;
  - full_finetune, with TUNE_ALL_SHOTS or more labelled images per class;
  - otherwise partial:N, frozen through the deepest stage whose probe is within one
    standard error of the best depth (the features still general there), never deeper
    than stage3: the last stage is the most source-specific (Yosinski et al. 2014) and
    the cheapest to tune; the stem alone -> partial:0;
  - `among` (the strategies a study compares) maps the choice to the closest
    candidate that trains at least the layers it says to train.
  - lr: the range test's lr at the lowest smoothed loss, divided by 10, with the range
    [÷30, ÷3] around it (Smith's and fastai's rule of thumb).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import shutil
import tempfile
import time
from typing import Sequence

import numpy as np

from jtl import config as config_lib
from jtl import data, models
from jtl import strategy as strategy_lib
from jtl.diagnose import estimate, features, transferability

RANGE_STEPS = 30        # Steps of the lr range test.
RANGE_TOP = 3.0         # Its highest lr (it starts at RANGE_TOP x optim.RANGE_START).
TUNE_ALL_SHOTS = 100    # Labelled images per class from which every layer is tuned.
SOLVED = 0.98           # A frozen-feature probe this accurate leaves tuning nothing to gain.
DEEPEST_CUT = "stage3"  # partial:N never freezes the last stage.
CUTS = models.LAYERS    # Cut depths: freeze through this layer (pre_logits: all but the head).


def strategy_for(cut: str | None) -> str:
  """The strategy that freezes through `cut` (None: nothing frozen)."""
  if cut is None:
    return "full_finetune"
  if cut == "pre_logits":
    return "linear_probe"
  return f"partial:{models.STAGES.index(cut)}"


def cut_of(strategy: str) -> str | None:
  """The layer `strategy` freezes through (None: it trains from the stem)."""
  first = _trained_from(strategy)
  return CUTS[first - 1] if first else None


@functools.cache
def _trained_from(name: str) -> int | None:
  """The first layer (index into CUTS) that strategy `name` trains, as its phases say
  (strategy.frozen_prefix, which the prefix cache reads too); None for a name that is
  no preset. Strategies name stages, not blocks, so any ResNet's paths place them."""
  cfg = config_lib.base_config().strategy
  cfg.name = "full_finetune" if name == "l2_sp" else name   # A study's name: fine-tuning + L2-SP.
  try:
    strat = strategy_lib.resolve(cfg, _resnet_params(), total_steps=100)
  except ValueError:
    return None
  fixed = strategy_lib.frozen_prefix(strat)
  return len(CUTS) if fixed == len(models.STAGES) else fixed


@functools.cache
def _resnet_params():
  """A ResNet-18's parameter shapes (no arrays): the paths strategy rules match."""
  import jax
  import jax.numpy as jnp
  model = models.get_model("resnet18", num_classes=2, small_stem=True, width=0.125)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        jnp.zeros((1, 8, 8, 3)))["params"]


def closest(strategy: str, among: Sequence[str]) -> str:
  """The candidate in `among` that trains at least what `strategy` trains and freezes the
  most of the rest (full_finetune if nothing else fits); `strategy` if it is among them."""
  if not among or strategy in among:
    return strategy
  if strategy == "scratch":
    return "scratch" if "scratch" in among else "full_finetune"
  need = _trained_from(strategy)
  fits = [(_trained_from(s), s == "full_finetune", s) for s in among
          if s != "scratch" and _trained_from(s) is not None and _trained_from(s) <= need]
  return max(fits)[2] if fits else "full_finetune"   # Plain fine-tuning before its variants.


def probe_signals(config) -> dict:
  """Scores and probe accuracies per depth for the source (config.init) and a random init."""
  splits = data.make_splits(config.data, seed=config.seed)
  if splits.get("val") is None or not len(splits["val"]):
    raise ValueError("jtl recommend fits its probes on train and scores them on a validation "
                     "carve; set config field data.val_per_class (e.g. 10).")
  out = {}
  for name, source in (("source", config.init), ("random", "random")):
    model = features.load_model(source, config, seed=config.seed)
    train, labels, val, val_labels, _ = estimate.source_features(model, config, splits, CUTS)
    out[name] = {layer: {
        "ridge": transferability.ridge_probe(train[layer], labels, val[layer], val_labels),
        "logme": transferability.logme(transferability.pool(train[layer]), labels)}
        for layer in CUTS}
  out["val_examples"] = len(splits["val"])
  out["train_examples"] = len(splits["train"])
  out["classes"] = splits["train"].num_classes
  return out


def choose(signals: dict, among: Sequence[str] = ()) -> tuple[str, str | None, list[str]]:
  """(strategy, cut, why) from probe_signals' output."""
  src = {layer: signals["source"][layer]["ridge"] for layer in CUTS}
  rnd = {layer: signals["random"][layer]["ridge"] for layer in CUTS}
  best_layer = max(CUTS, key=lambda layer: (src[layer], CUTS.index(layer)))
  best, best_random = src[best_layer], max(rnd.values())
  se = math.sqrt(max(best * (1 - best), 1e-4) / signals["val_examples"])
  n = signals["val_examples"]
  # At 0 % or 100 % the binomial s.e. is 0; say what n images do bound (the rule of three).
  spread = (f"± {se:.1%} s.e." if 0 < best < 1 else
            f"so the true {'error' if best == 1 else 'accuracy'} is below {min(3 / n, 1):.1%} "
            "at 95 %")
  why = [f"ridge probe on the source's features peaks at {best_layer} ({best:.1%} on "
         f"{n} validation images, {spread}); a random init's best depth reaches "
         f"{best_random:.1%}"]
  per_class = signals["train_examples"] / signals["classes"]
  if best_random - best > 2 * se:
    why.append("a random init's features probe clearly better (> 2 s.e.): train from scratch")
    return closest("scratch", among), None, why
  general = max((layer for layer in CUTS if src[layer] >= best - se), key=CUTS.index)
  if general == "pre_logits" and src["pre_logits"] >= SOLVED:
    why.append(f"the frozen pre_logits features already reach {src['pre_logits']:.1%} "
               f"(≥ {SOLVED:.0%}): a linear probe suffices")
    cut = "pre_logits"
  elif per_class >= TUNE_ALL_SHOTS:
    why.append(f"{per_class:.0f} labelled images per class (≥ {TUNE_ALL_SHOTS}) are enough to "
               "tune every layer")
    cut = None
  else:
    cut = min(general, DEEPEST_CUT, key=CUTS.index)
    why.append(f"the deepest layer within one s.e. of the peak is {general}: the source's "
               f"features are still general there; frozen through {cut}"
               + (" (the last stage always tunes)" if cut != general else ""))
  strategy = closest(strategy_for(cut), among)
  if strategy != strategy_for(cut):
    why.append(f"{strategy_for(cut)} is not among the candidates; {strategy} is the closest that "
               "trains at least as much")
  return strategy, cut_of(strategy), why


def lr_range_test(config, strategy: str, *, steps: int = RANGE_STEPS, top: float = RANGE_TOP
                  ) -> dict:
  """Trains `strategy` for `steps` steps with the lr rising geometrically to `top` (in a
  temporary workdir, through the real trainer); returns the (lr, loss) curve and the
  suggested lr and range."""
  from jtl import train, writers
  cfg = copy.deepcopy(config)
  cfg.unlock()
  cfg.strategy.name = strategy
  if strategy == "scratch":
    cfg.init = ""
  cfg.total_steps, cfg.log_every, cfg.eval_every = steps, 1, 0
  cfg.checkpoint_every, cfg.progress = steps, False
  cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.lr = "lr_range", 0, top
  workdir = tempfile.mkdtemp(prefix="jtl-lr-range-")
  try:
    try:
      with contextlib.redirect_stdout(io.StringIO()):   # Its per-step log: the curve below.
        train.train_and_evaluate(cfg, workdir)
    except FloatingPointError:
      pass    # The loss diverged at a high lr: the curve so far is what the test needs.
    rows = writers.read_metrics(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  curve = [(max(v for k, v in r.items() if k.startswith("train/lr/")), r["train/loss"])
           for r in rows if "train/loss" in r]
  return {"curve": [[float(a), float(b)] for a, b in curve],
          **suggest_lr([a for a, _ in curve], [b for _, b in curve])}


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], smoothing: float = 0.7) -> dict:
  """The lr at the lowest smoothed loss of a range test (an exponential moving average, as
  fastai's finder), and the lr and range suggested from it: ÷10, and [÷30, ÷3]."""
  smooth, ema = [], None
  for loss in losses:
    if not np.isfinite(loss):
      break                      # Diverged: the curve ends here.
    ema = loss if ema is None else smoothing * ema + (1 - smoothing) * loss
    smooth.append(ema)
  if not smooth:
    raise ValueError("the lr range test's loss was not finite from its first step (lr "
                     f"{lrs[0] if len(lrs) else '?'}); check the data and config.optim.")
  best = float(lrs[int(np.argmin(smooth))])
  return {"lr_at_min_loss": best, "lr": best / 10, "lr_range": [best / 30, best / 3]}


def recommend(config, among: Sequence[str] = (), lr_test: bool = True) -> dict:
  """Signals, the choice with its reasons, the lr range test, and the seconds spent."""
  if not config.init:
    raise ValueError("jtl recommend compares a source with a random init; set config field init "
                     "(a jtl workdir, hf:PATH, torchvision:PATH or bit:PATH).")
  t0 = time.time()
  signals = probe_signals(config)
  probe_s = time.time() - t0
  strategy, cut, why = choose(signals, among)
  lr = lr_range_test(config, strategy) if lr_test else None
  return {"strategy": strategy, "cut": cut, "why": why, "signals": signals, "lr_test": lr,
          "probe_s": probe_s, "seconds": time.time() - t0}


def describe(result: dict) -> str:
  """What a user reads: the recommendation, its reasons and the evidence."""
  lines = [f"recommended: {result['strategy']}"
           + (f" (frozen through {result['cut']})" if result["cut"] else ""), ""]
  lines += [f"  - {w}" for w in result["why"]]
  if result["lr_test"]:
    t = result["lr_test"]
    lines += [f"  - lr range test ({len(t['curve'])} steps): lowest smoothed loss at lr "
              f"{t['lr_at_min_loss']:.3g}; suggested lr {t['lr']:.3g}, range "
              f"{t['lr_range'][0]:.3g}–{t['lr_range'][1]:.3g}"]
  lines += ["", "| layer | ridge probe: source | random init | LogME: source | random init |",
            "|---|---|---|---|---|"]
  s, r = result["signals"]["source"], result["signals"]["random"]
  lines += [f"| {layer} | {s[layer]['ridge']:.1%} | {r[layer]['ridge']:.1%} | "
            f"{s[layer]['logme']:.3f} | {r[layer]['logme']:.3f} |" for layer in CUTS]
  lines += ["", f"{result['seconds']:.1f} s in all ({result['probe_s']:.1f} s of features and "
            "probes)."]
  return "\n".join(lines)
