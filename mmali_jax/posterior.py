"""Gaussian posteriors q(z|x): reparameterised sampling and products of experts.

Encoders output a diagonal Gaussian as (mean, log-variance), each in [style | content] layout
(docs/algorithm.md §1).
"""
import math

import jax
import jax.numpy as jnp


def sample(rng, mean, logvar):
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (the reparameterisation trick)."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def product_of_experts(means, logvars, average=True):
  """Product of K diagonal Gaussian experts, stacked on the leading axis ([K, B, d]).

  The precision-weighted mean is the same for both variants. With `average=True` the precision is
  the *mean* of the experts' precisions (the normalised geometric mean prod_k N_k^(1/K), which the
  paper uses for the joint posterior); with `average=False` precisions add up (the plain product).
  No prior expert is included, as in the reference code.
  """
  means = jnp.asarray(means)
  logvars = jnp.asarray(logvars)
  poe_logvar = -jax.nn.logsumexp(-logvars, axis=0)
  weights = jnp.exp(poe_logvar[None] - logvars)
  poe_mean = jnp.sum(weights * means, axis=0)
  if average:
    poe_logvar = poe_logvar + math.log(means.shape[0])
  return poe_mean, poe_logvar


def split_latent(z, style_dim):
  """z = [style | content] -> (style, content)."""
  return z[..., :style_dim], z[..., style_dim:]


def join_latent(style, content):
  """(style, content) -> z = [style | content]."""
  return jnp.concatenate([style, content], axis=-1)
