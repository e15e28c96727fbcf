"""Spectrally normalised dense and convolution layers (docs/algorithm.md §5.4).

Same variables, initialisation and arithmetic as `flax.linen.SpectralNorm(layer, n_steps=1,
epsilon=1e-12)` around a Dense or Conv layer: one power iteration per call from the stored vector
u, sigma = v W u^T with u and v constants for the gradient, and with `update_stats` the new u and
sigma are stored. Some things are cheaper; none changes what is computed beyond float rounding:

- the layer runs on the raw kernel and its output is divided by sigma, (x W) / sigma + b, instead
  of dividing every kernel entry, x (W / sigma) + b: the output of a batch is smaller than the
  kernel, and the kernel is not copied at every call;
- the product v W of the power iteration is reused for sigma instead of being recomputed;
- since the product uses the raw kernel, an input seen by several calls of one discriminator
  (the same images next to different latents) gives the same operation in every call, which XLA
  computes once (a Dense layer may take its input in parts for this, see `__call__`), and the
  kernel's gradient is the concatenation of the parts' gradients (`parts_product`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmali_jax.models import convolutions

EPSILON = 1e-12
# The collection in which a call may be given its layers' sigmas, computed before the call
# (mmali_jax/power_iterations.py); a layer given one runs no power iteration of its own.
ESTIMATES = 'spectral_estimates'
# (A scalar per layer; or one per row of the input, when several calls run as one.)
# Where a layer notes each power iteration it runs, when the caller makes the collection mutable
# (power_iterations.record_calls reads which layers a call runs from it).
ITERATIONS = 'spectral_iterations'


def _l2_normalize(x):
  return x * jax.lax.rsqrt(jnp.sum(x * x) + EPSILON)


def power_iteration(kernel, u):
  """One power iteration on the kernel as a matrix [-1, out]: -> (new u, sigma).

  sigma = v W u^T carries the gradient v^T u with respect to the kernel (u, v held constant)."""
  with jax.named_scope('power_iteration'):  # named in profiles and kernel counts
    new_u, sigma = _power_iteration(kernel.reshape(-1, kernel.shape[-1]), u[0])
  return new_u[None], sigma


def chain_step(matrix, u):
  """`power_iteration`'s arithmetic on a kernel already shaped [-1, out], u a vector: -> (new u,
  sigma, v). Not to be differentiated (the normalisations would be): the caller's custom VJP
  gives sigma's gradient with respect to the kernel, outer(v, new u)."""
  (new_u, sigma), (v, _) = _power_iteration_fwd(matrix, u)
  return new_u, sigma, v


@jax.custom_vjp
def _power_iteration(matrix, u):
  v = _l2_normalize(matrix @ u)
  vw = v @ matrix
  new_u = _l2_normalize(vw)
  return new_u, vw @ new_u


def _power_iteration_fwd(matrix, u):
  v = _l2_normalize(matrix @ u)
  vw = v @ matrix
  new_u = _l2_normalize(vw)
  return (new_u, vw @ new_u), (v, new_u)


def _power_iteration_bwd(residuals, grads):
  # Only sigma's dependence on the matrix (through v W, with u and v constants) has a gradient;
  # written as an outer product in the matrix's own layout.
  v, new_u = residuals
  _, sigma_grad = grads
  return sigma_grad * jnp.outer(v, new_u), None


_power_iteration.defvjp(_power_iteration_fwd, _power_iteration_bwd)


class Dense(nn.Module):
  """The parameters of a Dense layer, kernel [in, out] and bias, as flax.linen.Dense's."""
  features: int
  kernel_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, in_features):
    return (self.param('kernel', self.kernel_init, (in_features, self.features)),
            self.param('bias', self.bias_init, (self.features,)))


class Conv(nn.Module):
  """The parameters of a k x k convolution, kernel [k, k, in, out] and bias, as flax.linen.Conv's.
  """
  features: int
  kernel_size: int
  kernel_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, in_features):
    k = self.kernel_size
    return (self.param('kernel', self.kernel_init, (k, k, in_features, self.features)),
            self.param('bias', self.bias_init, (self.features,)))


class SpectralNorm(nn.Module):
  """`layer` (a `Dense` or a `Conv` with `stride` and `padding`), spectrally normalised.

  As with flax.linen.SpectralNorm, the layer is created in the calling module, which holds its
  parameters (e.g. Dense_1); this module holds the power-iteration state (Dense_1/kernel/u and
  Dense_1/kernel/sigma in 'batch_stats')."""
  layer: nn.Module
  stride: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x, update_stats):
    """x: the input, or for a Dense a tuple of inputs standing for their concatenation along the
    last axis, whose products with the matching kernel rows are computed separately: a part
    seen by several calls (the image next to different latents) is then the same operation in
    every call, which XLA computes once."""
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    kernel, bias = self.layer(sum(p.shape[-1] for p in parts))
    name = self.layer.name
    u = self.variable('batch_stats', f'{name}/kernel/u', jax.random.normal,
                      self.make_rng('params') if self.is_initializing() else None,
                      (1, kernel.shape[-1]), jnp.float32)
    sigma_var = self.variable('batch_stats', f'{name}/kernel/sigma', jnp.ones, (), jnp.float32)
    if self.has_variable(ESTIMATES, f'{name}/kernel/sigma'):
      sigma = self.get_variable(ESTIMATES, f'{name}/kernel/sigma')  # its iteration ran before
    else:
      new_u, sigma = power_iteration(kernel, u.value)
      self.sow(ITERATIONS, f'{name}/kernel', 1)
      if update_stats:
        u.value, sigma_var.value = new_u, sigma
    if isinstance(self.layer, Conv):
      y = convolutions.conv2d(x, kernel, self.stride, self.padding)
    else:
      y = parts_product(parts, kernel)
    if jnp.ndim(sigma):  # one per row: several calls run as one (mmali_jax/batched_calls.py)
      sigma = sigma.reshape(sigma.shape + (1,) * (y.ndim - 1))
    return y / jnp.where(sigma != 0, sigma, 1) + bias


def _row_blocks(parts):
  offsets = np.cumsum([0] + [p.shape[-1] for p in parts])
  return list(zip(offsets[:-1], offsets[1:]))


@jax.custom_vjp
def parts_product(parts, kernel):
  """concatenate(parts, -1) @ kernel, as one product per part with its block of kernel rows."""
  return sum(p @ kernel[a:b] for p, (a, b) in zip(parts, _row_blocks(parts)))


def _parts_product_fwd(parts, kernel):
  return parts_product(parts, kernel), (parts, kernel)


def _parts_product_bwd(residuals, grad):
  # The kernel's gradient as one concatenation of the blocks' gradients: differentiating the
  # slices instead pads every block to the kernel's size and adds the pads.
  parts, kernel = residuals
  blocks = _row_blocks(parts)
  return (tuple(grad @ kernel[a:b].T for a, b in blocks),
          jnp.concatenate([p.T @ grad for p in parts], axis=0))


parts_product.defvjp(_parts_product_fwd, _parts_product_bwd)
