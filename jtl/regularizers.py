"""Penalties added to the training loss, each logged as its own term.

| config.reg field | term |
|---|---|
| l1, l2       | coef * sum|w|, coef/2 * sum w^2 over trainable kernels of `reg.labels` (default: all trainable labels) |
| l2_sp        | L2-SP (Li et al. 2018): alpha/2 * ||w - w_source||^2 over trainable parameters loaded from the source |
| l2_sp_beta   | ... plus beta/2 * ||w||^2 over the new ones (the re-initialized head) |
| delta        | DELTA-style feature-map regularization (Li et al. 2019), unweighted: coef * mean squared distance between the target and source models' stage feature maps |
| bss          | Batch Spectral Shrinkage (Chen et al. 2019): coef * sum of the `bss_k` smallest squared singular values of the batch's pooled features |

>>> term = make_penalty_term(config.reg, labels, loaded_paths, apply_fn, has_anchor=True)
>>> losses, _ = term(state, params, out, logits, batch, num_labeled)   # {"penalty/l2_sp": ...}
"""

from __future__ import annotations

from typing import Callable

import flax.traverse_util as tu
import jax
import jax.numpy as jnp

from jtl.strategy import FREEZE

NAMES = ("l1", "l2", "l2_sp", "delta", "bss")
FEATURE_MAPS = ("stage1", "stage2", "stage3", "stage4")


def make_penalty_term(cfg, labels, loaded: frozenset[str], apply_fn: Callable,
                      has_anchor: bool) -> Callable | None:
  """Returns term(state, params, out, logits, batch, num_labeled) -> ({"penalty/<name>":
  loss}, {}), or None if every coefficient is 0: the loss-term signature that domain
  adaptation's term (jtl/adapt.py) shares.

  `loaded` holds the paths that came from the source checkpoint (the rest are new);
  L2-SP and DELTA pull toward `state.anchor`, the source weights the run started from.
  """
  flat_labels = tu.flatten_dict(labels, sep="/")
  trainable = {p for p, l in flat_labels.items() if l != FREEZE}
  chosen = set(cfg.get("labels") or ()) or {l for l in flat_labels.values() if l != FREEZE}
  unknown = chosen - set(flat_labels.values())
  if unknown:
    raise ValueError(f"config field reg.labels names {sorted(unknown)}, which no strategy rule "
                     f"gives; labels are {sorted(set(flat_labels.values()))}.")
  weights = {p for p in trainable if flat_labels[p] in chosen and p.endswith("kernel")}
  pulled = trainable & loaded
  new = trainable - loaded
  coef = {n: float(cfg.get(n, 0.0)) for n in NAMES}
  beta = float(cfg.get("l2_sp_beta", 0.0))
  if not any(coef.values()) and not beta:
    return None
  if (coef["l2_sp"] or coef["delta"]) and not has_anchor:
    raise ValueError("config fields reg.l2_sp and reg.delta pull toward the source model, "
                     "but this run has none (config.init is empty or the strategy is scratch).")

  def penalty_term(state, params, out, logits, batch, num_labeled: int):
    out = {k: v[:num_labeled] for k, v in out.items()}   # The labeled part of the batch.
    images, anchor = batch["image"], state.anchor
    flat = tu.flatten_dict(params, sep="/")
    terms = {}
    if coef["l1"]:
      terms["l1"] = coef["l1"] * sum(jnp.abs(flat[p]).sum() for p in weights)
    if coef["l2"]:
      terms["l2"] = coef["l2"] / 2 * sum(jnp.square(flat[p]).sum() for p in weights)
    if coef["l2_sp"] or beta:
      terms["l2_sp"] = beta / 2 * sum(jnp.square(flat[p]).sum() for p in new)
      if coef["l2_sp"]:
        src = tu.flatten_dict(anchor["params"], sep="/")
        terms["l2_sp"] += coef["l2_sp"] / 2 * sum(jnp.square(flat[p] - src[p]).sum() for p in pulled)
    if coef["delta"]:
      _, src_out, _ = apply_fn(jax.lax.stop_gradient(anchor), images, train=False, rng=None)
      terms["delta"] = coef["delta"] * sum(
          jnp.mean(jnp.square(out[k].astype(jnp.float32) - src_out[k].astype(jnp.float32)))
          for k in FEATURE_MAPS)
    if coef["bss"]:
      sigma = jnp.linalg.svd(out["pre_logits"].astype(jnp.float32), compute_uv=False)
      terms["bss"] = coef["bss"] * jnp.sum(jnp.square(sigma[-int(cfg.get("bss_k", 1)):]))
    return {f"penalty/{name}": v for name, v in terms.items()}, {}
  return penalty_term
