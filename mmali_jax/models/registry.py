"""The registry of network families: everything one architecture needs, by name.

A modality's config names its family (`network='mnist'`); a new architecture is one entry here,
with no other code path to touch: its image shape, encoder, decoder, the discriminator pieces
(the x-z discriminator used for D0 and D1, and the x branch shared by the joint critic T and the
monolithic discriminator) and the coherence classifier that judges its generations.
"""
import dataclasses

from mmali_jax.models import mnist
from mmali_jax.models import svhn


@dataclasses.dataclass(frozen=True)
class NetworkFamily:
  image_shape: tuple  # H, W, C of one example
  encoder: type  # Encoder(latent_dim)(x) -> (mean, log-variance)
  decoder: type  # Decoder(image_shape)(z) -> x in [0, 1]
  xz_discriminator: type  # XZDiscriminator(outputs)(x, z, update_stats) -> logits (D0, D1)
  x_features: type  # XFeatures()(x, update_stats) -> features (T, monolithic D)
  classifier: type  # Classifier()(x, train) -> 10 logits (coherence)


FAMILIES = {
    'mnist': NetworkFamily((28, 28, 1), mnist.Encoder, mnist.Decoder, mnist.XZDiscriminator,
                           mnist.XFeatures, mnist.Classifier),
    'svhn': NetworkFamily((32, 32, 3), svhn.Encoder, svhn.Decoder, svhn.XZDiscriminator,
                          svhn.XFeatures, svhn.Classifier),
}


def family(name):
  """The NetworkFamily registered as `name`; an unknown name is an error listing the known ones."""
  if name not in FAMILIES:
    raise ValueError(f'Unknown network family {name!r}; registered: {sorted(FAMILIES)} '
                     '(mmali_jax/models/registry.py).')
  return FAMILIES[name]
