"""Network shapes, initialisation and spectral normalisation."""
import jax
import numpy as np
import pytest

from mmali_jax import networks
from mmali_jax import train_step
from tests.conftest import load_config


def _init(config, jit=False):
  """jit: one compiled program. For the CNNs it is faster than Flax's initialisation run op by
  op (hundreds of small programs); for the MLPs, whose operations earlier tests have compiled
  already, it is slower."""
  mods, gen, disc = networks.build(config)
  xs, zs, disc_inputs = networks.dummy_inputs(mods, config, batch_size=3)
  maybe_jit = jax.jit if jit else lambda f: f
  gen_vars = maybe_jit(gen.init)(jax.random.PRNGKey(0), xs, zs)
  disc_vars = maybe_jit(lambda *a: disc.init(*a, update_stats=False))(jax.random.PRNGKey(1),
                                                                      *disc_inputs)
  return mods, gen, disc, gen_vars, disc_vars, xs, zs, disc_inputs


def test_mnist_svhn_shapes():
  config = load_config('mnist_svhn')
  mods, gen, disc, gen_vars, disc_vars, xs, zs, _ = _init(config, jit=True)
  assert [m.name for m in mods] == ['0mnist', '1svhn']
  encoded, decoded = jax.jit(gen.apply)(gen_vars, xs, zs)
  for (mean, logvar), x_hat, x in zip(encoded, decoded, xs):
    assert mean.shape == logvar.shape == (3, 20)
    assert x_hat.shape == x.shape
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0  # sigmoid outputs
  (d_mnist, d_svhn), t = jax.jit(disc.apply)(disc_vars, xs, zs)
  assert d_mnist[0].shape == d_svhn[0].shape == (3, 3)  # D0: M + 1 classes
  assert d_mnist[1].shape == d_svhn[1].shape == (3,)  # D1
  assert t.shape == (3,)


@pytest.mark.parametrize('num', [2, 3, 4])
def test_multimnist_discriminator_outputs(num):
  config = load_config('multimnist', f'modalities={num}')
  _, _, disc, _, disc_vars, xs, zs, _ = _init(config)
  outs, t = disc.apply(disc_vars, xs, zs)
  assert len(outs) == num and t.shape == (3,)
  assert all(d0.shape == (3, num + 1) for d0, _ in outs)


def test_monolithic_baseline_discriminator():
  config = load_config('multimnist', 'modalities=3,discriminator=monolithic')
  _, _, disc, _, disc_vars, _, _, disc_inputs = _init(config)
  assert disc_inputs[1].shape == (3, 3 * 10 + 10)  # z = [s_1, s_2, s_3, c]
  assert disc.apply(disc_vars, *disc_inputs, update_stats=False).shape == (3, 4)


def test_initialisation_is_normal_002_with_zero_bias():
  config = load_config('mnist_svhn')
  mods, gen, disc = networks.build(config)
  state = train_step.create_train_state(config, gen, disc, mods)
  # In numpy: jnp would compile a program per parameter shape.
  for tree in jax.device_get((state.gen_params, state.disc_params)):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = jax.tree_util.keystr(path)
      if name.endswith("['bias']"):
        assert not np.any(leaf), name
      elif leaf.size > 5000:
        assert abs(float(np.std(leaf)) - 0.02) < 0.002, name
        assert abs(float(np.mean(leaf))) < 0.002, name


def test_spectral_norm_converges_to_unit_norm_weights():
  """Repeated train-mode calls run power iterations; sigma approaches the top singular value."""
  config = load_config('multimnist')
  mods, _, disc, _, disc_vars, xs, zs, _ = _init(config)
  params, stats = disc_vars['params'], disc_vars['batch_stats']
  for _ in range(30):
    _, updates = disc.apply({'params': params, 'batch_stats': stats}, 0, xs[0], zs[0],
                            update_stats=True, method='unimodal', mutable=['batch_stats'])
    stats = updates['batch_stats']
  kernel = params['d0_0mnist']['Dense_0']['kernel']
  sigma = stats['d0_0mnist']['SpectralNorm_0']['Dense_0/kernel/sigma']
  np.testing.assert_allclose(sigma, np.linalg.svd(np.asarray(kernel), compute_uv=False)[0],
                             rtol=2e-2)


def test_bad_config_values_are_named():
  config = load_config('multimnist')
  config.discriminator = 'fancy'
  with pytest.raises(ValueError, match="discriminator='fancy'"):
    networks.build(config)
  config = load_config('multimnist')
  config.style_dim = 20
  with pytest.raises(ValueError, match='style_dim=20'):
    networks.build(config)
  config = load_config('multimnist')
  config.spectral_norm_estimates = 'per_step'
  with pytest.raises(ValueError, match=r"spectral_norm_estimates='per_step'; choose one of "
                     r"\('per_call', 'per_phase'\)"):
    networks.build(config)
  config = load_config('mnist_svhn')
  config.modalities[1].network = 'resnet'
  with pytest.raises(ValueError, match="unknown network family 'resnet'"):
    networks.build(config)
  with pytest.raises(ValueError, match='Unknown config argument'):
    load_config('multimnist', 'modality=3')


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _dense(*widths):
  """Parameters of a chain of Dense layers (kernel and bias)."""
  return sum(a * b + b for a, b in zip(widths, widths[1:]))


def test_cub_feature_networks_shapes_and_parameter_counts():
  """Shapes only (jax.eval_shape: nothing is computed), against the layer sizes of
  docs/algorithm.md §6.5."""
  config = load_config('cub')
  mods, gen, disc = networks.build(config)
  assert [(m.name, m.example_shape, m.family.dtype) for m in mods] == [
      ('0cap', (1024,), 'float32'), ('1img', (2048,), 'float32')]
  assert all(m.family.classifier is None for m in mods)
  xs, zs, disc_inputs = networks.dummy_inputs(mods, config, batch_size=3)
  gen_vars = jax.eval_shape(gen.init, jax.random.PRNGKey(0), xs, zs)
  disc_vars = jax.eval_shape(lambda *a: disc.init(*a, update_stats=False),
                             jax.random.PRNGKey(1), *disc_inputs)
  encoded, decoded = jax.eval_shape(gen.apply, gen_vars, xs, zs)
  for (mean, logvar), x_hat, x in zip(encoded, decoded, xs):
    assert mean.shape == logvar.shape == (3, 64)
    assert x_hat.shape == x.shape
  outs, t = jax.eval_shape(disc.apply, disc_vars, xs, zs)
  assert [d0.shape for d0, _ in outs] == [(3, 3), (3, 3)] and t.shape == (3,)
  assert [d1.shape for _, d1 in outs] == [(3,), (3,)]
  params = {**gen_vars['params'], **disc_vars['params']}
  d = 64
  for name, dim in (('0cap', 1024), ('1img', 2048)):
    assert _count(params[f'encoder_{name}']) == _dense(dim, dim // 2, dim // 4, dim // 8, 2 * d)
    assert _count(params[f'decoder_{name}']) == _dense(d, dim // 8, dim // 4, dim // 2, dim)
    x_branch = _dense(dim, dim // 2, dim // 4, dim // 8, dim // 8)
    z_branch = _dense(d, dim // 8, dim // 8)
    for disc_name, outputs in (('d0', 3), ('d1', 1)):
      assert _count(params[f'{disc_name}_{name}']) == (
          x_branch + z_branch + _dense(dim // 4, 512, outputs))
  assert _count(params['encoder_0cap']) == 705_536  # docs/algorithm.md §6.5
  assert _count(params['d0_1img']) == 3_166_723
  # The concatenation critic: both x branches -> 512 -> 512 -> 1.
  assert _count(params['joint_critic']) == (
      _dense(1024, 512, 256, 128, 128) + _dense(2048, 1024, 512, 256, 256)
      + _dense(128 + 256, 512, 512, 1)) == 3_985_921


def test_feature_decoders_are_linear():
  """No sigmoid: the decoder's output is its last Dense layer's (features are unbounded)."""
  from mmali_jax.models import features  # pylint: disable=g-import-not-at-top
  decoder = features.Decoder((16,))
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  variables = jax.jit(decoder.init)(jax.random.PRNGKey(1), z)
  last = variables['params']['Dense_3']
  variables['params']['Dense_3'] = {'kernel': 50 * last['kernel'], 'bias': last['bias'] - 2.0}
  out = jax.jit(decoder.apply)(variables, z)
  assert out.shape == (4, 16)
  assert float(out.min()) < -1.0  # impossible after a sigmoid or tanh
