"""The non-factorized baseline: one monolithic (M+1)-way D(x_1..x_M, z) (`JointModel.forward_jsd`).

Table 1 of the paper calls it "Joint"; docs/algorithm.md §3.3, §4.3 and §5.7 describe it.

z = [s_1, ..., s_M, c]. Class k < M: the real tuple with every modality's own style and
modality k's content; class M: the decoded tuple p(z) prod_m p(x_m | z), i.e. every modality
decoded from its own prior style and ONE prior content c shared by all modalities, next to
exactly that c. There are no unimodal, T or reconstruction terms.

Batches: only the shared-content batches count, 'b' in the discriminator step and 'd' in the
generator step. This is what the reference effectively trains: its `forward_jsd` also computes a
first batch with independent per-modality priors (a tuple of unrelated digits next to modality
0's content, which no distribution of the paper produces), but a dictionary key collision
discards that batch's losses. Here it is not computed at all.
"""
import jax
import jax.numpy as jnp

from mmali_jax import losses
from mmali_jax import posterior
from mmali_jax.objectives import factorized


def _class_logits(nets, xs, rng, config):
  """The discriminator's logits for each of the M+1 classes on one batch."""
  num = len(xs)
  batch_size = xs[0].shape[0]
  rng_prior, rng_enc = jax.random.split(rng)
  z_prior = factorized.prior_samples(rng_prior, batch_size, nets, num, True, config.latent_dim)
  keys = jax.random.split(rng_enc, num)
  z_enc = [nets.sample_posterior(keys[m], m, xs[m])[0] for m in range(num)]
  x_dec = [nets.decode(m, z_prior[m]) for m in range(num)]
  styles = jnp.concatenate([nets.style(z) for z in z_enc], axis=-1)
  logits = [nets.monolithic(xs, posterior.join_latent(styles, nets.content(z_enc[k])))
            for k in range(num)]
  prior_styles = jnp.concatenate([nets.style(z) for z in z_prior], axis=-1)
  shared_content = nets.content(z_prior[0])  # the content of every z_prior[m]
  logits.append(nets.monolithic(x_dec, posterior.join_latent(prior_styles, shared_content)))
  return logits


def _class_losses(nets, xs, rng, config, mods, prefix, loss_fn):
  """loss_fn(logits of class k, k), one term per class."""
  metrics = {}
  for k, logits in enumerate(_class_logits(nets, xs, rng, config)):
    name = mods[k].name if k < len(mods) else 'decoder'
    metrics[f'{prefix}/monolithic/{name}'] = loss_fn(logits, k)
  return sum(metrics.values()), metrics


def discriminator_loss(nets, batches, rng, config, mods):
  """Cross-entropy of every class on the shared-content batch 'b'."""
  return _class_losses(nets, batches['b'], rng, config, mods, 'd', losses.cross_entropy)


def generator_loss(nets, batches, rng, config, mods):
  """w NS_k of every class on the shared-content batch 'd'."""
  return _class_losses(nets, batches['d'], rng, config, mods, 'g', losses.g_joint_class)
