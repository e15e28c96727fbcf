"""Multimodal datasets and the training batch sampler (docs/algorithm.md §5, §8).

Batches are a pure function of (dataset, batch_size, seed, unpaired, step): a resumed run draws
exactly the batches the uninterrupted run would have, with no iterator state in checkpoints.
"""
import collections
import dataclasses

import numpy as np

from mmali_jax.data import pairing
from mmali_jax.data import sources

# Keys of np.random.default_rng([seed, KEY, ...]); 0 and 1 (train/test pairings) are _SPLIT_KEYS.
_PAIRED_STREAM, _MARGINALS_PERM, _UNIMODAL_STREAM, _MARGINALS_STREAM = 2, 3, 4, 5
_SPLIT_KEYS = {'train': 0, 'test': 1}
_BATCHES = ('a', 'b', 'b_marginals', 'c', 'd')


def rotate(images, quarter_turns):
  """Rotates NHWC images by 90 * quarter_turns degrees counter-clockwise (MultiMNIST views).

  Same direction as torchvision's RandomRotation((90k, 90k)): a top-right pixel goes top-left.
  """
  k = int(quarter_turns) % 4
  if k == 0:
    return images
  return np.ascontiguousarray(np.rot90(images, k=k, axes=(1, 2)))


def load_images(dataset, split, data_dir=None, rotation=0):
  """(uint8 images [N, H, W, C] turned `rotation` quarter turns, int32 labels) of a TFDS split."""
  images, labels = sources.load_split(dataset, split, data_dir)
  return rotate(images, rotation), labels


@dataclasses.dataclass(eq=False)
class ModalityData:
  name: str
  images: np.ndarray  # uint8 [N, H, W, C], already rotated.
  labels: np.ndarray  # int32 [N]


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
    """{name: uint8 images} of the given pairs."""
    rows = self.pairs[np.asarray(pair_indices)]
    return {m.name: m.images[rows[:, k]] for k, m in enumerate(self.modalities)}


def load_dataset(config, split):
  """The paired train or test set of `config.modalities` (test pairs always use all data, p = 1).

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
    images, labels = load_images(spec.dataset, split, config.data.tfds_data_dir, spec.rotation)
    modalities.append(ModalityData(spec.name, images, labels))
  percentage = config.data.percentage if split == 'train' else 1.0
  rng = np.random.default_rng([config.seed, _SPLIT_KEYS[split]])
  pairs = pairing.match_by_label([m.labels for m in modalities], config.data.multiplication,
                                 percentage, config.data.max_per_class, rng)
  labels = modalities[0].labels[pairs[:, 0]].astype(np.int32)
  return MultimodalDataset(modalities, pairs, labels)


class _Stream:
  """Infinite stream over range(n): pass e visits it in order default_rng([*key, e]).permutation.

  A couple of permutations are cached, so consecutive reads cost O(count) amortised.
  """

  def __init__(self, n, key, cache_size=3):
    if n <= 0:
      raise ValueError('Cannot sample from an empty set.')
    self._n, self._key, self._cache_size = int(n), tuple(int(k) for k in key), cache_size
    self._perms = collections.OrderedDict()

  def _perm(self, epoch):
    if epoch not in self._perms:
      self._perms[epoch] = np.random.default_rng([*self._key, epoch]).permutation(self._n)
      while len(self._perms) > self._cache_size:
        self._perms.popitem(last=False)
    return self._perms[epoch]

  def take(self, start, count):
    """Elements at stream positions [start, start + count)."""
    pos = np.arange(start, start + count, dtype=np.int64)
    epochs, within = np.divmod(pos, self._n)
    out = np.empty(count, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._perm(int(e))[within[sel]]
    return out


class BatchSampler:
  """The four batches A, B, C, D of each training iteration, plus B's product of marginals.

  Paired mode (the reference): A, B, C, D are stream batches 4*step .. 4*step + 3 of one infinite
  paired stream, reshuffled every pass; 'b_marginals' permutes each modality's column of B
  independently (in-batch product-of-marginals negatives).

  Unpaired mode (the paper's unimodal path): A and C, and 'b_marginals', draw each modality
  from its whole dataset through independent per-modality streams; B and D stay paired and are
  stream batches 2*step, 2*step + 1, so every pair is still visited once per pass.
  """

  def __init__(self, dataset, batch_size, seed, unpaired=False):
    self.dataset = dataset
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.unpaired = bool(unpaired)
    self._paired = _Stream(dataset.num_pairs, [seed, _PAIRED_STREAM])
    if self.unpaired:
      self._unimodal = [_Stream(len(m.labels), [seed, _UNIMODAL_STREAM, k])
                        for k, m in enumerate(dataset.modalities)]
      self._marginals = [_Stream(len(m.labels), [seed, _MARGINALS_STREAM, k])
                         for k, m in enumerate(dataset.modalities)]

  def indices(self, step):
    """{batch: {name: int64 [B] indices into that modality's images}} of iteration `step`."""
    step = int(step)
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}.')
    b, names = self.batch_size, self.dataset.names
    pairs = self.dataset.pairs

    def paired(rows):
      return {n: pairs[rows, k] for k, n in enumerate(names)}

    if not self.unpaired:
      rows = self._paired.take(4 * step * b, 4 * b).reshape(4, b)
      out = {key: paired(r) for key, r in zip('abcd', rows)}
      rng = np.random.default_rng([self.seed, _MARGINALS_PERM, step])
      out['b_marginals'] = {n: out['b'][n][rng.permutation(b)] for n in names}
    else:
      rows = self._paired.take(2 * step * b, 2 * b).reshape(2, b)
      out = {'b': paired(rows[0]), 'd': paired(rows[1])}
      uni = [s.take(2 * step * b, 2 * b).reshape(2, b) for s in self._unimodal]
      out['a'] = {n: uni[k][0] for k, n in enumerate(names)}
      out['c'] = {n: uni[k][1] for k, n in enumerate(names)}
      out['b_marginals'] = {n: s.take(step * b, b) for n, s in zip(names, self._marginals)}
    return {key: out[key] for key in _BATCHES}

  def __call__(self, step):
    """{'a'|'b'|'b_marginals'|'c'|'d': {name: uint8 [B, H, W, C]}} of iteration `step`."""
    images = {m.name: m.images for m in self.dataset.modalities}
    return {key: {n: images[n][i] for n, i in batch.items()}
            for key, batch in self.indices(step).items()}

  def labels_of(self, step):
    """The class labels of `self(step)`, same structure, int32 [B] leaves."""
    labels = {m.name: m.labels for m in self.dataset.modalities}
    return {key: {n: labels[n][i] for n, i in batch.items()}
            for key, batch in self.indices(step).items()}

