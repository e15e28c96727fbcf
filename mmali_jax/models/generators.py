"""Encoders E_m and decoders G_m of every modality, as one Flax module used as pure functions."""
import flax.linen as nn


class Generators(nn.Module):
  """Holds E_m (x -> mean, log-variance) and G_m (z -> x) for each modality, in sorted order."""
  modalities: tuple  # of mmali_jax.modalities.Modality
  latent_dim: int

  def setup(self):
    self.encoders = [m.family.encoder(self.latent_dim, name=f'encoder_{m.name}')
                     for m in self.modalities]
    self.decoders = [m.family.decoder(m.example_shape, name=f'decoder_{m.name}')
                     for m in self.modalities]

  def encode(self, m, x):
    return self.encoders[m](x)

  def decode(self, m, z):
    return self.decoders[m](z)

  def __call__(self, xs, zs):
    """Touches every network (used for initialisation)."""
    return ([self.encode(m, x) for m, x in enumerate(xs)],
            [self.decode(m, z) for m, z in enumerate(zs)])
