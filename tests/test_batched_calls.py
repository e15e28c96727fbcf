"""A phase's discriminator calls run as one call per network: the same losses and gradients."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax import batched_calls
from mmali_jax import config_checks
from mmali_jax import train_step
from tests import test_power_iterations as up_front
from tests.conftest import small_config

_phase = up_front._phase  # pylint: disable=protected-access
_assert_close = up_front._assert_close  # pylint: disable=protected-access


@pytest.mark.parametrize('name,arg,phase', [
    # D0_m called 6 times, D1_m 3, T 2; gradients through the calls into the generators
    ('multimnist', 'modalities=2,discriminator=factorized', 'g'),
    ('multimnist', 'modalities=3,discriminator=monolithic', 'd'),
    ('mnist_svhn', '', 'd'),  # convolutions: an estimate per row of [rows, height, width, channels]
])
def test_batched_calls_give_the_losses_estimates_and_gradients_of_calls_one_at_a_time(
    name, arg, phase, monkeypatch):
  config = small_config(name, arg)
  one_at_a_time = _phase(config, phase, up_front=True)
  _assert_close(one_at_a_time, _phase(config, phase, up_front=True, batched=True))
  if name == 'multimnist' and phase == 'd':
    # Every row given its network's first call's estimates instead: the losses change.
    monkeypatch.setattr(batched_calls, 'per_row',
                        lambda values, sizes, shards: jnp.broadcast_to(values[0], (sum(sizes),)))
    with pytest.raises(AssertionError):
      _assert_close(one_at_a_time['loss'],
                    _phase(config, phase, up_front=True, batched=True)['loss'])


def test_batched_calls_follow_the_power_iterations_up_front_and_need_them():
  config = small_config('multimnist', 'modalities=2')
  assert config.batch_discriminator_calls is None
  assert not train_step.batch_discriminator_calls(config, 'cpu')
  assert train_step.batch_discriminator_calls(config, 'gpu')
  config.power_iterations_up_front = True
  assert train_step.batch_discriminator_calls(config, 'cpu')
  config.batch_discriminator_calls = False
  assert not train_step.batch_discriminator_calls(config, 'gpu')
  config.batch_discriminator_calls, config.power_iterations_up_front = True, False
  with pytest.raises(config_checks.ConfigError,
                     match=r'batch_discriminator_calls=True needs the spectral-norm power '
                     r'iterations run before the calls, but config.power_iterations_up_front='
                     r'False: set one of them the other way'):
    config_checks.check(config)


def test_a_second_pass_that_calls_otherwise_than_the_first_is_an_error():
  session = batched_calls.Session(calls=())
  x = jnp.zeros((2, 3))
  assert session.generate(('encode', 0, (2, 3)), lambda: x + 1) is not None
  session.note(('unimodal', 0), (0, x, x), jax.ShapeDtypeStruct((2, 3), jnp.float32))
  session.replay()
  session.set_outputs([x])
  with pytest.raises(RuntimeError, match=r"Generator call 0 of the phase's second pass is "
                     r"\('decode', 0, \(2, 3\)\), but the first made \('encode', 0, \(2, 3\)\)"
                     r".*batch_discriminator_calls=false"):
    session.generate(('decode', 0, (2, 3)), lambda: x)
  with pytest.raises(RuntimeError, match=r"Discriminator call 0 of the phase's second pass is "
                     r"\('content', 0\), but the first made \('unimodal', 0\)"):
    session.output(('content', 0))
  session = batched_calls.Session(calls=())
  session.note(('unimodal', 0), (0, x, x), jax.ShapeDtypeStruct((2, 3), jnp.float32))
  session.replay()
  with pytest.raises(RuntimeError, match=r"second pass made 0 generator and 0 discriminator "
                     r"calls, the first 0 and 1"):
    session.check_done()


@pytest.mark.parametrize('shards', [1, 8])
def test_each_devices_rows_stay_on_it(shards):
  mesh = jax.make_mesh((8,), ('data',))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  a, b = (jax.device_put(jnp.arange(16. * 3).reshape(16, 3) + k, rows) for k in (0, 100))

  def scaled(a, b):  # a batched call that multiplies each call's rows by its own value
    (x,) = batched_calls.concatenate([(a,), (b,)], shards)
    y = x * batched_calls.per_row([jnp.float32(2), jnp.float32(3)], [16, 16], shards)[:, None]
    return batched_calls.split(y, [16, 16], shards)

  fn = jax.jit(scaled, out_shardings=rows)
  ya, yb = fn(a, b)
  np.testing.assert_array_equal(ya, 2 * a)
  np.testing.assert_array_equal(yb, 3 * b)
  collectives = re.findall(r'(all-gather|all-to-all|collective-permute|all-reduce)',
                           fn.lower(a, b).compile().as_text())
  # Block by block, each device works on its own rows; whole batches end to end move rows.
  assert bool(collectives) == (shards == 1), collectives


def test_calls_are_grouped_per_network_and_split_back_in_order():
  session = batched_calls.Session(calls=())
  shape = jax.ShapeDtypeStruct((2,), jnp.float32)
  for call, n in ((('unimodal', 0), 2), (('content', 0), 3), (('unimodal', 0), 1)):
    session.note(call, (0, jnp.full((n, 4), float(n))), shape)
  assert session.groups() == [(('unimodal', 0), [0, 2]), (('content', 0), [1])]
  m, x = batched_calls.concatenate([session.args(0), session.args(2)])
  assert m == 0 and x.shape == (3, 4)
  np.testing.assert_array_equal(batched_calls.per_row([jnp.float32(5), jnp.float32(7)], [2, 1]),
                                [5, 5, 7])
  first, second = batched_calls.split({'y': x[:, 0]}, [2, 1])
  np.testing.assert_array_equal(first['y'], [2, 2])
  np.testing.assert_array_equal(second['y'], [1])
