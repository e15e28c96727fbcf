"""Every loss term of MMALI as a small pure function over discriminator outputs.

Notation (docs/algorithm.md §1-§4): M modalities; q_m(X, z) = q(X) q(z|x_m) is encoder class m,
p(X, z) = p(z) prod_m p(x_m|z) is the decoder class M. z = [s | c] (style | content).
All functions return batch means; the objectives add them up unweighted unless a weight is named.
"""
import jax
import jax.numpy as jnp


def cross_entropy(logits, label):
  """Mean over the batch of -log softmax(logits)[label]; `label` is a class index."""
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, label])


def non_saturating(logits, true_class):
  """Multi-class non-saturating generator loss NS_k: the mean CE over the M wrong labels.

  For a sample of class k among M+1 classes, (1/M) sum_{l != k} CE(logits, l) pushes the
  discriminator's belief away from the true class towards every other one (Dandi et al. 2021).
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  num_classes = logits.shape[-1]
  wrong = jnp.arange(num_classes) != true_class
  return -jnp.mean(jnp.sum(jnp.where(wrong, log_probs, 0.0), axis=-1)) / (num_classes - 1)


def binary_real_vs_fake(real_logits, fake_logits):
  """Logistic loss of a binary critic: softplus(-real) + softplus(fake), batch means."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_weight(num_modalities):
  """w = 2 / (M + 1), the weight of every adversarial generator term."""
  return 2.0 / (num_modalities + 1)


# --- The factorized (M+1)-way discriminator (Eq. 10) -------------------------------------------


def factorized_logits(unimodal_log_ratios, content_log_ratios, joint_log_ratio):
  """Combines the sub-discriminators into the (M+1)-way logits of the joint discriminator.

  unimodal_log_ratios: [M, B], a_m = D0_m[0] - D0_m[1] ~ log q(x_m, s_m, c) / p(x_m, s_m, c).
  content_log_ratios: [M, B], b_m = D1_m ~ log q(x_m, s_m, c) / q(x_m, s_m) p(c).
  joint_log_ratio: [B], T ~ log q(x_1..x_M) / prod_m q(x_m).

  Returns [B, M+1] = [b_1, ..., b_M, -(T + sum_m (a_m - b_m))]. Since log r_i = log q_i / p =
  T + b_i + sum_m (a_m - b_m), these logits are [log r_1..log r_M, 0] shifted by one common
  constant, so their softmax is the optimal (M+1)-way posterior D* of Eq. 6.
  """
  decoder_logit = -(joint_log_ratio + jnp.sum(unimodal_log_ratios - content_log_ratios, axis=0))
  return jnp.concatenate([content_log_ratios.T, decoder_logit[:, None]], axis=-1)


def unimodal_log_ratio(d0_logits):
  """a_m = D0_m[0] - D0_m[1]: encoder class 0 against decoder class 1 of the unimodal D0_m."""
  return d0_logits[:, 0] - d0_logits[:, 1]


# --- Discriminator terms -----------------------------------------------------------------------


def d_unimodal_encoder(d0_on_encoder):
  """D0_m: (x_m, z~q(z|x_m)) belongs to class 0, the encoder joint q(x_m, z)."""
  return cross_entropy(d0_on_encoder, 0)


def d_unimodal_decoder(d0_on_decoder):
  """D0_m: (G_m(z), z), z~p(z) belongs to class 1, the decoder joint p(x_m, z)."""
  return cross_entropy(d0_on_decoder, 1)


def d_cross_content(d0_on_cross, label):
  """D0_m: (x_m, [s_m~q(s|x_m), c~q(c|x_j)]), j != m, belongs to cross-content class `label`."""
  return cross_entropy(d0_on_cross, label)


def d_content_vs_prior(d1_on_encoder, d1_on_prior_content):
  """D1_m separates q(x_m, s_m, c_m) (positives) from q(x_m, s_m) p(c) (negatives)."""
  return binary_real_vs_fake(d1_on_encoder, d1_on_prior_content)


def d_paired_vs_marginals(t_on_paired, t_on_shuffled):
  """T separates the paired data q(x_1..x_M) from the product of marginals prod_m q(x_m)."""
  return binary_real_vs_fake(t_on_paired, t_on_shuffled)


# --- Generator terms ---------------------------------------------------------------------------


def g_unimodal(d0_on_encoder, d0_on_decoder, num_modalities, lambda_unimodal):
  """Fools D0_m on q(x_m, z) (class 0) and p(x_m, z) (class 1): lambda_u w (NS_0 + NS_1)."""
  weight = lambda_unimodal * generator_weight(num_modalities)
  return weight * (non_saturating(d0_on_encoder, 0) + non_saturating(d0_on_decoder, 1))


def g_cross_content(d0_on_cross, label, num_modalities, lambda_unimodal):
  """Fools D0_m on the cross-content pair of class `label`: lambda_u w NS_label."""
  weight = lambda_unimodal * generator_weight(num_modalities)
  return weight * non_saturating(d0_on_cross, label)


def g_joint_class(joint_logits, true_class):
  """Fools the (M+1)-way joint discriminator on a sample of q_k (k < M) or of p (k = M): w NS_k."""
  num_modalities = joint_logits.shape[-1] - 1
  return generator_weight(num_modalities) * non_saturating(joint_logits, true_class)


def mean_squared_error(prediction, target):
  """Mean over all elements, as torch's (a - b).square().mean()."""
  return jnp.mean(jnp.square(prediction - target))
