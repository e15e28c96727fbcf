"""How examples of the modalities form tuples, as index arrays (docs/algorithm.md §8).

`PAIRINGS` maps `config.data.pairing` to a function (examples, config, percentage, rng) ->
int64 [P, M] pair indices, where examples is one `pipeline.ModalityData` per modality:
- 'by_label': same-class examples matched by random permutations (MNIST-SVHN, MultiMNIST);
- 'aligned': example i of every modality describes the same instance; a modality with several
  views per instance (CUB: 10 captions per image) pairs each view with every view of the others.

'by_label' generalises the reference's `rand_match_on_idx` (MNIST-SVHN, with `use_all`) and
`MultiMNIST.rand_match_on_idx` to M modalities: per class, the first n_l examples of every
modality are matched by `multiplication` rounds of independent random permutations. A pair is
M same-class examples, usually different instances; images are never copied, only indexed.
"""
from typing import Optional, Sequence

import numpy as np


def _class_indices(labels, percentage, max_per_class):
  """[(class, [per-modality ascending indices of its first n_l examples])] for shared classes."""
  labels = [np.asarray(l) for l in labels]
  if not labels:
    raise ValueError('match_by_label needs at least one modality.')
  classes = sorted(set.intersection(*(set(np.unique(l).tolist()) for l in labels)))
  out = []
  for c in classes:
    # flatnonzero is ascending, i.e. a stable sort by label as the reference's label-sorted order.
    idx = [np.flatnonzero(l == c) for l in labels]
    # int() truncates like the reference's int(count * percentage).
    n = min(int(len(i) * percentage) for i in idx)
    if max_per_class is not None:
      n = min(n, int(max_per_class))
    out.append((c, [i[:n] for i in idx]))
  return out


def count_pairs(labels: Sequence[np.ndarray], multiplication: int, percentage: float,
                max_per_class: Optional[int]) -> int:
  """multiplication * sum_l n_l: the number of pairs `match_by_label` returns."""
  per_class = _class_indices(labels, percentage, max_per_class)
  return int(multiplication) * sum(len(idx[0]) for _, idx in per_class)


def match_by_label(labels: Sequence[np.ndarray], multiplication: int, percentage: float,
                   max_per_class: Optional[int], rng: np.random.Generator) -> np.ndarray:
  """int64 [P, M] indices into each modality's examples; every row shares one class label.

  For each class l present in every modality (ascending), n_l = min_m floor(percentage *
  count_m(l)), capped by max_per_class; the first n_l indices of each modality are kept, and
  `multiplication` times every modality appends its own random permutation of them. The random
  draws are made in the order class, round, modality, so the result depends only on `rng`.
  """
  if percentage < 0 or percentage > 1:
    raise ValueError(f'percentage must be in [0, 1], got {percentage}.')
  blocks = []
  for _, idx in _class_indices(labels, percentage, max_per_class):
    n = len(idx[0])
    for _ in range(int(multiplication)):
      blocks.append(np.stack([i[rng.permutation(n)] for i in idx], axis=1))
  if not blocks:
    return np.zeros((0, len(labels)), np.int64)
  return np.concatenate(blocks, axis=0).astype(np.int64)


def match_aligned(instances: Sequence[np.ndarray]) -> np.ndarray:
  """int64 [P, M]: every combination of items of the same instance, instance by instance.

  instances[m][k] is the instance (dataset example) of modality m's item k; items of one
  instance are contiguous and in order (pipeline.py flattens views so). With 10 caption items
  per image and one image item, rows are [10 i + j, i] for image i and caption j.
  """
  counts = [np.bincount(np.asarray(i)) for i in instances]
  num = {len(c) for c in counts}
  if len(num) != 1:
    raise ValueError('Aligned pairing needs the same number of instances in every modality; got '
                     f'{[len(c) for c in counts]}.')
  blocks = []
  starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in counts]
  views = [int(c[0]) if len(c) else 0 for c in counts]
  if any(np.any(c != v) for c, v in zip(counts, views)):
    raise ValueError('Aligned pairing needs the same number of views for every instance of a '
                     'modality.')
  grid = np.stack(np.meshgrid(*[np.arange(v) for v in views], indexing='ij'),
                  axis=-1).reshape(-1, len(views))
  for m, start in enumerate(starts):
    blocks.append((start[:, None] + grid[None, :, m]).reshape(-1))
  if not blocks or not len(blocks[0]):
    return np.zeros((0, len(instances)), np.int64)
  return np.stack(blocks, axis=1).astype(np.int64)


def _by_label(modalities, config, percentage, max_per_class, rng):
  return match_by_label([m.labels for m in modalities], config.data.multiplication, percentage,
                        max_per_class, rng)


def _aligned(modalities, config, percentage, max_per_class, rng):
  del config, percentage, max_per_class, rng  # every instance, every combination of its views
  return match_aligned([m.instances for m in modalities])


PAIRINGS = {'by_label': _by_label, 'aligned': _aligned}
