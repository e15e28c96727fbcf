"""The CCA correlation score of paired feature vectors (paper Eq. 11, Table 4; docs §9.4).

CCA is fitted once on all training pairs; a pair (x1, x2) then scores the cosine of its two
projections, cos((x1 - mean1) W1, (x2 - mean2) W2). Pure numpy/SciPy functions, float64.

The projections are the top-k solutions of the generalised eigenproblem A v = rho B v, with
A = [[0, C12], [C21, 0]] and B = blockdiag(C11, C22) (covariances over N - 1, epsilon added to
both diagonals), v = [w1; w2] split into W1 and W2. It is solved by whitening and an SVD
(C11^-1/2 C12 C22^-1/2 = U S V^T, w1 = C11^-1/2 u, w2 = C22^-1/2 v, rho = s), which is stable
where B is nearly singular, instead of the reference's general `scipy.linalg.eig(A, B)`; with fewer
pairs than dimensions, from SVDs of the centred views instead of the D x D covariances.

The scale of each column of W matters: the cosine weights the k components by it.
- 'reference': every stacked eigenvector [w1; w2] has unit Euclidean norm, as SciPy's `eig`
  returns them to the reference; comparable with the paper's numbers. Not invariant to
  rescaling one view (it changes the columns' relative norms).
- 'canonical': every projected coordinate has unit variance on the training pairs (textbook
  CCA); the score is then invariant to any invertible linear map of either view.
"""
import dataclasses

import numpy as np

NORMALIZATIONS = ('reference', 'canonical')
_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class CCA:
  mean1: np.ndarray  # [D1]
  mean2: np.ndarray  # [D2]
  w1: np.ndarray  # [D1, k]
  w2: np.ndarray  # [D2, k]
  correlations: np.ndarray  # [k], decreasing
  normalization: str  # of the columns of w1, w2: one of NORMALIZATIONS


def _rows(x, index, start, stop):
  rows = x[start:stop] if index is None else x[index[start:stop]]
  return np.asarray(rows, np.float64)


def covariances(x1, x2, pairs=None, chunk=_CHUNK):
  """(mean1, mean2, C11, C22, C12) over the pairs (x1[pairs[p, 0]], x2[pairs[p, 1]]), or
  (x1[p], x2[p]) without `pairs`; covariances divided by N - 1; computed in chunks."""
  i1, i2 = (None, None) if pairs is None else (np.asarray(pairs)[:, 0], np.asarray(pairs)[:, 1])
  n = len(x1) if pairs is None else len(pairs)
  if n < 2:
    raise ValueError(f'CCA needs at least 2 pairs, got {n}.')
  if pairs is None and len(x2) != n:
    raise ValueError(f'The two views have {n} and {len(x2)} rows; they must be paired.')
  mean1 = sum(_rows(x1, i1, s, s + chunk).sum(0) for s in range(0, n, chunk)) / n
  mean2 = sum(_rows(x2, i2, s, s + chunk).sum(0) for s in range(0, n, chunk)) / n
  d1, d2 = mean1.shape[0], mean2.shape[0]
  c11, c22, c12 = np.zeros((d1, d1)), np.zeros((d2, d2)), np.zeros((d1, d2))
  for s in range(0, n, chunk):
    a = _rows(x1, i1, s, s + chunk) - mean1
    b = _rows(x2, i2, s, s + chunk) - mean2
    c11 += a.T @ a
    c22 += b.T @ b
    c12 += a.T @ b
  return mean1, mean2, c11 / (n - 1), c22 / (n - 1), c12 / (n - 1)


def _inverse_sqrt(c, epsilon):
  values, vectors = np.linalg.eigh(c)
  # Rounding can leave the eigenvalues of a singular covariance slightly negative.
  values = np.maximum(values, epsilon)
  return (vectors / np.sqrt(values)) @ vectors.T


def fit(x1, x2, k=40, epsilon=1e-12, pairs=None, normalization='reference', method='auto'):
  """The CCA of the paired views (see the module docstring); k <= min(D1, D2).

  method: 'covariance' (D x D covariances accumulated over chunks of pairs: memory independent of
  N), 'data' (SVDs of the centred N x D views: cheaper when N is below the dimensions), or
  'auto' (data when N < D1 + D2). Both solve the same problem.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'normalization={normalization!r}; choose one of {NORMALIZATIONS}.')
  n = len(x1) if pairs is None else len(pairs)
  d1, d2 = np.shape(x1)[1], np.shape(x2)[1]
  k = int(k)
  if not 1 <= k <= min(d1, d2):
    raise ValueError(f'k={k} CCA components, but the views have {d1} and {d2} dimensions.')
  if method == 'auto':
    method = 'data' if n < d1 + d2 else 'covariance'
  if method == 'covariance':
    cca = _fit_covariance(x1, x2, k, epsilon, pairs)
  elif method == 'data':
    cca = _fit_data(x1, x2, k, epsilon, pairs)
  else:
    raise ValueError(f"method={method!r}; choose 'auto', 'covariance' or 'data'.")
  return renormalize(cca, normalization)


def _fit_covariance(x1, x2, k, epsilon, pairs):
  mean1, mean2, c11, c22, c12 = covariances(x1, x2, pairs)
  c11 = c11 + epsilon * np.eye(c11.shape[0])
  c22 = c22 + epsilon * np.eye(c22.shape[0])
  r1, r2 = _inverse_sqrt(c11, epsilon), _inverse_sqrt(c22, epsilon)
  u, s, vt = np.linalg.svd(r1 @ c12 @ r2)
  # Canonical: unit variance per projected coordinate. The eigenproblem's eigenvalue also
  # carries epsilon on A's diagonal (the reference adds it there too): (A + eps I) v = rho B v
  # shifts rho by eps |v|^2 / v^T B v, far below float precision here.
  return CCA(mean1, mean2, r1 @ u[:, :k], r2 @ vt[:k].T, s[:k], 'canonical')


def _fit_data(x1, x2, k, epsilon, pairs):
  """The same solution from thin SVDs X_c = U S V^T of the centred views: C11 + eps I has
  eigenvalues S^2 / (N - 1) + eps on V (eps elsewhere, where C12 vanishes), so
  C11^-1/2 C12 C22^-1/2 = V1 M V2^T with the small M = diag(a1) U1^T U2 diag(a2) / (N - 1),
  a = S / sqrt(S^2 / (N - 1) + eps)."""
  n = len(x1) if pairs is None else len(pairs)
  if n < 2:
    raise ValueError(f'CCA needs at least 2 pairs, got {n}.')
  views = []
  for x, column in ((x1, 0), (x2, 1)):
    rows = np.asarray(x if pairs is None else x[np.asarray(pairs)[:, column]], np.float64)
    mean = rows.mean(0)
    u, sv, vt = np.linalg.svd(rows - mean, full_matrices=False)
    scale = 1.0 / np.sqrt(sv ** 2 / (n - 1) + epsilon)
    views.append((mean, u, sv * scale, vt.T * scale))
  (mean1, u1, a1, b1), (mean2, u2, a2, b2) = views
  p, s, qt = np.linalg.svd((a1[:, None] * (u1.T @ u2) * a2[None, :]) / (n - 1))
  if k > len(s):
    raise ValueError(f'k={k} CCA components, but {n} pairs determine at most {len(s)}.')
  return CCA(mean1, mean2, b1 @ p[:, :k], b2 @ qt[:k].T, s[:k], 'canonical')


def renormalize(cca, normalization):
  """The same projections with each column scaled as `normalization` says; `cca` must be
  canonical (as `fit` computes it first), since the reference scaling loses the variances."""
  if cca.normalization == normalization:
    return cca
  if cca.normalization != 'canonical' or normalization not in NORMALIZATIONS:
    raise ValueError(f'Cannot renormalize a {cca.normalization!r} CCA to {normalization!r}.')
  scale = 1.0 / np.sqrt((cca.w1 ** 2).sum(0) + (cca.w2 ** 2).sum(0))
  return dataclasses.replace(cca, w1=cca.w1 * scale, w2=cca.w2 * scale,
                             normalization=normalization)


def pair_scores(cca, x1, x2):
  """Per pair: cos((x1 - mean1) W1, (x2 - mean2) W2), float64 [N]."""
  p1 = (np.asarray(x1, np.float64) - cca.mean1) @ cca.w1
  p2 = (np.asarray(x2, np.float64) - cca.mean2) @ cca.w2
  norms = np.maximum(np.linalg.norm(p1, axis=1) * np.linalg.norm(p2, axis=1), 1e-300)
  return np.sum(p1 * p2, axis=1) / norms


def mean_score(cca, x1, x2, chunk=_CHUNK):
  """The mean of `pair_scores` over all pairs (the reference: a mean of per-batch means)."""
  n = len(x1)
  total = sum(pair_scores(cca, x1[s:s + chunk], x2[s:s + chunk]).sum()
              for s in range(0, n, chunk))
  return float(total / n)
