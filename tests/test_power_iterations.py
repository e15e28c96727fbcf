"""A phase's power iterations run before its calls, batched: the same estimates as in the calls."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax import networks
from mmali_jax import objectives
from mmali_jax import power_iterations
from mmali_jax import train_step
from tests import test_train
from tests.conftest import small_config


def _d_step(config, calls_mode):
  """The D step's loss, metrics, final estimates and gradients, jitted: calls_mode 'in_calls'
  or 'up_front'."""
  mods, gen, disc = networks.build(config)
  state = train_step.create_train_state(config, gen, disc, mods)
  rng = np.random.default_rng(0)
  xs = {key: [jnp.asarray(rng.random((4,) + m.image_shape, np.float32)) for m in mods]
        for key in ('a', 'b', 'b_marginals', 'c', 'd')}
  objective = objectives.OBJECTIVES[networks.discriminator_kind(config.discriminator)]

  def loss_fn(disc_params, calls=None):
    nets = networks.Bound(gen, disc, state.gen_params, disc_params, state.disc_stats,
                          config.style_dim, config.spectral_norm_estimates, calls)
    loss, metrics = objective.discriminator_loss(nets, xs, jax.random.PRNGKey(1), config, mods)
    return loss, (metrics, nets.disc_stats)

  @jax.jit
  def run(disc_params):
    fn = loss_fn
    if calls_mode == 'up_front':
      fn = functools.partial(loss_fn, calls=power_iterations.record_calls(loss_fn, disc_params))
    return jax.value_and_grad(fn, has_aux=True)(disc_params)

  (loss, (metrics, stats)), grads = run(state.disc_params)
  return jax.device_get({'loss': loss, 'metrics': metrics, 'stats': stats, 'grads': grads})


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6), a, b)


@pytest.mark.parametrize('name,arg', [
    ('multimnist', 'modalities=3,discriminator=factorized'),
    ('multimnist', 'modalities=2,discriminator=monolithic'),
    ('mnist_svhn', ''),  # convolution kernels, modalities of different architectures
])
def test_up_front_estimates_loss_and_gradients_equal_those_of_power_iterations_in_the_calls(
    name, arg):
  config = small_config(name, arg)
  _assert_close(_d_step(config, 'in_calls'), _d_step(config, 'up_front'))


def test_up_front_per_phase_estimates_equal_per_phase_in_the_calls():
  config = small_config('multimnist', 'modalities=3,discriminator=factorized')
  per_call = _d_step(config, 'up_front')
  config.spectral_norm_estimates = 'per_phase'
  per_phase = _d_step(config, 'in_calls')
  _assert_close(per_phase, _d_step(config, 'up_front'))
  # The comparisons see a wrong estimate: per_call's (the k-th call given the k-th) differ.
  with pytest.raises(AssertionError):
    _assert_close(per_call['stats'], per_phase['stats'])
  with pytest.raises(AssertionError):
    _assert_close(per_call['loss'], per_phase['loss'])


def test_recorded_calls_name_the_layers_each_call_moves():
  config = small_config('multimnist', 'modalities=2')
  mods, gen, disc = networks.build(config)
  state = train_step.create_train_state(config, gen, disc, mods)
  xs = {key: [jnp.zeros((4,) + m.image_shape, jnp.float32) for m in mods]
        for key in ('a', 'b', 'b_marginals', 'c', 'd')}
  objective = objectives.OBJECTIVES['factorized']

  def loss_fn(disc_params, calls=None):
    nets = networks.Bound(gen, disc, state.gen_params, disc_params, state.disc_stats,
                          config.style_dim, 'per_call', calls)
    return objective.discriminator_loss(nets, xs, jax.random.PRNGKey(1), config, mods)

  calls = power_iterations.record_calls(loss_fn, state.disc_params)
  stats = state.disc_stats
  for call, layers in calls:
    network = {'unimodal': 'd0_', 'content': 'd1_', 'joint_critic': 'joint_critic'}[call[0]]
    expected = [k for k in stats if k.startswith(network) and
                (len(call) == 1 or k == network + mods[call[1]].name)]
    assert sorted({layer[0] for layer in layers}) == expected, (call, layers)
    # every spectral-norm layer of the network called, none twice
    assert len(layers) == len(set(layers)) == sum(
        len(jax.tree.leaves(stats[k])) // 2 for k in expected)
  assert {c[0] for c, _ in calls} == {'unimodal', 'content', 'joint_critic'}

  # A phase that makes other calls than the traced one is an error naming both.
  plan = power_iterations.Plan(calls, state.disc_params, state.disc_stats)
  with pytest.raises(RuntimeError, match=r"call 0 of the phase is \('content', 0\), but the "
                     r"traced phase made \('unimodal', 0\)"):
    plan.estimates(('content', 0))


def test_training_with_power_iterations_up_front_matches_them_in_the_calls():
  results = []
  for up_front in (False, True):
    config = small_config('multimnist', 'modalities=2')
    config.power_iterations_up_front = up_front
    state, metrics = test_train._run_steps(config, [1, 1])  # pylint: disable=protected-access
    results.append((test_train._params(state), metrics))  # pylint: disable=protected-access
  (a, a_metrics), (b, b_metrics) = results
  _assert_close(a_metrics, b_metrics)
  test_train._assert_same_training(a, b, steps=2, learning_rate=config.optim.learning_rate)  # pylint: disable=protected-access


def test_up_front_is_the_default_on_accelerators_only():
  config = small_config('multimnist', 'modalities=2')
  assert config.power_iterations_up_front is None
  assert not train_step.power_iterations_up_front(config, 'cpu')
  assert train_step.power_iterations_up_front(config, 'gpu')
  assert train_step.power_iterations_up_front(config, 'tpu')
  config.power_iterations_up_front = True
  assert train_step.power_iterations_up_front(config, 'cpu')
