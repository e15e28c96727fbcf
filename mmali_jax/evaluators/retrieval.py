"""Nearest training items of generated feature vectors (the paper's qualitative CUB figures).

A generated caption or image feature is shown by the training items closest to it: cosine
similarity of the raw features (no CCA projection, so each modality is searched in its own
space), nearest first. Written as index lists (JSON, with the items' filenames when the dataset
has them) and, when the images are on disk, as a PNG grid of the neighbours' images.
"""
import os

import numpy as np

from mmali_jax import images as images_lib


def nearest(queries, items, k, chunk=4096):
  """(indices int64 [Q, k], similarities [Q, k]): the k items of highest cosine similarity to
  each query, nearest first."""
  q = np.asarray(queries, np.float32)
  q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
  k = min(int(k), len(items))
  best_sim = np.full((len(q), 0), -np.inf, np.float32)
  best_idx = np.zeros((len(q), 0), np.int64)
  for start in range(0, len(items), chunk):
    block = np.asarray(items[start:start + chunk], np.float32)
    block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    sim = np.concatenate([best_sim, q @ block.T], axis=1)
    idx = np.concatenate([best_idx, np.broadcast_to(np.arange(start, start + len(block)),
                                                    (len(q), len(block)))], axis=1)
    # Stable sort on -similarity: ties keep the lower index.
    order = np.argsort(-sim, axis=1, kind='stable')[:, :k]
    best_sim = np.take_along_axis(sim, order, axis=1)
    best_idx = np.take_along_axis(idx, order, axis=1)
  return best_idx, best_sim


def neighbour_record(indices, similarities, filenames=None):
  """One query's neighbours as a JSON-ready dict."""
  record = {'indices': [int(i) for i in indices],
            'cosine_similarities': [round(float(s), 6) for s in similarities]}
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
