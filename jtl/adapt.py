"""Domain adaptation: loss terms that use unlabeled target images, and the domain heads.

A run with `config.adapt.target` set trains on its labeled data (`config.data`, the
source domain) and is tested on the target's test split. `adapt.method` adds one
term to the loss, computed on the pooled features (`pre_logits`) of a batch that
holds the labeled images followed by as many unlabeled target images:

| adapt.method | term |
|---|---|
| none  | nothing: the source-only baseline (still tested on the target) |
| dann  | DANN (Ganin et al. 2016): a domain classifier behind a gradient-reversal layer; the reversal's λ rises from 0 to 1 as 2 / (1 + exp(-γ p)) - 1, p = step / total_steps |
| cdan  | CDAN (Long et al. 2018): as DANN, on the outer product of features and class predictions |
| coral | Deep CORAL (Sun & Saenko 2016): ||C_s - C_t||_F^2 / (4 d^2) between feature covariances |
| mmd   | DAN (Long et al. 2015): multi-kernel MMD^2, Gaussian kernels with bandwidths σ^2 = a x (mean squared distance) for a in adapt.mmd_bandwidths |
| tent  | TENT (Wang et al. 2021): the mean entropy of the target predictions; with strategy `tent` only BatchNorm scales and offsets train, BatchNorm in training mode |
| shot_im | SHOT-IM (Liang et al. 2020): mean entropy minus diversity (the entropy of the mean prediction); with strategy `shot_im` the feature extractor trains and the head is frozen |

`tent` and `shot_im` are source-free (SOURCE_FREE): they adapt a trained model (config.init,
its own head loaded) and a step holds target images only, no labeled ones.
`adapt.adabn` composes with any method: before the final evaluation every BatchNorm's
statistics are recomputed on the target's unlabeled train images (jtl/adabn.py).

The domain heads' parameters live at `params["domain_head"]`, so strategy rules and
checkpoints cover them like any other parameter; presets train them.

The trainer asks an `Adaptation` (None without a target) for its target data, its
loss term, its evaluations and its summary fields:

>>> adaptation = Adaptation.from_config(config, num_classes=5)   # doctest: +SKIP
>>> term = make_adapt_term(config.adapt, total_steps=1000)
>>> losses, metrics = term(state, params, out, logits, batch, num_labeled=64)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jtl import data
# One list of methods (and of the source-free ones), which config.check reads too.
from jtl.config import ADAPT_METHODS as METHODS, SOURCE_FREE_METHODS as SOURCE_FREE
from jtl.strategy import DOMAIN_HEAD as HEAD   # Where a domain head's parameters live.

ADVERSARIAL = ("dann", "cdan")   # Methods with a domain head.
FEATURES = "pre_logits"


# ---------------------------------------------------------------------------
# Gradient reversal.
# ---------------------------------------------------------------------------
@jax.custom_vjp
def grad_reverse(x, lam):
  """The identity going forward; multiplies the gradient by -lam going back.

  >>> jax.grad(lambda x: grad_reverse(x, 0.5).sum())(jnp.ones(2))
  Array([-0.5, -0.5], dtype=float32)
  """
  return x


def _reverse_fwd(x, lam):
  return x, lam


def _reverse_bwd(lam, g):
  return (-lam * g).astype(g.dtype), jnp.zeros_like(lam)


grad_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def dann_lambda(step, total_steps: int, gamma: float = 10.0):
  """DANN's schedule for the reversal weight: 0 at the start, near 1 at the end.

  >>> float(dann_lambda(0, 100))
  0.0
  """
  p = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
  return 2.0 / (1.0 + jnp.exp(-gamma * p)) - 1.0


# ---------------------------------------------------------------------------
# Statistic-matching losses.
# ---------------------------------------------------------------------------
def coral(source, target):
  """Deep CORAL: squared Frobenius distance of the feature covariances / (4 d^2).

  >>> float(coral(jnp.eye(4), jnp.eye(4)))
  0.0
  """
  d = source.shape[-1]
  return jnp.sum(jnp.square(_covariance(source) - _covariance(target))) / (4.0 * d * d)


def _covariance(x):
  x = x - x.mean(0, keepdims=True)
  return x.T @ x / max(x.shape[0] - 1, 1)


def mmd(source, target, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)):
  """Multi-kernel MMD^2 (the biased estimate), summed over Gaussian kernels.

  Kernel a is exp(-||x - y||^2 / (2 a m)), with m the mean squared distance over
  all pairs of the joint batch (held constant for the gradient), as in DAN.

  >>> float(mmd(jnp.ones((3, 2)), jnp.ones((3, 2))))
  0.0
  """
  x = jnp.concatenate([source, target])
  sq = jnp.sum(jnp.square(x[:, None, :] - x[None, :, :]), axis=-1)
  m = jax.lax.stop_gradient(jnp.mean(sq))
  kernel = sum(jnp.exp(-sq / (2.0 * a * m + 1e-12)) for a in bandwidths)
  n = source.shape[0]
  return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2.0 * kernel[:n, n:].mean()


def entropy(probs, axis: int = -1):
  """Shannon entropy in nats along `axis` (0 log 0 = 0, with a finite gradient there).

  >>> round(float(entropy(jnp.array([0.5, 0.5]))), 4)   # log 2
  0.6931
  """
  safe = jnp.where(probs > 0, probs, 1.0)
  return -jnp.sum(probs * jnp.log(safe), axis)


def information_maximization(logits) -> tuple[jax.Array, jax.Array]:
  """(mean entropy of the predictions, diversity: the entropy of the mean prediction).

  TENT minimizes the first; SHOT-IM minimizes the first minus the second, so that
  predictions grow confident without collapsing onto one class.

  >>> ent, div = information_maximization(jnp.array([[9.0, 0.0], [0.0, 9.0]]))
  >>> float(ent) < 0.01 and round(float(div), 4) == 0.6931
  True
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32))
  return entropy(probs).mean(), entropy(probs.mean(0))


# ---------------------------------------------------------------------------
# Domain heads.
# ---------------------------------------------------------------------------
class DomainHead(nn.Module):
  """The domain classifier of DANN / CDAN: a small MLP, one logit (source = 1)."""
  hidden: int = 256
  depth: int = 2

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      x = nn.relu(nn.Dense(self.hidden, name=f"dense{i}")(x))
    return nn.Dense(1, name="out")(x)[:, 0]


def head_input(method: str, features, logits):
  """What the domain head sees: the features (DANN), or their outer product with the
  class probabilities, flattened (CDAN's multilinear conditioning)."""
  if method == "cdan":
    probs = jax.nn.softmax(logits)
    return jnp.einsum("bc,bd->bcd", probs, features).reshape(features.shape[0], -1)
  return features


def add_head(cfg, params: dict, rng) -> dict:
  """`params` plus a fresh domain head at params[HEAD] when `cfg.method` has one.

  Its input width comes from the classifier's kernel ([features, classes]).
  """
  if cfg.method not in ADVERSARIAL:
    return params
  features, classes = params["head"]["kernel"].shape
  width = features * classes if cfg.method == "cdan" else features
  return {**params, HEAD: DomainHead(cfg.hidden).init(rng, jnp.zeros((1, width)))["params"]}


def _whole(x):
  """`x` replicated: CORAL's covariance and MMD's pairwise distances mix examples that a
  data-parallel mesh keeps on different devices (features are small, so this is cheap)."""
  sharding = jax.typeof(x).sharding
  if not any(a is not None for a in sharding.spec):
    return x
  return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))


# ---------------------------------------------------------------------------
# The term the trainer adds.
# ---------------------------------------------------------------------------
def make_adapt_term(cfg, total_steps: int) -> Callable | None:
  """Returns term(state, params, out, logits, batch, num_labeled) -> (losses, metrics), or None.

  `out[FEATURES]` and `logits` hold the labeled examples first, then the target's (a
  source-free method's batch has none labeled: num_labeled is 0).
  losses: {"adapt/<method>": weighted loss}; metrics: what the step logs besides (λ, and
  the domain classifier's loss and accuracy for DANN / CDAN; entropy and diversity for
  TENT / SHOT-IM). The signature is the one every loss term shares (jtl/regularizers.py's
  penalties too).
  """
  if cfg.method == "none":
    return None
  weight, method = float(cfg.weight), cfg.method

  def adapt_term(state, params, out, logits, batch, num_labeled: int):
    if method in SOURCE_FREE:   # Labels are never read: only the target's predictions.
      ent, div = information_maximization(logits[num_labeled:])
      loss = ent if method == "tent" else ent - div
      return {f"adapt/{method}": weight * loss}, {"adapt/entropy": ent, "adapt/diversity": div}
    features = out[FEATURES].astype(jnp.float32)
    fs, ft = _whole(features[:num_labeled]), _whole(features[num_labeled:])
    if method == "coral":
      return {f"adapt/{method}": weight * coral(fs, ft)}, {}
    if method == "mmd":
      return {f"adapt/{method}": weight * mmd(fs, ft, tuple(cfg.mmd_bandwidths))}, {}
    lam = dann_lambda(state.step, total_steps, cfg.gamma)
    # CDAN conditions on predictions but, as in its paper, sends no gradient through them.
    x = head_input(method, features, jax.lax.stop_gradient(logits.astype(jnp.float32)))
    domain_logits = DomainHead(cfg.hidden).apply({"params": params[HEAD]},
                                                 grad_reverse(x, lam))
    is_labeled = (jnp.arange(features.shape[0]) < num_labeled).astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(domain_logits, is_labeled).mean()
    accuracy = jnp.mean((domain_logits > 0) == (is_labeled > 0))
    return {f"adapt/{method}": weight * loss}, {"adapt/lambda": lam, "adapt/domain_loss": loss,
                                                "adapt/domain_accuracy": accuracy}
  return adapt_term


# ---------------------------------------------------------------------------
# What the trainer asks of a run with a target domain.
# ---------------------------------------------------------------------------
def target_splits(config, num_classes: int) -> dict:
  """The target's train (its images are the unlabeled pool), val (a labeled carve,
  adapt.target_val_per_class per class, or None) and test splits, over the same classes
  as config.data."""
  splits = data.make_splits({
      "name": config.adapt.target, "data_dir": config.data.data_dir,
      "classes": config.data.classes, "val_per_class": config.adapt.target_val_per_class,
      "skip_corrupt": config.data.skip_corrupt}, seed=config.seed)
  if splits["test"].num_classes != num_classes:
    raise ValueError(f"config field adapt.target={config.adapt.target!r} has "
                     f"{splits['test'].num_classes} classes but data.name={config.data.name!r} has "
                     f"{num_classes}; the target must share the labeled data's classes.")
  pool, train = config.adapt.get("target_pool", 0), splits["train"]
  if pool and pool < len(train):   # A random draw that never looks at a label.
    keep = np.sort(np.random.default_rng([config.seed, 2]).permutation(len(train))[:pool])
    splits["train"] = data.Subset(train.parent, train.indices[keep], train.label_map)
  return splits


@dataclasses.dataclass
class Adaptation:
  """A run with a target domain (config.adapt.target): its data, evaluations and summary.

  The labeled data (config.data) is what the run trains on; the target's train images
  join each batch unlabeled (when a method is on), its val carve is evaluated as
  "val_target", and its test split is the run's test split.
  """
  cfg: object          # config.adapt
  splits: dict         # The target's train / val / test.
  batch_size: int      # Unlabeled target images a step.

  @classmethod
  def from_config(cls, config, num_classes: int) -> "Adaptation | None":
    if not config.adapt.target:
      return None
    return cls(config.adapt, target_splits(config, num_classes),
               config.adapt.target_batch_size or config.data.batch_size)

  def training_data(self, labeled: object, config, **shard) -> object:
    """`labeled`'s batches, each with this step's unlabeled target images beside it; for a
    source-free method (tent, shot_im), the target images alone (no labeled image is read)."""
    if self.cfg.method == "none":
      return labeled
    import jax
    unlabeled = data.train_dataset(
        data.Unlabeled(self.splits["train"]), batch_size=self.batch_size // jax.process_count(),
        image_size=config.data.image_size, channels=config.data.channels,
        augment=config.data.augment, seed=data.target_seed(config.seed), labels=False, **shard)
    if self.cfg.method in SOURCE_FREE:
      return unlabeled.map(_target_only)
    return data.paired_dataset(labeled, unlabeled)

  def describe(self) -> str:
    alone = " (source-free: no labeled images)" if self.cfg.method in SOURCE_FREE else ""
    adabn = "; AdaBN before the final evaluation" if self.cfg.adabn else ""
    return (f"adapting to {self.cfg.target} with {self.cfg.method}{alone}: "
            f"{len(self.splits['train'])} unlabeled images, {self.batch_size} a step{adabn}")

  def evaluations(self) -> dict:
    """Named splits evaluated with validation: the target's labeled carve, if any."""
    return {"val_target": self.splits["val"]} if self.splits["val"] is not None else {}

  def summary(self, labeled_test: dict, target_val: dict | None) -> dict:
    """The summary's domain-adaptation fields; `labeled_test`: accuracy on config.data's test
    split (named source_test_accuracy: the source domain of the adaptation)."""
    out = {"adapt_method": self.cfg.method, "target": self.cfg.target, "adabn": self.cfg.adabn,
           "source_test_accuracy": labeled_test["accuracy"],
           "target_train_examples": len(self.splits["train"])}
    if target_val is not None:
      out["target_val_accuracy"] = target_val["accuracy"]
    return out


def _target_only(batch: dict) -> dict:
  """A source-free step's batch: no labeled images (an empty "image" and "label"), the
  target's images as data.TARGET_IMAGE."""
  images = batch["image"]
  return {"image": images[:0], "label": np.zeros((0,), np.int32), data.TARGET_IMAGE: images}
