"""MLP networks for 28x28 digits (MNIST, rotated MNIST); ALGORITHM.md §2.1."""
import math

import flax.linen as nn
import jax.numpy as jnp

from mmali_jax.models import layers


class Encoder(nn.Module):
  """x -> (mean, log-variance) of q(z|x): flatten -> 400 -> ReLU -> 2d."""
  latent_dim: int
  hidden: int = 400

  @nn.compact
  def __call__(self, x):
    h = nn.relu(layers.dense(self.hidden)(layers.flatten(x)))
    out = layers.dense(2 * self.latent_dim)(h)
    return out[:, :self.latent_dim], out[:, self.latent_dim:]


class Decoder(nn.Module):
  """z -> x in [0, 1]: d -> 400 -> ReLU -> |x| -> sigmoid."""
  image_shape: tuple
  hidden: int = 400

  @nn.compact
  def __call__(self, z):
    h = nn.relu(layers.dense(self.hidden)(z))
    x = nn.sigmoid(layers.dense(math.prod(self.image_shape))(h))
    return x.reshape((z.shape[0],) + tuple(self.image_shape))


class XFeatures(nn.Module):
  """The x branch of the joint critics: flatten -> 400 -> LReLU -> 256 -> LReLU (SN)."""
  hidden: int = 400
  features: int = 256

  @nn.compact
  def __call__(self, x, update_stats):
    h = layers.flatten(x)
    sn_dense = lambda n, h: layers.spectral_norm(layers.dense(n))(h, update_stats=update_stats)
    h = layers.leaky_relu(sn_dense(self.hidden, h))
    return layers.leaky_relu(sn_dense(self.features, h))


class XZDiscriminator(nn.Module):
  """D(x, z): concat[flatten(x), z] -> 400 -> LReLU -> outputs (SN)."""
  outputs: int
  hidden: int = 400

  @nn.compact
  def __call__(self, x, z, update_stats):
    sn_dense = lambda n, h: layers.spectral_norm(layers.dense(n))(h, update_stats=update_stats)
    h = jnp.concatenate([layers.flatten(x), z], axis=-1)
    h = layers.leaky_relu(sn_dense(self.hidden, h))
    return sn_dense(self.outputs, h)
