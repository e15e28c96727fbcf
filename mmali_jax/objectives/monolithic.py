"""The non-factorized baseline: one monolithic (M+1)-way D(x_1..x_M, z) (`JointModel.forward_jsd`).

Table 1 of the paper calls it "Joint"; docs/algorithm.md §3.3, §4.3 and §5.7 describe it.

z = [s_1, ..., s_M, c]. Class k < M: the real tuple with every modality's own style and
modality k's content; class M: the decoded tuple with its prior styles and modality 0's prior
content. There are no unimodal, T or reconstruction terms. The reference overwrites the losses of
its first batch (independent per-modality priors) with those of the second (shared content) by a
key collision; here both batches count.
"""
import jax
import jax.numpy as jnp

from mmali_jax import losses
from mmali_jax import posterior
from mmali_jax.objectives import factorized


def _class_logits(nets, xs, rng, shared_content, config):
  """The discriminator's logits for each of the M+1 classes on one batch."""
  num = len(xs)
  batch_size = xs[0].shape[0]
  rng_prior, rng_enc = jax.random.split(rng)
  z_prior = factorized.prior_samples(rng_prior, batch_size, nets, num, shared_content,
                                     config.latent_dim)
  keys = jax.random.split(rng_enc, num)
  z_enc = [nets.sample_posterior(keys[m], m, xs[m])[0] for m in range(num)]
  x_dec = [nets.decode(m, z_prior[m]) for m in range(num)]
  styles = [nets.style(z) for z in z_enc]
  logits = [nets.monolithic(xs, posterior.join_latent(jnp.concatenate(styles, axis=-1),
                                                      nets.content(z_enc[k])))
            for k in range(num)]
  prior_styles = [nets.style(z) for z in z_prior]
  logits.append(nets.monolithic(
      x_dec, posterior.join_latent(jnp.concatenate(prior_styles, axis=-1),
                                   nets.content(z_prior[0]))))
  return logits


def _class_losses(nets, batches, rng, config, mods, batch_keys, prefix, loss_fn):
  """loss_fn(logits of class k, k) summed over the classes of each of the two batches."""
  metrics = {}
  for sub, (key, shared) in enumerate(zip(batch_keys, (False, True))):
    logits = _class_logits(nets, batches[key], jax.random.fold_in(rng, sub), shared, config)
    for k, lg in enumerate(logits):
      name = mods[k].name if k < len(mods) else 'decoder'
      metrics[f'{prefix}/monolithic_{key}/{name}'] = loss_fn(lg, k)
  return sum(metrics.values()), metrics


def discriminator_loss(nets, batches, rng, config, mods):
  """Cross-entropy of every class, on batch 'a' (independent priors) and 'b' (shared content)."""
  return _class_losses(nets, batches, rng, config, mods, ('a', 'b'), 'd', losses.cross_entropy)


def generator_loss(nets, batches, rng, config, mods):
  """w NS_k of every class, on batch 'c' (independent priors) and 'd' (shared content)."""
  return _class_losses(nets, batches, rng, config, mods, ('c', 'd'), 'g', losses.g_joint_class)
