"""The config's modalities as records: name, dataset, network family, rotation, weight, and the
dataset feature that holds the examples.

A new dataset needs only a config entry; a new architecture, one entry in
`mmali_jax.models.registry`.
"""
import dataclasses
from typing import Optional

from mmali_jax.models import registry


@dataclasses.dataclass(frozen=True)
class Modality:
  name: str
  dataset: str
  network: str
  rotation: int
  rec_weight: float
  feature: Optional[str] = None  # TFDS feature of the examples; None = the supervised image

  @property
  def family(self):
    return registry.family(self.network)

  @property
  def example_shape(self):
    return self.family.example_shape

  @property
  def image_shape(self):
    return self.family.example_shape


def from_config(config):
  """The config's modalities as `Modality` records, sorted by name (the reference's order);
  `config_checks.check` has validated them."""
  specs = [Modality(spec.name, spec.dataset, spec.network, int(spec.rotation) % 4,
                    float(spec.rec_weight), spec.get('feature'))
           for spec in config.modalities]
  return tuple(sorted(specs, key=lambda m: m.name))
