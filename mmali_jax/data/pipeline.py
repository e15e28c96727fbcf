"""Multimodal datasets: per-modality examples and their pairs (docs/algorithm.md §8).

The training batches are drawn from them on the device (`mmali_jax.data.sampler`).
"""
import dataclasses
import hashlib

import numpy as np

from mmali_jax import config_checks
from mmali_jax.data import pairing
from mmali_jax.data import sources
from mmali_jax.models import registry

# Keys of np.random.default_rng([seed, KEY]) for the train and test pairings.
_SPLIT_KEYS = {'train': 0, 'test': 1}


def rotate(images, quarter_turns):
  """Rotates NHWC images by 90 * quarter_turns degrees counter-clockwise (MultiMNIST views).

  Same direction as torchvision's RandomRotation((90k, 90k)): a top-right pixel goes top-left.
  """
  k = int(quarter_turns) % 4
  if k == 0:
    return images
  return np.ascontiguousarray(np.rot90(images, k=k, axes=(1, 2)))


def load_images(dataset, split, data_dir=None, rotation=0, feature=None):
  """(uint8 images [N, H, W, C] turned `rotation` quarter turns, int32 labels) of a TFDS split;
  with `feature`, that feature of every example as stored (e.g. float32 [N, 10, 1024])."""
  images, labels = sources.load_split(dataset, split, data_dir, feature)
  return rotate(images, rotation), labels


def flatten_views(examples, labels, example_shape):
  """(items, labels, instances): a dataset storing several views per example (CUB: [N, 10, 1024],
  10 captions per image) becomes N * 10 items, views of one example contiguous; `instances`
  holds each item's example index. Examples of `example_shape` are returned as they are."""
  extra = examples.ndim - 1 - len(example_shape)
  n = examples.shape[0]
  if extra == 1 and tuple(examples.shape[2:]) == tuple(example_shape):
    views = examples.shape[1]
    return (examples.reshape((n * views,) + tuple(example_shape)), np.repeat(labels, views),
            np.repeat(np.arange(n), views))
  return examples, labels, np.arange(n)


@dataclasses.dataclass(eq=False)
class ModalityData:
  name: str
  images: np.ndarray  # the examples: uint8 images [N, H, W, C] (rotated) or float32 [N, D]
  labels: np.ndarray  # int32 [N]
  instances: np.ndarray = None  # int [N]: the dataset example each item comes from

  def __post_init__(self):
    if self.instances is None:
      self.instances = np.arange(self.images.shape[0])


@dataclasses.dataclass(eq=False)
class MultimodalDataset:
  modalities: list  # [ModalityData], sorted by name.
  pairs: np.ndarray  # int64 [P, M]: row p indexes one example of every modality.
  labels: np.ndarray  # int32 [P]: the (shared) class of each pair.

  @property
  def names(self):
    return [m.name for m in self.modalities]

  @property
  def num_pairs(self):
    return int(self.pairs.shape[0])

  def batch(self, pair_indices):
    """{name: examples} of the given pairs."""
    rows = self.pairs[np.asarray(pair_indices)]
    return {m.name: m.images[rows[:, k]] for k, m in enumerate(self.modalities)}

  def fingerprint(self):
    """{part: 'shape dtype sha256'} of the arrays training samples from (each modality's
    examples, in order, and the pairs): a resumed run, and every process of a job, must draw its
    batches from exactly these, or the (seed, step) sampler gives other batches."""
    parts = {f'examples of {m.name}': m.images for m in self.modalities}
    parts['pairs'] = self.pairs.astype(np.int64)
    return {name: f'{list(a.shape)} {a.dtype} '
                  f'{hashlib.sha256(np.ascontiguousarray(a)).hexdigest()[:16]}'
            for name, a in parts.items()}


def load_dataset(config, split):
  """The paired train or test set of `config.modalities` (test pairs always use all data:
  p = 1, no max_per_class), paired by `config.data.pairing`.

  Unlike the reference, whose test pairs are redrawn unseeded at every evaluation, both splits'
  pairings are seeded by config.seed (docs/algorithm.md §10).
  """
  if split not in _SPLIT_KEYS:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  specs = sorted(config.modalities, key=lambda s: s.name)
  names = [s.name for s in specs]
  if not specs or len(set(names)) != len(names):
    raise ValueError(f'config.modalities needs distinct names, got {names}.')
  modalities = []
  for spec in specs:
    examples, labels = load_images(spec.dataset, split, config.data.tfds_data_dir, spec.rotation,
                                   spec.get('feature'))
    items = flatten_views(examples, labels, registry.family(spec.network).example_shape)
    modalities.append(ModalityData(spec.name, *items))
  # The training subset's settings apply to training only: the test pairs use all the data.
  percentage, cap = ((config.data.percentage, config.data.max_per_class) if split == 'train'
                     else (1.0, None))
  rng = np.random.default_rng([config.seed, _SPLIT_KEYS[split]])
  try:
    pairs = pairing.PAIRINGS[config.data.pairing](modalities, config, percentage, cap, rng)
  except ValueError as err:
    raise config_checks.ConfigError(
        f'config.data.pairing={config.data.pairing!r} cannot pair {names}: {err}') from None
  labels = modalities[0].labels[pairs[:, 0]].astype(np.int32)
  return MultimodalDataset(modalities, pairs, labels)
