"""A phase's power iterations run before its calls, batched: the same estimates as in the calls."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax import batched_calls
from mmali_jax import networks
from mmali_jax import objectives
from mmali_jax import power_iterations
from mmali_jax import programs
from mmali_jax import train_step
from tests import test_train
from tests.conftest import data_parallel_config
from tests.conftest import small_config

_BATCHES = ('a', 'b', 'b_marginals', 'c', 'd')


def _setup(config):
  mods, gen, disc = networks.build(config)
  state = train_step.create_train_state(config, gen, disc, mods)
  rng = np.random.default_rng(0)
  xs = {key: [jnp.asarray(rng.random((4,) + m.image_shape, np.float32)) for m in mods]
        for key in _BATCHES}
  objective = objectives.OBJECTIVES[networks.discriminator_kind(config.discriminator)]
  return mods, gen, disc, state, xs, objective


def _phase(config, phase, up_front, batched=False):
  """A D step's ('d') or G step's ('g') loss, metrics, final estimates and gradients (with
  respect to the parameters the phase trains), jitted, the power iterations in the calls or up
  front, and then the calls of each discriminator one at a time or as one (`batched`)."""
  mods, gen, disc, state, xs, objective = _setup(config)

  # Every array an argument, none a constant of the program: XLA would fold the constants (the
  # networks' weights) at every compile, and the programs of runs on other values would differ.
  @jax.jit
  def run(params, others, disc_stats, xs):
    def loss_fn(params, calls=None):
      gen_params, disc_params = (others, params) if phase == 'd' else (params, others)
      nets = networks.Bound(gen, disc, gen_params, disc_params, disc_stats,
                            config.style_dim, config.spectral_norm_estimates, calls)
      loss = objective.discriminator_loss if phase == 'd' else objective.generator_loss
      value, metrics = loss(nets, xs, jax.random.PRNGKey(1), config, mods)
      return value, (metrics, nets.disc_stats)

    fn = loss_fn
    if up_front:
      calls = power_iterations.record_calls(loss_fn, params)
      fn = (batched_calls.batched(loss_fn, calls) if batched else
            functools.partial(loss_fn, calls=calls))
    return jax.value_and_grad(fn, has_aux=True)(params)

  trained, others = ((state.disc_params, state.gen_params) if phase == 'd' else
                     (state.gen_params, state.disc_params))
  (loss, (metrics, stats)), grads = run(trained, others, state.disc_stats, xs)
  return jax.device_get({'loss': loss, 'metrics': metrics, 'stats': stats, 'grads': grads})


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6), a, b)


# The phases and configs of tests/test_batched_calls.py, which compares the up-front programs
# here with batched ones: each compiles once in the suite's compilation cache.
@pytest.mark.parametrize('name,arg,phase', [
    ('multimnist', 'modalities=2,discriminator=factorized', 'g'),
    ('multimnist', 'modalities=3,discriminator=monolithic', 'd'),
    ('mnist_svhn', '', 'd'),  # convolution kernels, modalities of different architectures
])
def test_up_front_estimates_loss_and_gradients_equal_those_of_power_iterations_in_the_calls(
    name, arg, phase):
  config = small_config(name, arg)
  _assert_close(_phase(config, phase, up_front=False), _phase(config, phase, up_front=True))


def test_up_front_per_phase_estimates_equal_per_phase_in_the_calls():
  config = small_config('multimnist', 'modalities=2')
  per_call = _phase(config, 'g', up_front=True)
  config.spectral_norm_estimates = 'per_phase'
  per_phase = _phase(config, 'g', up_front=False)
  _assert_close(per_phase, _phase(config, 'g', up_front=True))
  # The comparisons see a wrong estimate: per_call's (the k-th call given the k-th) differ.
  with pytest.raises(AssertionError):
    _assert_close(per_call['stats'], per_phase['stats'])
  with pytest.raises(AssertionError):
    _assert_close(per_call['loss'], per_phase['loss'])


def _recorded(config):
  mods, gen, disc, state, xs, objective = _setup(config)

  def loss_fn(disc_params, calls=None):
    nets = networks.Bound(gen, disc, state.gen_params, disc_params, state.disc_stats,
                          config.style_dim, 'per_call', calls)
    return objective.discriminator_loss(nets, xs, jax.random.PRNGKey(1), config, mods)

  bound = lambda calls: networks.Bound(gen, disc, state.gen_params, state.disc_params,
                                       state.disc_stats, config.style_dim, 'per_call', calls)
  return mods, state, xs, power_iterations.record_calls(loss_fn, state.disc_params), bound


def test_recorded_calls_name_the_layers_each_call_runs():
  mods, state, _, calls, _ = _recorded(small_config('multimnist', 'modalities=2'))
  stats = state.disc_stats
  for call, layers in calls:
    network = {'unimodal': 'd0_', 'content': 'd1_', 'joint_critic': 'joint_critic'}[call[0]]
    expected = [k for k in stats if k.startswith(network) and
                (len(call) == 1 or k == network + mods[call[1]].name)]
    assert sorted({layer[0] for layer in layers}) == expected, (call, layers)
    # every spectral-norm layer of the network, each once
    assert len(layers) == len(set(layers)) == sum(
        len(jax.tree.leaves(stats[k])) // 2 for k in expected)
  assert {c[0] for c, _ in calls} == {'unimodal', 'content', 'joint_critic'}


def test_a_phase_that_calls_otherwise_than_traced_is_an_error():
  mods, _, xs, calls, bound = _recorded(small_config('multimnist', 'modalities=2'))
  x, z = xs['a'][0], jnp.zeros((4, 20))
  assert calls[0][0] == ('unimodal', 0)
  with pytest.raises(RuntimeError, match=r"call 0 of the phase is \('content', 0\), but the "
                     r"traced phase made \('unimodal', 0\).*power_iterations_up_front=false"):
    bound(calls).d1(0, x, z)
  nets = bound(calls)
  nets.d0(0, x, z)
  with pytest.raises(RuntimeError, match=f'made 1 discriminator calls, but was traced with '
                     f'{len(calls)}'):
    _ = nets.disc_stats  # the final estimates are those of calls not made
  # A call running a layer the traced one did not: that layer would iterate on its own.
  (call, layers), *rest = calls
  with pytest.raises(RuntimeError, match=r"call \('unimodal', 0\) ran power iterations of layers "
                     r"the traced phase did not: \['d0_0mnist/SpectralNorm_1/Dense_1/kernel/"):
    bound(((call, layers[:1]),) + tuple(rest)).d0(0, x, z)
  del mods


def test_a_layer_run_twice_in_one_call_is_an_error():
  with pytest.raises(RuntimeError, match=r"layer d0/SpectralNorm_0/Dense_0/kernel ran 2 power "
                     r"iterations in the discriminator call \('unimodal', 0\).*up_front=false"):
    power_iterations.layers_run(('unimodal', 0),
                                {'d0': {'SpectralNorm_0': {'Dense_0/kernel': (1, 1)}}})


def test_training_with_power_iterations_up_front_matches_them_in_the_calls(monkeypatch):
  programs.clear()  # steps this process traced before would not be traced (and counted) again
  recorded, batched = [], []
  record_calls = power_iterations.record_calls
  monkeypatch.setattr(power_iterations, 'record_calls',
                      lambda *a: recorded.append(1) or record_calls(*a))
  monkeypatch.setattr(batched_calls, 'batched',
                      lambda *a, f=batched_calls.batched: batched.append(1) or f(*a))
  # test_train's 8 == 1 device config: its one-device program
  config = data_parallel_config(power_iterations_up_front=False)
  in_calls, in_calls_metrics = test_train._run_steps(config, [1, 1])  # pylint: disable=protected-access
  assert not recorded and not batched
  # As on accelerators: 2 iterations in one call (lax.scan) on 8 devices, the power iterations
  # up front and the calls of each discriminator batched (which follows them by default;
  # tests/test_batched_calls.py compares a phase with and without).
  config.power_iterations_up_front = True
  up_front, up_front_metrics = test_train._run_steps(config, [2], num_devices=8)  # pylint: disable=protected-access
  assert len(recorded) == len(batched) == 2  # the D step and the G step, traced once
  test_train._assert_trees_close(  # pylint: disable=protected-access
      jax.tree.map(lambda *v: np.mean(v), *in_calls_metrics), up_front_metrics[0], rtol=1e-4,
      atol=1e-6)
  test_train._assert_same_training(  # pylint: disable=protected-access
      test_train._params(in_calls), test_train._params(up_front), steps=2,  # pylint: disable=protected-access
      learning_rate=config.optim.learning_rate)


def test_up_front_is_the_default_on_accelerators_only():
  config = small_config('multimnist', 'modalities=2')
  assert config.power_iterations_up_front is None
  assert not train_step.power_iterations_up_front(config, 'cpu')
  assert train_step.power_iterations_up_front(config, 'gpu')
  assert train_step.power_iterations_up_front(config, 'tpu')
  config.power_iterations_up_front = True
  assert train_step.power_iterations_up_front(config, 'cpu')
  config.power_iterations_up_front = None
  config.batch_discriminator_calls = True  # which needs them
  assert train_step.power_iterations_up_front(config, 'cpu')


def test_layers_of_nearby_shapes_share_a_chain_padded_and_far_ones_do_not():
  # MultiMNIST M=2 factorized: D0_m and D1_m, the critic's branches f_m and its head.
  shapes = {'d0_0/in': (804, 400), 'd1_0/in': (804, 400), 'd0_0/out': (400, 3),
            'd1_0/out': (400, 1), 't/f_0': (784, 400), 't/f_1': (400, 256),
            't/head_0': (512, 1024), 't/head_1': (1024, 1024), 't/out': (1024, 1)}
  assert power_iterations.buckets(shapes) == {
      (1024, 1024): ['t/head_1', 't/head_0'],  # padding doubles the smaller one: allowed
      # (400, 256) -> (804, 400) adds 219,200 entries, more than it has but under 2**18
      (804, 400): ['d0_0/in', 'd1_0/in', 't/f_0', 't/f_1'],
      (400, 3): ['d0_0/out'],  # it would add 320,400 entries to (804, 400)
      (1024, 1): ['t/out', 'd1_0/out'],  # the smallest shape covering (400, 1)
  }
  # A shape no batch covers starts its own, even next to larger ones.
  assert list(power_iterations.buckets({'a': (1024, 1024), 'b': (2048, 1)})) == [
      (1024, 1024), (2048, 1)]
