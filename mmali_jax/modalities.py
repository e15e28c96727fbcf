"""Modality registry: the config names a network family per modality; this maps it to modules.

A new image dataset needs only a config entry (and, for a new architecture, one more family).
"""
import dataclasses

from mmali_jax.models import mnist
from mmali_jax.models import svhn


@dataclasses.dataclass(frozen=True)
class NetworkFamily:
  image_shape: tuple  # H, W, C
  encoder: type
  decoder: type
  xz_discriminator: type
  x_features: type  # x branch of the joint critic and the monolithic discriminator


NETWORKS = {
    'mnist': NetworkFamily((28, 28, 1), mnist.Encoder, mnist.Decoder, mnist.XZDiscriminator,
                           mnist.XFeatures),
    'svhn': NetworkFamily((32, 32, 3), svhn.Encoder, svhn.Decoder, svhn.XZDiscriminator,
                          svhn.XFeatures),
}


@dataclasses.dataclass(frozen=True)
class Modality:
  name: str
  dataset: str
  network: str
  rotation: int
  rec_weight: float

  @property
  def family(self):
    return NETWORKS[self.network]

  @property
  def image_shape(self):
    return self.family.image_shape


def from_config(config):
  """The config's modalities as `Modality` records, sorted by name (the reference's order)."""
  if not config.modalities:
    raise ValueError('config.modalities is empty: declare at least two modalities '
                     '(see configs/multimnist.py for an example).')
  specs = []
  for spec in config.modalities:
    if spec.network not in NETWORKS:
      raise ValueError(f'Modality {spec.name!r}: unknown network {spec.network!r}; '
                       f'choose one of {sorted(NETWORKS)}.')
    specs.append(Modality(spec.name, spec.dataset, spec.network, int(spec.rotation) % 4,
                          float(spec.rec_weight)))
  specs.sort(key=lambda m: m.name)
  names = [m.name for m in specs]
  if len(set(names)) != len(names):
    raise ValueError(f'Modality names must be unique, got {names}.')
  if len(specs) < 2:
    raise ValueError(f'MMALI needs at least two modalities, got {names}.')
  return tuple(specs)
