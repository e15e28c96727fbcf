"""Layer helpers with the reference's conventions (docs/algorithm.md §6).

Every Linear/Conv/ConvTranspose of the MMALI networks starts from N(0, 0.02) weights and zero
biases; convolution arguments are PyTorch's (kernel, stride, padding) so architectures read like
the reference's. Discriminator layers are wrapped in spectral normalisation (one power iteration
per call). The evaluation networks (coherence classifiers, linear probe) keep PyTorch's default
initialisation instead (`torch_dense`, `torch_conv`), as the reference does.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmali_jax.models import convolutions
from mmali_jax.models import spectral

weight_init = nn.initializers.normal(0.02)
bias_init = nn.initializers.zeros


def dense(features, name=None):
  return nn.Dense(features, kernel_init=weight_init, bias_init=bias_init, name=name)


def conv(features, kernel, stride, padding, name=None):
  """nn.Conv2d(k, s, p) of PyTorch on NHWC inputs."""
  return convolutions.Conv(features, kernel, stride, padding, kernel_init=weight_init,
                           bias_init=bias_init, name=name)


def conv_transpose(features, kernel, stride, padding, name=None):
  """nn.ConvTranspose2d(k, s, p) of PyTorch: output size (in - 1) * s - 2p + k."""
  return convolutions.ConvTranspose(features, kernel, stride, padding, kernel_init=weight_init,
                                    bias_init=bias_init, name=name)


def _torch_kernel_init():
  """PyTorch's default Linear/Conv weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _torch_bias_init(fan_in):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features, in_features, name=None):
  """nn.Linear with PyTorch's default initialisation."""
  return nn.Dense(features, kernel_init=_torch_kernel_init(),
                  bias_init=_torch_bias_init(in_features), name=name)


def torch_conv(features, kernel, stride, padding, in_features, name=None):
  """nn.Conv2d(k, s, p) with PyTorch's default initialisation, on NHWC inputs."""
  return nn.Conv(features, (kernel, kernel), (stride, stride),
                 padding=((padding, padding), (padding, padding)),
                 kernel_init=_torch_kernel_init(),
                 bias_init=_torch_bias_init(kernel * kernel * in_features), name=name)


def sn_dense(features, x, update_stats):
  """A spectrally normalised Dense layer applied to x (inside a compact module)."""
  layer = spectral.Dense(features, weight_init, bias_init)
  return spectral.SpectralNorm(layer)(x, update_stats)


def sn_conv(features, kernel, stride, padding, x, update_stats):
  """A spectrally normalised nn.Conv2d(k, s, p) applied to x (inside a compact module)."""
  layer = spectral.Conv(features, kernel, weight_init, bias_init)
  return spectral.SpectralNorm(layer, stride, padding)(x, update_stats)


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.2)


def flatten(x):
  return x.reshape(x.shape[0], -1)


def reference_init(params, rng):
  """Every kernel redrawn from N(0, 0.02), every bias zero: the reference's `init_param_normal`.

  Needed for discriminators: Flax's SpectralNorm stores W / sigma_hat (sigma_hat from one power
  iteration on a random vector) instead of W when it initialises, which leaves the kernels about
  1.5-2.5x larger than N(0, 0.02). The forward pass is invariant to that scale, but Adam's
  steps are not.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(rng, len(leaves))
  out = []
  for key, (path, leaf) in zip(keys, leaves):
    name = getattr(path[-1], 'key', None)
    if name == 'kernel':
      out.append(weight_init(key, leaf.shape, leaf.dtype))
    elif name == 'bias':
      out.append(jnp.zeros_like(leaf))
    else:
      out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)
