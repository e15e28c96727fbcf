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
  """The config's modalities as `Modality` records, sorted by name (the reference's order)."""
  if not config.modalities:
    raise ValueError('config.modalities is empty: declare at least two modalities '
                     '(see configs/multimnist.py for an example).')
  specs = []
  for spec in config.modalities:
    if spec.network not in registry.FAMILIES:
      raise ValueError(f'Modality {spec.name!r}: unknown network {spec.network!r}; '
                       f'choose one of {sorted(registry.FAMILIES)}.')
    specs.append(Modality(spec.name, spec.dataset, spec.network, int(spec.rotation) % 4,
                          float(spec.rec_weight)))
  specs.sort(key=lambda m: m.name)
  names = [m.name for m in specs]
  if len(set(names)) != len(names):
    raise ValueError(f'Modality names must be unique, got {names}.')
  if len(specs) < 2:
    raise ValueError(f'MMALI needs at least two modalities, got {names}.')
  return tuple(specs)
