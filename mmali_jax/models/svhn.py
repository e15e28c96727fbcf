"""Networks for 32x32 RGB images (SVHN): DCGAN-style CNNs, and the coherence classifier.

Architectures: docs/algorithm.md §6.
"""
import flax.linen as nn
import jax.numpy as jnp

from mmali_jax.models import layers


class Encoder(nn.Module):
  """x -> (mean, log-variance): Conv 32, 64, 128 (4,2,1) ReLU -> Conv 2d (4,1,0)."""
  latent_dim: int
  width: int = 32

  @nn.compact
  def __call__(self, x):
    h = x
    for mult in (1, 2, 4):
      h = nn.relu(layers.conv(self.width * mult, 4, 2, 1)(h))
    out = layers.flatten(layers.conv(2 * self.latent_dim, 4, 1, 0)(h))
    return out[:, :self.latent_dim], out[:, self.latent_dim:]


class Decoder(nn.Module):
  """z -> x in [0, 1]: ConvT 128 (4,1,0), 64, 32 (4,2,1) ReLU -> C (4,2,1) -> sigmoid."""
  image_shape: tuple
  width: int = 32

  @nn.compact
  def __call__(self, z):
    h = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    h = nn.relu(layers.conv_transpose(self.width * 4, 4, 1, 0)(h))
    h = nn.relu(layers.conv_transpose(self.width * 2, 4, 2, 1)(h))
    h = nn.relu(layers.conv_transpose(self.width, 4, 2, 1)(h))
    return nn.sigmoid(layers.conv_transpose(self.image_shape[-1], 4, 2, 1)(h))


class XFeatures(nn.Module):
  """x branch: Conv 32, 64, 128 (4,2,1) LReLU -> Conv 256 (4,1,0) LReLU -> 256 (SN)."""
  width: int = 32
  features: int = 256

  @nn.compact
  def __call__(self, x, update_stats):
    h = x
    for mult in (1, 2, 4):
      h = layers.leaky_relu(layers.sn_conv(self.width * mult, 4, 2, 1, h, update_stats))
    h = layers.leaky_relu(layers.sn_conv(self.features, 4, 1, 0, h, update_stats))
    return layers.flatten(h)


class XZDiscriminator(nn.Module):
  """D(x, z): x branch (256) and z branch d -> 256 -> 256, head 512 -> 1024 -> 1024 -> out."""
  outputs: int

  @nn.compact
  def __call__(self, x, z, update_stats):
    hx = XFeatures()(x, update_stats)
    hz = layers.leaky_relu(layers.sn_dense(256, z, update_stats))
    hz = layers.leaky_relu(layers.sn_dense(256, hz, update_stats))
    h = jnp.concatenate([hx, hz], axis=-1)
    h = layers.leaky_relu(layers.sn_dense(1024, h, update_stats))
    h = layers.leaky_relu(layers.sn_dense(1024, h, update_stats))
    return layers.sn_dense(self.outputs, h, update_stats)


class Classifier(nn.Module):
  """The coherence classifier of the reference (`models/svhn.Classifier`), -> 10 logits.

  Four blocks Conv -> BatchNorm -> Dropout 0.5 -> ReLU: 3->32 (4,2,1), 32->64 (4,2,1),
  64->64 (4,2,1), 64->128 (4,2,0) (32 -> 16 -> 8 -> 4 -> 1), then Lin 128 -> 10.
  BatchNorm uses PyTorch's defaults (momentum 0.1, i.e. Flax momentum 0.9; eps 1e-5).
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    in_features = x.shape[-1]
    for features, padding in ((32, 1), (64, 1), (64, 1), (128, 0)):
      x = layers.torch_conv(features, 4, 2, padding, in_features)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
      x = nn.Dropout(0.5, deterministic=not train)(x)
      x = nn.relu(x)
      in_features = features
    x = x.reshape((x.shape[0], -1))
    return layers.torch_dense(self.num_classes, x.shape[-1])(x)
