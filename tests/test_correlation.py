"""The CCA correlation score (paper Eq. 11, Table 4) on data with known answers."""
import numpy as np
import pytest
import scipy.linalg

from mmali_jax.evaluators import correlation


def _views(n=2000, d1=6, d2=5, noise=0.05, seed=0):
  """x2 = an invertible linear map of x1's first d2 dimensions, plus noise."""
  rng = np.random.default_rng(seed)
  x1 = rng.standard_normal((n, d1)) @ rng.standard_normal((d1, d1))
  mix = rng.standard_normal((d2, d2)) + 3 * np.eye(d2)
  x2 = x1[:, :d2] @ mix + noise * rng.standard_normal((n, d2)) + 5.0
  return x1, x2


def test_linearly_related_pairs_score_near_one_and_independent_ones_near_zero():
  x1, x2 = _views()
  cca = correlation.fit(x1[:1500], x2[:1500], k=3)
  assert correlation.mean_score(cca, x1[1500:], x2[1500:]) > 0.99  # held-out pairs
  assert abs(correlation.mean_score(cca, x1[1500:], x2[1500:][::-1])) < 0.2  # shuffled pairs
  rng = np.random.default_rng(2)
  independent = correlation.fit(rng.standard_normal((5000, 6)), rng.standard_normal((5000, 5)),
                                k=3)
  a, b = rng.standard_normal((3000, 6)), rng.standard_normal((3000, 5))
  assert abs(correlation.mean_score(independent, a, b)) < 0.05


def test_matches_the_direct_solution_of_the_generalised_eigenproblem():
  x1, x2 = _views(n=300, noise=1.0)
  k, eps = 3, 1e-12
  n = len(x1)
  a1, a2 = x1 - x1.mean(0), x2 - x2.mean(0)
  c11, c22, c12 = a1.T @ a1 / (n - 1), a2.T @ a2 / (n - 1), a1.T @ a2 / (n - 1)
  d1 = x1.shape[1]
  big_a = np.zeros((d1 + 5, d1 + 5))
  big_a[:d1, d1:], big_a[d1:, :d1] = c12, c12.T
  big_b = scipy.linalg.block_diag(c11, c22)
  big_a[np.diag_indices_from(big_a)] += eps
  big_b[np.diag_indices_from(big_b)] += eps
  values, vectors = scipy.linalg.eig(big_a, big_b)  # unit-norm eigenvectors, as the reference
  order = np.argsort(values.real)[::-1][:k]
  values, vectors = values.real[order], vectors.real[:, order]

  cca = correlation.fit(x1, x2, k=k, epsilon=eps)
  np.testing.assert_allclose(cca.correlations, values, rtol=1e-6)
  ours = np.concatenate([cca.w1, cca.w2])
  signs = np.sign(np.sum(ours * vectors, axis=0))  # eigenvectors are defined up to sign
  np.testing.assert_allclose(ours * signs, vectors, atol=1e-6)
  direct = correlation.CCA(x1.mean(0), x2.mean(0), vectors[:d1], vectors[d1:], values,
                           'reference')
  np.testing.assert_allclose(correlation.pair_scores(cca, x1, x2),
                             correlation.pair_scores(direct, x1, x2), atol=1e-6)


@pytest.mark.parametrize('pairs', [None, 'repeated'])
def test_covariance_and_data_solutions_agree(pairs):
  x1, x2 = _views(n=300, noise=1.0)
  index = None
  if pairs == 'repeated':  # 3 captions per image, as CUB's 10
    x2 = x2[:100]
    index = np.stack([np.arange(300), np.arange(300) // 3], axis=1)
  a = correlation.fit(x1, x2, k=4, pairs=index, method='covariance')
  b = correlation.fit(x1, x2, k=4, pairs=index, method='data')
  np.testing.assert_allclose(a.correlations, b.correlations, rtol=1e-9)
  signs = np.sign(np.sum(a.w1 * b.w1, axis=0))
  np.testing.assert_allclose(a.w1, b.w1 * signs, atol=1e-9)
  np.testing.assert_allclose(a.w2, b.w2 * signs, atol=1e-9)


def test_scaling_invariance():
  x1, x2 = _views(noise=1.0)
  test1, test2 = _views(n=200, noise=1.0, seed=3)
  reference = correlation.mean_score(correlation.fit(x1, x2, k=3), test1, test2)
  # Rescaling all features leaves both normalisations unchanged.
  scaled = correlation.fit(7 * x1, 7 * x2, k=3)
  assert correlation.mean_score(scaled, 7 * test1, 7 * test2) == pytest.approx(reference,
                                                                               abs=1e-9)
  # Canonical coordinates: invariant to rescaling (any invertible map of) either view.
  canonical = correlation.mean_score(
      correlation.fit(x1, x2, k=3, normalization='canonical'), test1, test2)
  scale = np.arange(1, 7)
  per_view = correlation.fit(x1 * scale, 1000 * x2, k=3, normalization='canonical')
  assert correlation.mean_score(per_view, test1 * scale, 1000 * test2) == pytest.approx(
      canonical, abs=1e-9)
  # The reference's unit-norm eigenvectors weight the components by scales that rescaling
  # one view changes, so its score moves (which is why both are reported).
  moved = correlation.fit(x1 * scale, 1000 * x2, k=3)
  assert abs(correlation.mean_score(moved, test1 * scale, 1000 * test2) - reference) > 1e-4


def test_pairs_index_the_views_without_copying():
  rng = np.random.default_rng(4)
  images = rng.standard_normal((30, 5))
  captions = np.repeat(images, 10, axis=0)[:, :4] + 0.1 * rng.standard_normal((300, 4))
  pairs = np.stack([np.arange(300), np.arange(300) // 10], axis=1)
  indexed = correlation.fit(captions, images, k=2, pairs=pairs)
  copied = correlation.fit(captions, images[pairs[:, 1]], k=2)
  np.testing.assert_allclose(indexed.w2, copied.w2)
  np.testing.assert_allclose(indexed.correlations, copied.correlations)


def test_bad_arguments_are_named():
  x1, x2 = _views(n=50)
  with pytest.raises(ValueError, match='k=9 CCA components'):
    correlation.fit(x1, x2, k=9)
  with pytest.raises(ValueError, match="normalization='unit'"):
    correlation.fit(x1, x2, normalization='unit')
