"""Network shapes, initialisation and spectral normalisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax import networks
from mmali_jax import train_step
from tests.conftest import load_config


def _init(config):
  mods, gen, disc = networks.build(config)
  xs, zs, disc_inputs = networks.dummy_inputs(mods, config, batch_size=3)
  gen_vars = gen.init(jax.random.PRNGKey(0), xs, zs)
  disc_vars = disc.init(jax.random.PRNGKey(1), *disc_inputs, update_stats=False)
  return mods, gen, disc, gen_vars, disc_vars, xs, zs, disc_inputs


def test_mnist_svhn_shapes():
  config = load_config('mnist_svhn')
  mods, gen, disc, gen_vars, disc_vars, xs, zs, _ = _init(config)
  assert [m.name for m in mods] == ['0mnist', '1svhn']
  encoded, decoded = gen.apply(gen_vars, xs, zs)
  for (mean, logvar), x_hat, x in zip(encoded, decoded, xs):
    assert mean.shape == logvar.shape == (3, 20)
    assert x_hat.shape == x.shape
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0  # sigmoid outputs
  (d_mnist, d_svhn), t = disc.apply(disc_vars, xs, zs)
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
  for tree in (state.gen_params, state.disc_params):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = jax.tree_util.keystr(path)
      if name.endswith("['bias']"):
        assert not np.any(leaf), name
      elif leaf.size > 5000:
        assert abs(float(jnp.std(leaf)) - 0.02) < 0.002, name
        assert abs(float(jnp.mean(leaf))) < 0.002, name


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
  config = load_config('mnist_svhn')
  config.modalities[1].network = 'resnet'
  with pytest.raises(ValueError, match="unknown network family 'resnet'"):
    networks.build(config)
  with pytest.raises(ValueError, match='Unknown config argument'):
    load_config('multimnist', 'modality=3')
