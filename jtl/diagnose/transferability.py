"""Transferability estimates: how well a frozen source model should transfer to a target task.

Each score is computed from the source model's features (or its class predictions) on the
target's labeled train split, before any training. Higher is better for all of them.

| score   | what it is |
|---|---|
| logme   | LogME (You et al. 2021): the evidence (log marginal likelihood) of a Bayesian linear model from the features to each one-hot label column, per example, mean over classes |
| leep    | LEEP (Nguyen et al. 2020): mean log-likelihood of the target labels when the source model's predictions theta(z) are mapped to target labels through the empirical P(y|z) |
| nce     | NCE (Tran et al. 2019): -H(Y|Z), Z the source model's top-1 class |
| h_score | H-score (Bao et al. 2019): tr(cov(f)^+ cov(E[f|y])), the feature variance that lies between classes. It reaches its ceiling C-1 whenever n <= d + 1, so it only ranks feature sets with n > d |
| ridge   | few-shot linear probe in the manner of big_vision's fewshot evaluator: closed-form ridge regression onto {-1, +1} one-hot targets, L2 chosen by leave-one-out error; accuracy on a held-out split |
| knn     | cosine k-nearest-neighbour accuracy on a held-out split |

>>> feats = pool(activations)                      # (n, h, w, c) -> (n, c)
>>> score(feats, labels, source_probs=probs, val_features=val_feats, val_labels=val_labels)
{'logme': (0.41, 0.02), 'leep': (-1.3, 0.001), ..., 'knn': (0.72, 0.01)}
"""

from __future__ import annotations

import time

import numpy as np

SCORES = {
  "logme": "LogME evidence per example, mean over classes (You et al. 2021)",
  "leep": "log expected empirical prediction (Nguyen et al. 2020); needs source_probs",
  "nce": "negative conditional entropy -H(Y|Z) (Tran et al. 2019); needs source_probs",
  "h_score": "tr(cov(f)^+ cov(E[f|y])) (Bao et al. 2019)",
  "ridge": "ridge-probe accuracy on the val split, L2 by leave-one-out (big_vision few-shot)",
  "knn": "cosine 1-NN accuracy on the val split",
}
LOGME_STEPS = 20  # the fixed point usually settles in 2-3 steps (You et al. 2021)


def _features(x, name: str = "features") -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must have shape (n, d); got {x.shape}. Pool (n, h, w, c) "
                     "activations with pool() first.")
  return x


def _labels(labels, n: int, name: str = "features") -> tuple[np.ndarray, int]:
  """Checks that labels are n integers 0..C-1 with every class present and C >= 2."""
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},) to match {name}; got {labels.shape}.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers 0..C-1; got dtype {labels.dtype}.")
  classes = np.unique(labels)
  if len(classes) < 2:
    raise ValueError(f"labels must hold at least 2 classes; got only {classes.tolist()}.")
  if classes[0] != 0 or classes[-1] != len(classes) - 1:
    raise ValueError(f"labels must be 0..C-1 with every class present; got {len(classes)} "
                     f"classes from {classes[0]} to {classes[-1]}.")
  return labels, len(classes)


def _probs(source_probs) -> np.ndarray:
  theta = _features(source_probs, "source_probs")
  sums = theta.sum(1)
  if theta.min() < 0 or not np.allclose(sums, 1, atol=1e-3):
    raise ValueError("source_probs must be probabilities (rows >= 0 summing to 1); got row sums "
                     f"from {sums.min():.4g} to {sums.max():.4g}. Pass softmax(logits).")
  return theta


def pool(x) -> np.ndarray:
  """Global average pool: (n, h, w, c) -> (n, c); (n, c) passes through.

  >>> pool(np.ones((8, 7, 7, 512))).shape
  (8, 512)
  """
  x = np.asarray(x)
  if x.ndim == 4:
    return x.mean(axis=(1, 2), dtype=np.float64)
  if x.ndim == 2:
    return x.astype(np.float64)
  raise ValueError(f"pool expects (n, h, w, c) or (n, c) features; got shape {x.shape}.")


def logme(features, labels) -> float:
  """LogME (You et al. 2021, Algorithm 1): evidence per example, mean over classes.

  alpha (prior precision) and beta (noise precision) are set by MacKay's fixed point; the
  evidence is then taken at the final alpha, beta.

  >>> logme(np.random.randn(100, 8), np.arange(100) % 4)
  """
  f = _features(features)
  labels, num_classes = _labels(labels, len(f))
  n, d = f.shape
  u, s, _ = np.linalg.svd(f, full_matrices=False)
  sigma = s ** 2  # eigenvalues of F^T F; the other d - len(s) of them are 0

  evidence = []
  for k in range(num_classes):
    y = (labels == k).astype(np.float64)
    x = u.T @ y
    # The part of y outside F's column space; none when n <= d (then u is n x n).
    outside = np.sum((y - u @ x) ** 2) if n > d else 0.0

    def fit(alpha, beta):
      """Returns ||m||^2 and ||Fm - y||^2 for the posterior mean m."""
      shrink = 1 / (alpha + beta * sigma)
      return np.sum((beta * s * x * shrink) ** 2), np.sum((alpha * x * shrink) ** 2) + outside

    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_STEPS):
      m2, res2 = fit(alpha, beta)
      gamma = np.sum(beta * sigma / (alpha + beta * sigma))
      # n - gamma, written without cancellation: when F fits y exactly (n <= d), beta -> inf,
      # gamma -> n, and the evidence settles to a finite limit.
      rest = n - len(s) + np.sum(alpha / (alpha + beta * sigma))
      new_alpha, new_beta = gamma / m2, rest / res2
      done = abs(new_alpha / new_beta - alpha / beta) < 1e-3 * (alpha / beta)
      alpha, beta = new_alpha, new_beta
      if done:
        break
    m2, res2 = fit(alpha, beta)
    log_det = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * np.log(alpha)
    evidence.append((d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2
                     - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n)
  return float(np.mean(evidence))


def leep(source_probs, labels) -> float:
  """LEEP (Nguyen et al. 2020) from the source model's class probabilities, shape (n, Z).

  >>> leep(softmax(source_logits), labels)
  """
  theta = _probs(source_probs)
  labels, num_classes = _labels(labels, len(theta), "source_probs")
  joint = np.eye(num_classes)[labels].T @ theta / len(theta)  # P(y, z)
  p_z = joint.sum(0)
  cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)  # P(y | z)
  return float(np.mean(np.log(np.sum(theta * cond[labels], axis=1))))


def nce(source_probs, labels) -> float:
  """NCE (Tran et al. 2019): -H(Y|Z) with Z the source model's top-1 class.

  >>> nce(softmax(source_logits), labels)
  """
  theta = _probs(source_probs)
  labels, num_classes = _labels(labels, len(theta), "source_probs")
  joint = np.zeros((num_classes, theta.shape[1]))
  np.add.at(joint, (labels, theta.argmax(1)), 1 / len(theta))
  cond = np.divide(joint, joint.sum(0), out=np.ones_like(joint), where=joint > 0)
  return float(np.sum(joint * np.log(cond)))


def h_score(features, labels) -> float:
  """H-score (Bao et al. 2019): tr(cov(f)^+ cov(E[f|y])).

  >>> h_score(np.random.randn(100, 8), np.arange(100) % 4)
  """
  f = _features(features)
  labels, num_classes = _labels(labels, len(f))
  f = f - f.mean(0)
  means = np.zeros((num_classes, f.shape[1]))
  np.add.at(means, labels, f)
  g = (means / np.bincount(labels)[:, None])[labels]  # each example's class-mean feature
  cov_f, cov_g = f.T @ f / len(f), g.T @ g / len(f)
  return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def ridge_fit(x, y, l2s=None):
  """Ridge regression with an unpenalized bias from standardized x to {-1, +1} one-hot y.

  The L2 is the one in `l2s` (default 2^-10 ... 2^10 times n) with the lowest leave-one-out
  squared error, read off the hat matrix's diagonal. Returns (w, b, l2, loo): predictions are
  x @ w + b on the raw features, loo the leave-one-out error of each l2 in turn.

  >>> w, b, l2, loo = ridge_fit(train_x, train_y)
  """
  x = _features(x, "train_x")
  y, num_classes = _labels(y, len(x), "train_x")
  n = len(x)
  l2s = np.atleast_1d(np.asarray(2.0 ** np.arange(-10, 11, 2) * n if l2s is None else l2s,
                                 np.float64))
  mean, std = x.mean(0), np.maximum(x.std(0), 1e-6)  # the floor guards constant features
  targets = 2 * np.eye(num_classes)[y] - 1
  bias = targets.mean(0)  # the standardized features have mean 0, so this is the exact bias
  # Thin SVD: U is n x min(n, d), so for d > n this costs what the n x n kernel form does.
  u, s, vt = np.linalg.svd((x - mean) / std, full_matrices=False)
  uy = u.T @ (targets - bias)
  loo = []
  for l2 in l2s:
    shrink = s ** 2 / (s ** 2 + l2)
    resid = targets - bias - u @ (shrink[:, None] * uy)
    hat = 1 / n + (u ** 2) @ shrink
    loo.append(np.mean((resid / (1 - hat)[:, None]) ** 2))
  l2 = l2s[np.argmin(loo)]
  w = vt.T @ ((s / (s ** 2 + l2))[:, None] * uy) / std[:, None]
  return w, bias - mean @ w, float(l2), np.array(loo)


def _split(train_x, train_y, test_x, test_y):
  train_x, test_x = _features(train_x, "train_x"), _features(test_x, "test_x")
  if train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"train_x and test_x must have the same feature size; got "
                     f"{train_x.shape[1]} and {test_x.shape[1]}.")
  test_y = np.asarray(test_y)
  if test_y.shape != (len(test_x),) or not np.issubdtype(test_y.dtype, np.integer):
    raise ValueError(f"test_y must be {len(test_x)} integer labels to match test_x; got "
                     f"shape {test_y.shape}, dtype {test_y.dtype}.")
  return train_x, train_y, test_x, test_y


def ridge_probe(train_x, train_y, test_x, test_y, l2s=None) -> float:
  """Accuracy on test of the ridge probe fit on train (see ridge_fit).

  >>> ridge_probe(train_x, train_y, test_x, test_y)           # L2 by leave-one-out
  >>> ridge_probe(train_x, train_y, test_x, test_y, l2s=1.0)  # a fixed L2
  """
  train_x, train_y, test_x, test_y = _split(train_x, train_y, test_x, test_y)
  w, b, _, _ = ridge_fit(train_x, train_y, l2s)
  return float(np.mean((test_x @ w + b).argmax(1) == test_y))


def knn_probe(train_x, train_y, test_x, test_y, k: int = 1) -> float:
  """Cosine k-NN accuracy; majority vote, ties to the class of the nearest neighbour.

  >>> knn_probe(train_x, train_y, test_x, test_y, k=5)
  """
  # Hand-written on purpose, not scikit-learn's: KNeighborsClassifier breaks a tied vote
  # toward the lowest class label, not the nearest neighbour's class, and NearestNeighbors
  # orders equal distances (duplicate images give identical features) as its partial sort
  # leaves them, not first in train order, so on ties both give other results than this.
  train_x, train_y, test_x, test_y = _split(train_x, train_y, test_x, test_y)
  train_y, num_classes = _labels(train_y, len(train_x), "train_x")
  unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  train_x, test_x = unit(train_x), unit(test_x)
  k = min(k, len(train_x))
  correct = 0
  for start in range(0, len(test_x), 1024):  # bounds the (test, train) similarity matrix
    sim = test_x[start:start + 1024] @ train_x.T
    votes = train_y[np.argsort(-sim, axis=1, kind="stable")[:, :k]]  # nearest first
    rows = np.arange(len(votes))[:, None]
    counts = np.zeros((len(votes), num_classes))
    np.add.at(counts, (rows, votes), 1)
    top = counts[rows, votes] == counts.max(1, keepdims=True)
    pred = votes[rows[:, 0], top.argmax(1)]  # the nearest neighbour with a top-voted class
    correct += np.sum(pred == test_y[start:start + 1024])
  return float(correct / len(test_x))


def score(features, labels, *, source_probs=None, val_features=None,
          val_labels=None) -> dict[str, tuple[float | None, float]]:
  """Every score in SCORES as name -> (value, seconds); None where its inputs are missing.

  LEEP and NCE need source_probs; ridge and knn need a val split.

  >>> score(feats, labels, source_probs=probs, val_features=val_feats, val_labels=val_labels)
  """
  if (val_features is None) != (val_labels is None):
    raise ValueError("pass both val_features and val_labels, or neither.")
  features = pool(features)
  has_probs, has_val = source_probs is not None, val_features is not None
  val_features = pool(val_features) if has_val else None
  runs = {
    "logme": lambda: logme(features, labels),
    "leep": lambda: leep(source_probs, labels) if has_probs else None,
    "nce": lambda: nce(source_probs, labels) if has_probs else None,
    "h_score": lambda: h_score(features, labels),
    "ridge": lambda: ridge_probe(features, labels, val_features, val_labels) if has_val else None,
    "knn": lambda: knn_probe(features, labels, val_features, val_labels) if has_val else None,
  }
  out = {}
  for name, run in runs.items():
    start = time.perf_counter()
    value = run()
    out[name] = (value, time.perf_counter() - start)
  return out
