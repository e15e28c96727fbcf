"""The config's modalities as records: name, dataset, network family, rotation, weight.

A new image dataset needs only a config entry; a new architecture, one entry in
`mmali_jax.models.registry`.
"""
import dataclasses

from mmali_jax.models import registry


@dataclasses.dataclass(frozen=True)
class Modality:
  name: str
  dataset: str
  network: str
  rotation: int
  rec_weight: float

  @property
  def family(self):
    return registry.family(self.network)

  @property
  def image_shape(self):
    return self.family.image_shape


def from_config(config):
  """The config's modalities as `Modality` records, sorted by name (the reference's order);
  `config_checks.check` has validated them."""
  specs = [Modality(spec.name, spec.dataset, spec.network, int(spec.rotation) % 4,
                    float(spec.rec_weight)) for spec in config.modalities]
  return tuple(sorted(specs, key=lambda m: m.name))
