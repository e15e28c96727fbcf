"""The objectives on real networks: which distributions each class of a discriminator sees."""
import jax
import numpy as np
import pytest

from mmali_jax import networks
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
