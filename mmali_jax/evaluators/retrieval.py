"""Nearest training items of generated feature vectors (the paper's qualitative CUB figures).

A generated caption or image feature is shown by the training items closest to it in Euclidean
distance of the raw features, as the paper's "nearest-neighbour lookup using Euclidean distance
in the feature space on the training set" (no CCA projection, so each modality is searched in its
own space), nearest first. Written as index lists (JSON, with the items' filenames when the
dataset has them) and, when the images are on disk, as a PNG grid of the neighbours' images.
"""
import os

import numpy as np

from mmali_jax import images as images_lib


def nearest(queries, items, k, chunk=4096):
  """(indices int64 [Q, k], distances [Q, k]): the k items at the smallest Euclidean distance
  from each query, nearest first (ties: the lower index)."""
  q = np.asarray(queries, np.float64)
  q_norms = np.sum(q * q, axis=1, keepdims=True)
  k = min(int(k), len(items))
  best_dist = np.full((len(q), 0), np.inf)
  best_idx = np.zeros((len(q), 0), np.int64)
  for start in range(0, len(items), chunk):
    block = np.asarray(items[start:start + chunk], np.float64)
    squared = q_norms - 2.0 * q @ block.T + np.sum(block * block, axis=1)[None, :]
    dist = np.concatenate([best_dist, np.sqrt(np.maximum(squared, 0.0))], axis=1)
    idx = np.concatenate([best_idx, np.broadcast_to(np.arange(start, start + len(block)),
                                                    (len(q), len(block)))], axis=1)
    order = np.argsort(dist, axis=1, kind='stable')[:, :k]
    best_dist = np.take_along_axis(dist, order, axis=1)
    best_idx = np.take_along_axis(idx, order, axis=1)
  return best_idx, best_dist


def neighbour_record(indices, distances, filenames=None):
  """One query's neighbours as a JSON-ready dict."""
  record = {'indices': [int(i) for i in indices],
            'euclidean_distances': [round(float(d), 6) for d in distances]}
  if filenames is not None:
    record['filenames'] = [str(filenames[int(i)]) for i in indices]
  return record


def load_thumbnail(images_dir, filename, size=64):
  """The image `<images_dir>/<filename>.jpg` as float [size, size, 3] in [0, 1], or None."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(images_dir, filename + ('' if filename.endswith('.jpg') else '.jpg'))
  if not os.path.isfile(path):
    return None
  with Image.open(path) as image:
    image = image.convert('RGB').resize((size, size), Image.BILINEAR)
    return np.asarray(image, np.float32) / 255.0


def write_grid(rows, labels, images_dir, path):
  """A PNG grid: one row of filenames' images per query; False (nothing written) when an image
  is missing."""
  cells = []
  for row in rows:
    thumbs = [load_thumbnail(images_dir, f) for f in row]
    if any(t is None for t in thumbs):
      return False
    cells.append(thumbs)
  images_lib.image_grid(cells, path, row_labels=labels)
  return True
