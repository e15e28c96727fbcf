"""Networks for 28x28 digits (MNIST, rotated MNIST): MLPs, and the LeNet coherence classifier.

Architectures: docs/algorithm.md §6.
"""
import math

import flax.linen as nn

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
    h = layers.leaky_relu(layers.sn_dense(self.hidden, h, update_stats))
    return layers.leaky_relu(layers.sn_dense(self.features, h, update_stats))


class XZDiscriminator(nn.Module):
  """D(x, z): concat[flatten(x), z] -> 400 -> LReLU -> outputs (SN)."""
  outputs: int
  hidden: int = 400

  @nn.compact
  def __call__(self, x, z, update_stats):
    # The concatenation in two parts: the image's product is shared by calls on the same images.
    h = layers.leaky_relu(layers.sn_dense(self.hidden, (layers.flatten(x), z), update_stats))
    return layers.sn_dense(self.outputs, h, update_stats)


class Classifier(nn.Module):
  """The coherence classifier: the reference's LeNet (`models/mnist.Classifier`), -> 10 logits.

  Conv 1->10 (k5) -> max-pool 2 -> ReLU; Conv 10->20 (k5) -> channel dropout 0.5 -> max-pool 2 ->
  ReLU; flatten 320 -> Lin 50 -> ReLU -> dropout 0.5 -> Lin 10. Both dropouts follow `train`
  (the reference's last dropout stays on at evaluation; docs/algorithm.md §10).
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = layers.torch_conv(10, 5, 1, 0, x.shape[-1])(x)
    x = nn.relu(nn.max_pool(x, (2, 2), (2, 2)))
    x = layers.torch_conv(20, 5, 1, 0, 10)(x)
    # Dropout2d: whole channels are dropped, i.e. the mask is shared over height and width.
    x = nn.Dropout(0.5, broadcast_dims=(1, 2), deterministic=not train)(x)
    x = nn.relu(nn.max_pool(x, (2, 2), (2, 2)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(layers.torch_dense(50, x.shape[-1])(x))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return layers.torch_dense(self.num_classes, 50)(x)
