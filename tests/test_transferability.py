"""jtl/diagnose/transferability.py against references written straight from the papers' formulas."""

import numpy as np
import pytest

from jtl.diagnose import transferability as tr


def blobs(rng, n, d, classes, spread):
  """Unit-noise Gaussian classes around means drawn with scale `spread`."""
  means = rng.normal(size=(classes, d)) * spread
  labels = np.arange(n) % classes
  return means[labels] + rng.normal(size=(n, d)), labels


def logme_reference(f, labels, steps=tr.LOGME_STEPS):
  """You et al. 2021 with explicit matrices: A = aI + bF^T F, m = b A^-1 F^T y, log det A."""
  n, d = f.shape
  ftf = f.T @ f
  sigma = np.linalg.eigvalsh(ftf)  # all d of them

  def posterior(a, b, y):
    big_a = a * np.eye(d) + b * ftf
    m = b * np.linalg.solve(big_a, f.T @ y)
    return big_a, m, m @ m, np.sum((f @ m - y) ** 2)

  out = []
  for k in range(labels.max() + 1):
    y = (labels == k).astype(float)
    a, b = 1.0, 1.0
    for _ in range(steps):
      _, _, m2, res2 = posterior(a, b, y)
      gamma = np.sum(b * sigma / (a + b * sigma))
      a_new, b_new = gamma / m2, (n - gamma) / res2
      done = abs(a_new / b_new - a / b) / (a / b) < 1e-3
      a, b = a_new, b_new
      if done:
        break
    big_a, _, m2, res2 = posterior(a, b, y)
    log_det = np.linalg.slogdet(big_a)[1]
    out.append((d / 2 * np.log(a) + n / 2 * np.log(b) - log_det / 2 - b / 2 * res2
                - a / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n)
  return np.mean(out)


def leep_reference(theta, labels):
  n, z_count = theta.shape
  c_count = labels.max() + 1
  joint = np.zeros((c_count, z_count))
  for i in range(n):
    for z in range(z_count):
      joint[labels[i], z] += theta[i, z] / n
  total = 0.0
  for i in range(n):
    total += np.log(sum(joint[labels[i], z] / joint[:, z].sum() * theta[i, z]
                        for z in range(z_count)))
  return total / n


def nce_reference(theta, labels):
  n = len(labels)
  pairs = {}
  for y, z in zip(labels, theta.argmax(1)):
    pairs[y, z] = pairs.get((y, z), 0) + 1
  z_counts = {}
  for (_, z), count in pairs.items():
    z_counts[z] = z_counts.get(z, 0) + count
  return sum(count / n * np.log(count / z_counts[z]) for (_, z), count in pairs.items())


def h_score_reference(f, labels):
  class_means = np.stack([f[labels == k].mean(0) for k in range(labels.max() + 1)])
  cov_f = np.cov(f, rowvar=False)
  cov_g = np.cov(class_means[labels], rowvar=False)
  return np.trace(np.linalg.solve(cov_f, cov_g))


def ridge_reference(x, y, l2):
  """Ridge with an unpenalized bias, by np.linalg.solve on [x, 1]; returns predict(x)."""
  a = np.hstack([x, np.ones((len(x), 1))])
  targets = 2 * np.eye(y.max() + 1)[y] - 1
  penalty = l2 * np.diag(np.r_[np.ones(x.shape[1]), 0.0])
  wb = np.linalg.solve(a.T @ a + penalty, a.T @ targets)
  return lambda v: v @ wb[:-1] + wb[-1]


def probs(rng, labels, good, source_classes=6):
  """A source classifier's softmax: peaked on a class tied to the label if `good`, else noise."""
  logits = rng.normal(size=(len(labels), source_classes))
  if good:
    logits[np.arange(len(labels)), (2 * labels) % source_classes] += 4.0
  return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


@pytest.mark.parametrize("n,d,spread", [(120, 10, 1.0), (20, 40, 0.3)])
def test_logme_matches_the_explicit_matrix_formulas(n, d, spread):
  f, labels = blobs(np.random.default_rng(0), n, d, classes=4, spread=spread)
  np.testing.assert_allclose(tr.logme(f, labels), logme_reference(f, labels), rtol=1e-6)


def test_logme_settles_when_the_features_fit_the_labels_exactly(monkeypatch):
  # n < d: F can fit any y, so beta runs off to infinity while the evidence settles. The
  # explicit A = aI + bF^T F is only well conditioned for the first steps.
  f, labels = blobs(np.random.default_rng(2), 16, 48, classes=2, spread=1.0)
  monkeypatch.setattr(tr, "LOGME_STEPS", 8)
  early = tr.logme(f, labels)
  np.testing.assert_allclose(early, logme_reference(f, labels, steps=8), rtol=1e-8)
  monkeypatch.setattr(tr, "LOGME_STEPS", 100)
  np.testing.assert_allclose(tr.logme(f, labels), early, atol=1e-5)


def test_leep_and_nce_match_loops_and_count_tables():
  rng = np.random.default_rng(1)
  labels = np.arange(60) % 3
  theta = probs(rng, labels, good=True)
  np.testing.assert_allclose(tr.leep(theta, labels), leep_reference(theta, labels), rtol=1e-10)
  np.testing.assert_allclose(tr.nce(theta, labels), nce_reference(theta, labels), rtol=1e-10)


def test_h_score_matches_np_cov_and_saturates_when_n_is_at_most_d():
  rng = np.random.default_rng(2)
  f, labels = blobs(rng, 150, 12, classes=3, spread=0.7)
  np.testing.assert_allclose(tr.h_score(f, labels), h_score_reference(f, labels), rtol=1e-8)
  # n <= d: the features separate any labeling, so H-score is at its ceiling C - 1.
  f, labels = blobs(rng, 20, 40, classes=3, spread=0.1)
  np.testing.assert_allclose(tr.h_score(f, labels), 2.0, rtol=1e-6)


@pytest.mark.parametrize("d", [5, 30])
def test_ridge_fit_matches_a_direct_solve_on_standardized_features(d):
  rng = np.random.default_rng(3)
  x, y = blobs(rng, 24, d, classes=3, spread=0.5)
  x = x * rng.uniform(0.5, 5, size=d) + rng.normal(size=d) * 3  # standardizing must matter
  test_x, test_y = blobs(rng, 40, d, classes=3, spread=0.5)
  mean, std = x.mean(0), x.std(0)
  expected = ridge_reference((x - mean) / std, y, 2.0)((test_x - mean) / std)
  w, b, l2, _ = tr.ridge_fit(x, y, l2s=2.0)
  assert l2 == 2.0
  np.testing.assert_allclose(test_x @ w + b, expected, rtol=1e-8, atol=1e-8)
  accuracy = np.mean(expected.argmax(1) == test_y)
  assert tr.ridge_probe(x, y, test_x, test_y, l2s=2.0) == accuracy


@pytest.mark.parametrize("d", [4, 30])  # n > d and d > n
def test_ridge_leave_one_out_matches_refits_without_each_point(d):
  rng = np.random.default_rng(4)
  x, y = blobs(rng, 15, d, classes=3, spread=0.6)
  l2s = 2.0 ** np.arange(-4, 8, 2)
  _, _, l2, loo = tr.ridge_fit(x, y, l2s)
  z = (x - x.mean(0)) / x.std(0)
  targets = 2 * np.eye(3)[y] - 1
  rest = lambda i: np.arange(len(x)) != i
  brute = [np.mean([(ridge_reference(z[rest(i)], y[rest(i)], l2_)(z[i]) - targets[i]) ** 2
                    for i in range(len(x))]) for l2_ in l2s]
  np.testing.assert_allclose(loo, brute, rtol=1e-8)
  assert l2 == l2s[np.argmin(brute)]


def test_knn_votes_by_cosine_and_breaks_ties_toward_the_nearest():
  # Points at 10, 20, 30, 40, 50 degrees from the query [1, 0]; the nearest is also the
  # farthest in Euclidean distance, so only cosine puts it first.
  angles = np.deg2rad([10, 20, 30, 40, 50])
  train_x = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[20.0], [1], [1], [1], [1]])
  train_y = np.array([1, 0, 0, 1, 1])
  query = np.array([[1.0, 0.0]])
  votes = {k: tr.knn_probe(train_x, train_y, query, np.array([1]), k=k) for k in range(1, 6)}
  # k=2 and k=4 are ties, which go to the nearest neighbour's class, 1; k=3 is 2 votes to 1.
  assert votes == {1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 1.0}


def test_every_score_ranks_separable_features_above_overlapping_ones():
  rng = np.random.default_rng(5)
  scores = {}
  for name, spread in [("separable", 3.0), ("overlapping", 0.2)]:
    rng_case = np.random.default_rng(6)  # the same noise for both cases
    means = rng_case.normal(size=(4, 16))
    labels = np.arange(160) % 4
    f = spread * means[labels] + rng_case.normal(size=(160, 16))
    val_labels = np.arange(80) % 4
    val = spread * means[val_labels] + rng_case.normal(size=(80, 16))
    theta = probs(rng, labels, good=name == "separable")
    scores[name] = tr.score(f, labels, source_probs=theta, val_features=val,
                            val_labels=val_labels)
  assert list(scores["separable"]) == list(tr.SCORES)
  for name in tr.SCORES:
    good, bad = scores["separable"][name][0], scores["overlapping"][name][0]
    assert good > bad, (name, good, bad)


def test_score_pools_maps_and_leaves_out_what_it_cannot_compute():
  rng = np.random.default_rng(7)
  maps = rng.normal(size=(30, 3, 3, 8))
  labels = np.arange(30) % 3
  scores = tr.score(maps, labels)
  assert scores["logme"][0] == pytest.approx(tr.logme(maps.mean(axis=(1, 2)), labels))
  assert [name for name, (value, _) in scores.items() if value is None] == [
      "leep", "nce", "ridge", "knn"]
  assert all(seconds > 0 for value, seconds in scores.values() if value is not None)


def test_errors_name_the_problem():
  rng = np.random.default_rng(8)
  f = rng.normal(size=(10, 4))
  with pytest.raises(ValueError, match=r"shape \(10,\) to match features; got \(9,\)"):
    tr.logme(f, np.arange(9) % 2)
  with pytest.raises(ValueError, match="at least 2 classes"):
    tr.h_score(f, np.zeros(10, int))
  with pytest.raises(ValueError, match="0..C-1 with every class present"):
    tr.logme(f, np.arange(10) % 2 * 2)  # classes 0 and 2
  with pytest.raises(ValueError, match="probabilities"):
    tr.leep(rng.normal(size=(10, 5)), np.arange(10) % 2)  # logits, not probabilities
  with pytest.raises(ValueError, match="feature size"):
    tr.knn_probe(f, np.arange(10) % 2, f[:, :3], np.arange(10) % 2)
