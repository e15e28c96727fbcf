"""Networks for feature vectors (CUB caption and image features): MLPs whose widths halve.

For a D-dimensional feature (docs/algorithm.md §6.5), with d the latent size:
  encoder       D -> D/2 -> D/4 -> D/8 (ELU each) -> 2d
  decoder       d -> D/8 -> D/4 -> D/2 (ELU each) -> D, linear output (features are unbounded)
  x branch      D -> D/2 -> D/4 -> D/8 -> D/8 (LReLU 0.2, SN)
  z branch      d -> D/8 -> D/8 (LReLU 0.2, SN)
  D0/D1 head    concat (D/8 + D/8) -> 512 (LReLU 0.2, SN) -> outputs
Caption (D = 1024) and image (D = 2048) are two registry entries of these modules.
"""
import flax.linen as nn
import jax.numpy as jnp

from mmali_jax.models import layers

HEAD_WIDTH = 512


def _halvings(dim):
  return (dim // 2, dim // 4, dim // 8)


class Encoder(nn.Module):
  """x [B, D] -> (mean, log-variance) of q(z|x)."""
  latent_dim: int

  @nn.compact
  def __call__(self, x):
    h = x
    for width in _halvings(x.shape[-1]):
      h = nn.elu(layers.dense(width)(h))
    out = layers.dense(2 * self.latent_dim)(h)
    return out[:, :self.latent_dim], out[:, self.latent_dim:]


class Decoder(nn.Module):
  """z -> x [B, D], linear output."""
  example_shape: tuple

  @nn.compact
  def __call__(self, z):
    (dim,) = self.example_shape
    h = z
    for width in reversed(_halvings(dim)):
      h = nn.elu(layers.dense(width)(h))
    return layers.dense(dim)(h)


class XFeatures(nn.Module):
  """The x branch: D -> D/2 -> D/4 -> D/8 -> D/8 (LReLU, SN); also the joint critic's branch."""

  @nn.compact
  def __call__(self, x, update_stats):
    dim = x.shape[-1]
    h = x
    for width in _halvings(dim) + (dim // 8,):
      h = layers.leaky_relu(layers.sn_dense(width, h, update_stats))
    return h


class XZDiscriminator(nn.Module):
  """D(x, z): x branch and z branch (d -> D/8 -> D/8), concatenated -> 512 -> outputs (SN)."""
  outputs: int

  @nn.compact
  def __call__(self, x, z, update_stats):
    hx = XFeatures()(x, update_stats)
    width = x.shape[-1] // 8
    hz = layers.leaky_relu(layers.sn_dense(width, z, update_stats))
    hz = layers.leaky_relu(layers.sn_dense(width, hz, update_stats))
    h = jnp.concatenate([hx, hz], axis=-1)
    h = layers.leaky_relu(layers.sn_dense(HEAD_WIDTH, h, update_stats))
    return layers.sn_dense(self.outputs, h, update_stats)

