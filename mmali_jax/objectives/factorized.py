"""MMALI with factorized discriminators: the reference's `FactorModel.forward_jsd2`.

Batches (docs/algorithm.md §5): 'a' and 'b' feed the discriminator step, 'c' and 'd' the generator
step; 'b_marginals' is 'b' with every modality shuffled independently. Each batch is a list of
float images, one per modality in sorted order. Both functions return (loss, metrics) where the
loss is the plain sum of the named terms in `metrics`.
"""
import jax
import jax.numpy as jnp

from mmali_jax import losses
from mmali_jax import posterior


def cross_content_label(m, j):
  """D0_m's class for (x_m, [s_m, c_j]): 2, 3, ... over the other modalities j in sorted order."""
  return 2 + (j if j < m else j - 1)


def prior_samples(rng, batch_size, nets, num, shared_content, latent_dim):
  """z_m ~ N(0, I) per modality; with `shared_content` one c for all and a style per modality."""
  keys = jax.random.split(rng, num + 1)
  zs = [jax.random.normal(keys[m], (batch_size, latent_dim)) for m in range(num)]
  if shared_content:
    content = jax.random.normal(keys[num], (batch_size, latent_dim - nets.style_dim))
    zs = [posterior.join_latent(nets.style(z), content) for z in zs]
  return zs


def _unimodal_pass(nets, xs, rng_prior, rng, keys_per_modality, latent_dim):
  """Independent priors z_m, posterior samples z~q(z|x_m) and decodings G_m(z_m) of a batch.

  Returns them with [M, keys_per_modality] keys, the first of which drew the posterior samples.
  """
  num = len(xs)
  z_prior = prior_samples(rng_prior, xs[0].shape[0], nets, num, False, latent_dim)
  keys = jax.random.split(rng, keys_per_modality * num).reshape(num, keys_per_modality, -1)
  z_enc = [nets.sample_posterior(keys[m, 0], m, xs[m])[0] for m in range(num)]
  x_dec = [nets.decode(m, z_prior[m]) for m in range(num)]
  return z_prior, z_enc, x_dec, keys


def _joint_logits(nets, xs, zs, t):
  """The (M+1)-way logits of Eq. 10 for tuples {(x_m, z_m)} given T(x_1..x_M)."""
  a, b = [], []
  for m, (x, z) in enumerate(zip(xs, zs)):
    a.append(losses.unimodal_log_ratio(nets.d0(m, x, z)))
    b.append(nets.d1(m, x, z))
  return losses.factorized_logits(jnp.stack(a), jnp.stack(b), t)


def discriminator_loss(nets, batches, rng, config, mods):
  """L_D: D0_m, D1_m and T, each against the distributions it must tell apart."""
  num, latent_dim = len(mods), config.latent_dim
  rng_prior, rng_a, rng_b = jax.random.split(rng, 3)
  metrics = {}

  # Batch A: unimodal encoder vs decoder (D0) and content vs prior content (D1).
  xa = batches['a']
  batch_size = xa[0].shape[0]
  z_prior, z_enc, x_dec, keys = _unimodal_pass(nets, xa, rng_prior, rng_a, 3, latent_dim)
  for m, mod in enumerate(mods):
    metrics[f'd/{mod.name}/unimodal_encoder'] = losses.d_unimodal_encoder(
        nets.d0(m, xa[m], z_enc[m]))
    metrics[f'd/{mod.name}/unimodal_decoder'] = losses.d_unimodal_decoder(
        nets.d0(m, x_dec[m], z_prior[m]))
    # Negatives q(x, s) p(c): (x, s) pairs kept together, content from a shuffled prior draw.
    perm = jax.random.permutation(keys[m, 1], batch_size)
    prior_content = nets.content(z_prior[m])[jax.random.permutation(keys[m, 2], batch_size)]
    z_neg = posterior.join_latent(nets.style(z_enc[m])[perm], prior_content)
    metrics[f'd/{mod.name}/content_vs_prior'] = losses.d_content_vs_prior(
        nets.d1(m, xa[m], z_enc[m]), nets.d1(m, xa[m][perm], z_neg))

  # Batch B: paired data vs product of marginals (T), and the cross-content classes of D0.
  xb = batches['b']
  metrics['d/joint_critic/paired_vs_marginals'] = losses.d_paired_vs_marginals(
      nets.joint_critic(xb), nets.joint_critic(batches['b_marginals']))
  keys = jax.random.split(rng_b, num)
  z_enc = [nets.sample_posterior(keys[m], m, xb[m])[0] for m in range(num)]
  for m, mod in enumerate(mods):
    for j in range(num):
      if j == m:
        continue
      label = cross_content_label(m, j)
      z_cross = posterior.join_latent(nets.style(z_enc[m]), nets.content(z_enc[j]))
      metrics[f'd/{mod.name}/cross_content_{mods[j].name}'] = losses.d_cross_content(
          nets.d0(m, xb[m], z_cross), label)
  return sum(metrics.values()), metrics


def generator_loss(nets, batches, rng, config, mods):
  """L_G: the encoders and decoders against every discriminator, plus reconstructions."""
  num, latent_dim, cfg = len(mods), config.latent_dim, config.loss
  rng_prior_c, rng_c, rng_prior_d, rng_d = jax.random.split(rng, 4)
  metrics = {}

  # Batch C: unimodal adversarial terms and per-modality reconstructions.
  xc = batches['c']
  batch_size = xc[0].shape[0]
  z_prior, z_enc, x_dec, keys = _unimodal_pass(nets, xc, rng_prior_c, rng_c, 2, latent_dim)
  for m, mod in enumerate(mods):
    metrics[f'g/{mod.name}/unimodal'] = losses.g_unimodal(
        nets.d0(m, xc[m], z_enc[m]), nets.d0(m, x_dec[m], z_prior[m]), num, cfg.lambda_unimodal)
  for m, mod in enumerate(mods):
    if cfg.lambda_x_rec > 0 and not cfg.joint_rec:
      metrics[f'g/{mod.name}/x_rec'] = cfg.lambda_x_rec * mod.rec_weight * (
          losses.mean_squared_error(nets.decode(m, z_enc[m]), xc[m]))
    content_rec = cfg.lambda_c_rec > 0 and not cfg.joint_rec
    if content_rec or cfg.lambda_s_rec > 0:
      z_rec = nets.sample_posterior(keys[m, 1], m, x_dec[m])[0]
      if content_rec:
        metrics[f'g/{mod.name}/c_rec'] = cfg.lambda_c_rec * losses.mean_squared_error(
            nets.content(z_rec), nets.content(z_prior[m]))
      if cfg.lambda_s_rec > 0:
        metrics[f'g/{mod.name}/s_rec'] = cfg.lambda_s_rec * losses.mean_squared_error(
            nets.style(z_rec), nets.style(z_prior[m]))

  # Batch D: the (M+1)-way joint game with a shared prior content.
  xd = batches['d']
  z_prior = prior_samples(rng_prior_d, batch_size, nets, num, True, latent_dim)
  keys = jax.random.split(rng_d, num + 2)
  enc = [nets.sample_posterior(keys[m], m, xd[m]) for m in range(num)]
  z_enc = [z for z, _ in enc]
  x_dec = [nets.decode(m, z_prior[m]) for m in range(num)]
  t_paired = nets.joint_critic(xd)
  for k, mod in enumerate(mods):
    # Encoder class k: every modality keeps its own style and takes modality k's content.
    zs = [posterior.join_latent(nets.style(z), nets.content(z_enc[k])) for z in z_enc]
    metrics[f'g/joint/encoder_{mod.name}'] = losses.g_joint_class(
        _joint_logits(nets, xd, zs, t_paired), k)
  metrics['g/joint/decoder'] = losses.g_joint_class(
      _joint_logits(nets, x_dec, z_prior, nets.joint_critic(x_dec)), num)
  for m, mod in enumerate(mods):
    for j in range(num):
      if j == m:
        continue
      z_cross = posterior.join_latent(nets.style(z_enc[m]), nets.content(z_enc[j]))
      metrics[f'g/{mod.name}/cross_content_{mods[j].name}'] = losses.g_cross_content(
          nets.d0(m, xd[m], z_cross), cross_content_label(m, j), num, cfg.lambda_unimodal)

  if cfg.joint_rec:
    content = nets.content(z_prior[0])
    if cfg.lambda_c_rec > 0:
      # Content of the generated tuple, read back through the averaged product of experts.
      params = [nets.encode(m, x_dec[m]) for m in range(num)]
      z_joint = posterior.sample(keys[num], *posterior.product_of_experts(
          [p[0] for p in params], [p[1] for p in params]))
      metrics['g/joint/c_rec'] = cfg.lambda_c_rec * losses.mean_squared_error(
          nets.content(z_joint), content)
    if cfg.lambda_x_rec > 0:
      # Each modality rebuilt from its own style and the joint posterior's content.
      z_joint = posterior.sample(keys[num + 1], *posterior.product_of_experts(
          [p[0] for _, p in enc], [p[1] for _, p in enc]))
      for m, mod in enumerate(mods):
        x_rec = nets.decode(m, posterior.join_latent(nets.style(z_enc[m]), nets.content(z_joint)))
        metrics[f'g/{mod.name}/x_rec_joint'] = cfg.lambda_x_rec * mod.rec_weight * (
            losses.mean_squared_error(x_rec, xd[m]))
  return sum(metrics.values()), metrics
