"""The fast layers compute what Flax's own layers compute: same variables, same numbers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax.models import convolutions
from mmali_jax.models import layers
from mmali_jax.models import spectral


def _close(a, b, tol=1e-5):
  """Equal up to float rounding: every difference within tol times the array's largest value."""
  def check(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape
    assert np.max(np.abs(x - y)) <= tol * max(1.0, np.max(np.abs(y))), np.max(np.abs(x - y))
  jax.tree.map(check, a, b)


def _value_and_grads(module, variables, x):
  """The output, and the gradients of a nonlinear function of it w.r.t. parameters and input."""
  def loss(params, x):
    return jnp.sum(jnp.sin(3.0 * module.apply({**variables, 'params': params}, x)))
  return module.apply(variables, x), jax.grad(loss, argnums=(0, 1))(variables['params'], x)


CONVS = [  # (input shape, kernel, stride, padding): every convolution of the SVHN networks
    ((4, 32, 32, 3), 4, 2, 1), ((4, 16, 16, 32), 4, 2, 1), ((4, 8, 8, 64), 4, 2, 1),
    ((4, 4, 4, 128), 4, 1, 0), ((4, 9, 9, 5), 3, 1, 1)]  # the last one: the generic path


@pytest.mark.parametrize('impl', ['matmul', 'xla'])
@pytest.mark.parametrize('shape,kernel,stride,padding', CONVS)
def test_conv_equals_flax_conv(impl, shape, kernel, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ours = convolutions.Conv(7, kernel, stride, padding, kernel_init=layers.weight_init,
                           bias_init=nn.initializers.normal(0.1), impl=impl)
  flax_conv = nn.Conv(7, (kernel, kernel), (stride, stride), ((padding, padding),) * 2,
                      kernel_init=layers.weight_init, bias_init=nn.initializers.normal(0.1))
  variables = ours.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, variables, flax_conv.init(jax.random.PRNGKey(1), x))
  _close(_value_and_grads(ours, variables, x), _value_and_grads(flax_conv, variables, x))


@pytest.mark.parametrize('impl', ['matmul', 'xla'])
@pytest.mark.parametrize('shape,kernel,stride,padding', [
    ((4, 1, 1, 20), 4, 1, 0), ((4, 4, 4, 128), 4, 2, 1), ((4, 8, 8, 64), 4, 2, 1),
    ((4, 16, 16, 32), 4, 2, 1), ((4, 5, 5, 6), 3, 1, 1)])
def test_conv_transpose_equals_flax_conv_transpose(impl, shape, kernel, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  ours = convolutions.ConvTranspose(5, kernel, stride, padding, kernel_init=layers.weight_init,
                                    bias_init=nn.initializers.normal(0.1), impl=impl)
  pad = kernel - 1 - padding
  flax_conv = nn.ConvTranspose(5, (kernel, kernel), (stride, stride), ((pad, pad),) * 2,
                               kernel_init=layers.weight_init,
                               bias_init=nn.initializers.normal(0.1))
  variables = ours.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, variables, flax_conv.init(jax.random.PRNGKey(1), x))
  out, grads = _value_and_grads(ours, variables, x)
  assert out.shape[1] == (shape[1] - 1) * stride - 2 * padding + kernel  # PyTorch's size rule
  _close((out, grads), _value_and_grads(flax_conv, variables, x))


class _Ours(nn.Module):
  conv: bool

  @nn.compact
  def __call__(self, x, update_stats):
    if self.conv:
      return layers.sn_conv(8, 4, 2, 1, x, update_stats)
    h = layers.leaky_relu(layers.sn_dense(16, x, update_stats))
    return layers.sn_dense(8, h, update_stats)


class _Flax(nn.Module):
  """The layers as flax.linen.SpectralNorm would build them."""
  conv: bool

  @nn.compact
  def __call__(self, x, update_stats):
    sn = lambda layer, h: nn.SpectralNorm(layer, n_steps=1, epsilon=1e-12)(
        h, update_stats=update_stats)
    if self.conv:
      return sn(nn.Conv(8, (4, 4), (2, 2), ((1, 1), (1, 1)), kernel_init=layers.weight_init), x)
    dense = lambda n: nn.Dense(n, kernel_init=layers.weight_init)
    h = layers.leaky_relu(sn(dense(16), x))
    return sn(dense(8), h)


@pytest.mark.parametrize('conv', [False, True])
def test_spectral_norm_equals_flax_spectral_norm(conv):
  """Same variables (names and initial values); over successive calls with update_stats, the
  same outputs, power-iteration state, and gradients (including sigma's)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 3) if conv else (6, 12))
  ours, theirs = _Ours(conv), _Flax(conv)
  variables = ours.init(jax.random.PRNGKey(1), x, update_stats=False)
  flax_variables = theirs.init(jax.random.PRNGKey(1), x, update_stats=False)
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats'],
               flax_variables['batch_stats'])
  # Flax's SpectralNorm stores W / sigma at init, which the discriminators redraw anyway
  # (layers.reference_init); the parameter trees are the same.
  assert (jax.tree.structure(variables['params']) ==
          jax.tree.structure(flax_variables['params']))
  # Train-like parameters, so that the biases and sigma matter.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        variables['params'])
  states = [variables['batch_stats']] * 2

  def loss(module, params, stats):
    out, updated = module.apply({'params': params, 'batch_stats': stats}, x, update_stats=True,
                                mutable=['batch_stats'])
    return jnp.sum(jnp.sin(3.0 * out)), (out, updated['batch_stats'])

  for _ in range(3):  # each call advances the power iteration by one step
    results = []
    for k, module in enumerate((ours, theirs)):
      (_, (out, stats)), grads = jax.value_and_grad(
          lambda p, m=module, s=states[k]: loss(m, p, s), has_aux=True)(params)
      results.append((out, stats, grads))
      states[k] = stats
    _close(results[0], results[1])


def test_power_iteration_gradient_is_that_of_v_w_u():
  kernel = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  u = jax.random.normal(jax.random.PRNGKey(1), (1, 3))
  grad = jax.grad(lambda k: spectral.power_iteration(k, u)[1])(kernel)
  v = kernel @ u[0] / jnp.linalg.norm(kernel @ u[0])
  new_u = v @ kernel / jnp.linalg.norm(v @ kernel)
  np.testing.assert_allclose(grad, jnp.outer(v, new_u), rtol=1e-5, atol=1e-6)


def test_dense_on_input_parts_equals_dense_on_their_concatenation():
  class Parts(nn.Module):
    split: bool

    @nn.compact
    def __call__(self, a, b):
      x = (a, b) if self.split else jnp.concatenate([a, b], axis=-1)
      return layers.sn_dense(5, x, update_stats=True)

  a = jax.random.normal(jax.random.PRNGKey(0), (4, 7))
  b = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  variables = Parts(True).init(jax.random.PRNGKey(2), a, b)
  jax.tree.map(np.testing.assert_array_equal, variables,
               Parts(False).init(jax.random.PRNGKey(2), a, b))
  outs = [Parts(split).apply(variables, a, b, mutable=['batch_stats']) for split in (True, False)]
  _close(outs[0], outs[1])

  def loss(params, a, b, split):
    out = Parts(split).apply({**variables, 'params': params}, a, b, mutable=['batch_stats'])[0]
    return jnp.sum(jnp.sin(3.0 * out))

  grads = [jax.grad(loss, argnums=(0, 1, 2))(variables['params'], a, b, split)
           for split in (True, False)]
  _close(grads[0], grads[1])
