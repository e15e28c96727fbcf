"""Each loss term against values computed by hand on tiny tensors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax import losses
from mmali_jax import posterior
from mmali_jax.objectives import factorized

LOGITS = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)


def _log_softmax(row):
  row = np.asarray(row, np.float64)
  return row - math.log(sum(math.exp(v) for v in row))


def test_cross_entropy_by_hand():
  expected = -(_log_softmax(LOGITS[0])[1] + _log_softmax(LOGITS[1])[1]) / 2
  np.testing.assert_allclose(losses.cross_entropy(LOGITS, 1), expected, rtol=1e-6)
  # Uniform logits: log(3) for any label.
  np.testing.assert_allclose(losses.cross_entropy(LOGITS[1:], 2), math.log(3), rtol=1e-6)


@pytest.mark.parametrize('true_class', [0, 1, 2])
def test_non_saturating_is_mean_cross_entropy_over_wrong_labels(true_class):
  wrong = [l for l in range(3) if l != true_class]
  expected = np.mean([-np.mean([_log_softmax(r)[l] for r in LOGITS]) for l in wrong])
  np.testing.assert_allclose(losses.non_saturating(LOGITS, true_class), expected, rtol=1e-6)


def test_binary_real_vs_fake_by_hand():
  real, fake = np.array([1.0, -2.0]), np.array([0.5, 3.0])
  softplus = lambda v: math.log1p(math.exp(v))
  expected = np.mean([softplus(-1.0), softplus(2.0)]) + np.mean([softplus(0.5), softplus(3.0)])
  np.testing.assert_allclose(losses.binary_real_vs_fake(real, fake), expected, rtol=1e-6)
  assert losses.d_content_vs_prior(real, fake) == losses.binary_real_vs_fake(real, fake)
  assert losses.d_paired_vs_marginals(real, fake) == losses.binary_real_vs_fake(real, fake)


def test_discriminator_class_terms():
  np.testing.assert_allclose(losses.d_unimodal_encoder(LOGITS), losses.cross_entropy(LOGITS, 0))
  np.testing.assert_allclose(losses.d_unimodal_decoder(LOGITS), losses.cross_entropy(LOGITS, 1))
  np.testing.assert_allclose(losses.d_cross_content(LOGITS, 2), losses.cross_entropy(LOGITS, 2))


def test_generator_terms_are_weighted_non_saturating_losses():
  num, lam = 2, 0.1
  w = 2.0 / 3.0
  assert losses.generator_weight(num) == pytest.approx(w)
  assert losses.generator_weight(4) == pytest.approx(0.4)
  ns = lambda k: float(losses.non_saturating(LOGITS, k))
  np.testing.assert_allclose(losses.g_unimodal(LOGITS, LOGITS[::-1], num, lam),
                             lam * w * (ns(0) + float(losses.non_saturating(LOGITS[::-1], 1))),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.g_cross_content(LOGITS, 2, num, lam), lam * w * ns(2),
                             rtol=1e-6)
  # The joint logits have M + 1 = 3 classes, so the weight is again 2 / 3.
  np.testing.assert_allclose(losses.g_joint_class(LOGITS, 2), w * ns(2), rtol=1e-6)


def test_mean_squared_error():
  np.testing.assert_allclose(losses.mean_squared_error(np.array([1.0, 3.0]), np.array([0.0, 1.0])),
                             2.5)


def test_factorized_logits_layout():
  a = np.array([[1.0], [2.0]])  # [M, B]
  b = np.array([[0.5], [-0.5]])
  t = np.array([0.25])
  logits = np.asarray(losses.factorized_logits(a, b, t))
  np.testing.assert_allclose(logits, [[0.5, -0.5, -(0.25 + (1.0 - 0.5) + (2.0 + 0.5))]])
  np.testing.assert_allclose(losses.unimodal_log_ratio(np.array([[3.0, 1.0, 7.0]])), [2.0])


@pytest.mark.parametrize('num', [2, 3, 4])
def test_factorized_logits_give_the_optimal_posterior_of_eq6(num):
  """Densities at one point -> sub-discriminator log-ratios -> logits -> D* = q_i / (sum q + p)."""
  rng = np.random.default_rng(num)
  q_joint_x = rng.uniform(0.1, 1.0)  # q(x_1..x_M)
  q_x = rng.uniform(0.1, 1.0, num)  # q(x_k)
  q_xsc = rng.uniform(0.1, 1.0, num)  # q(x_m, s_m, c) with c from modality m's encoder
  q_xs = rng.uniform(0.1, 1.0, num)  # q(x_m, s_m)
  p_c = rng.uniform(0.1, 1.0)  # p(c)
  p_xsc = rng.uniform(0.1, 1.0, num)  # p(x_m, s_m, c)
  # Eq. 10: r_i = q(X) / prod q(x_k) * q(x_i,s_i,c) / (q(x_i,s_i) p(c))
  #              * prod_j q(x_j,s_j) p(c) / p(x_j,s_j,c)
  ratios = (q_joint_x / np.prod(q_x) * q_xsc / (q_xs * p_c) * np.prod(q_xs * p_c / p_xsc))
  optimal = np.append(ratios, 1.0) / (np.sum(ratios) + 1.0)  # Eq. 6, densities over p

  a = np.log(q_xsc / p_xsc)[:, None]
  b = np.log(q_xsc / (q_xs * p_c))[:, None]
  t = np.log(q_joint_x / np.prod(q_x))[None]
  posterior_probs = jax.nn.softmax(losses.factorized_logits(a, b, t), axis=-1)
  np.testing.assert_allclose(posterior_probs[0], optimal, rtol=1e-5)


def test_cross_content_labels_follow_sorted_order():
  # M = 4, m = 1: content of modality 0 -> 2, of 2 -> 3, of 3 -> 4 (docs/algorithm.md §2.3).
  assert [factorized.cross_content_label(1, j) for j in (0, 2, 3)] == [2, 3, 4]
  assert [factorized.cross_content_label(0, j) for j in (1, 2, 3)] == [2, 3, 4]
  assert [factorized.cross_content_label(3, j) for j in (0, 1, 2)] == [2, 3, 4]


def test_product_of_experts_by_hand():
  means = np.array([[[1.0]], [[3.0]]])
  logvars = np.log(np.array([[[1.0]], [[3.0]]]))  # precisions 1 and 1/3
  mean, logvar = posterior.product_of_experts(means, logvars, average=False)
  np.testing.assert_allclose(mean, [[(1.0 * 1 + 3.0 / 3) / (4 / 3)]], rtol=1e-6)
  np.testing.assert_allclose(np.exp(logvar), [[3 / 4]], rtol=1e-6)
  _, avg_logvar = posterior.product_of_experts(means, logvars, average=True)
  np.testing.assert_allclose(np.exp(avg_logvar), [[3 / 2]], rtol=1e-6)  # mean precision 2/3


def test_sample_has_the_posterior_moments():
  mean = jnp.full((20000, 2), 1.5)
  logvar = jnp.log(jnp.full((20000, 2), 4.0))
  z = posterior.sample(jax.random.PRNGKey(0), mean, logvar)
  np.testing.assert_allclose(z.mean(0), 1.5, atol=0.05)
  np.testing.assert_allclose(z.std(0), 2.0, atol=0.05)
