"""The objectives on real networks: which distributions each class of a discriminator sees."""
import types

import jax
import numpy as np
import pytest

from mmali_jax import networks
from mmali_jax import objectives
from mmali_jax import train_step
from mmali_jax.objectives import monolithic
from tests.conftest import load_config


class _Recording(networks.Bound):
  """Bound networks that remember every decoder call and every monolithic-discriminator call."""

  def __init__(self, *args):
    super().__init__(*args)
    self.decoded, self.shown = [], []

  def decode(self, m, z):
    x = super().decode(m, z)
    self.decoded.append((m, np.asarray(z), x))
    return x

  def monolithic(self, xs, z):
    self.shown.append((xs, np.asarray(z)))
    return super().monolithic(xs, z)


@pytest.mark.parametrize('loss_fn', [monolithic.discriminator_loss, monolithic.generator_loss])
def test_monolithic_decoder_class_shows_the_content_every_decoder_received(loss_fn):
  config = load_config('multimnist', 'modalities=3,discriminator=monolithic')
  mods, gen, disc = networks.build(config)
  state = train_step.create_train_state(config, gen, disc, mods)
  rng = np.random.default_rng(0)
  batches = {key: [rng.random((4,) + m.image_shape, np.float32) for m in mods]
             for key in ('a', 'b', 'b_marginals', 'c', 'd')}
  nets = _Recording(gen, disc, state.gen_params, state.disc_params, state.disc_stats,
                    config.style_dim)
  _, metrics = loss_fn(nets, batches, jax.random.PRNGKey(1), config, mods)

  num, style_dim = len(mods), config.style_dim
  assert len(metrics) == num + 1  # one term per class, of one counted batch
  decoder_class = [(xs, z) for xs, z in nets.shown
                   if any(xs[0] is x for _, _, x in nets.decoded)]
  assert len(decoder_class) == len(nets.decoded) // num == 1
  xs, shown = decoder_class[0]
  for m, z_decoded, x in nets.decoded:
    assert xs[m] is x  # modality m of the tuple is G_m(z_decoded) ...
    # ... next to that z's style in slot m and its content as the shared content.
    np.testing.assert_array_equal(shown[:, m * style_dim:(m + 1) * style_dim],
                                  z_decoded[:, :style_dim])
    np.testing.assert_array_equal(shown[:, num * style_dim:], z_decoded[:, style_dim:])


def _recording_estimates(nets):
  """Records the spectral-norm stats every discriminator call starts from."""
  starts = []
  apply = nets.disc.apply

  def recording_apply(variables, *args, **kwargs):
    starts.append(variables['batch_stats'])
    return apply(variables, *args, **kwargs)

  nets.disc = types.SimpleNamespace(apply=recording_apply)
  return starts


@pytest.mark.parametrize('arg', ['modalities=2', 'modalities=3,discriminator=monolithic'])
def test_per_phase_estimates_one_power_iteration_per_layer_and_phase(arg):
  config = load_config('multimnist', arg)
  mods, gen, disc = networks.build(config)
  state = train_step.create_train_state(config, gen, disc, mods)
  rng = np.random.default_rng(0)
  batches = {key: [rng.random((4,) + m.image_shape, np.float32) for m in mods]
             for key in ('a', 'b', 'b_marginals', 'c', 'd')}
  objective = objectives.OBJECTIVES[networks.discriminator_kind(config.discriminator)]
  # One call of every discriminator: every layer's estimate, one power iteration on.
  _, _, disc_inputs = networks.dummy_inputs(mods, config)
  _, once = disc.apply({'params': state.disc_params, 'batch_stats': state.disc_stats},
                       *disc_inputs, update_stats=True, mutable=['batch_stats'])
  ends = {}
  for estimates in ('per_call', 'per_phase'):
    nets = networks.Bound(gen, disc, state.gen_params, state.disc_params, state.disc_stats,
                          config.style_dim, estimates)
    starts = _recording_estimates(nets)
    objective.discriminator_loss(nets, batches, jax.random.PRNGKey(1), config, mods)
    assert len(starts) > 3  # several calls per network
    same_start = [jax.tree.all(jax.tree.map(np.array_equal, s, state.disc_stats))
                  for s in starts]
    # per_phase: every call starts from the phase's estimates; per_call: each from the last's.
    assert all(same_start) == (estimates == 'per_phase') and same_start[0]
    ends[estimates] = nets.disc_stats
  jax.tree.map(np.testing.assert_array_equal, ends['per_phase'], once['batch_stats'])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                       ends['per_call'], ends['per_phase']))
  assert any(moved)  # per_call ran several iterations on the layers called several times
