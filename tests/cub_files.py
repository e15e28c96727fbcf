"""Tiny files with the structure of the CUB data (StackGAN birds split + image features)."""
import os
import pickle

import numpy as np

from mmali_jax.data import cub as cub_features


def write_cub_files(manual_dir, sizes=None, seed=0, marked=False, skip=()):
  """Writes <manual_dir>/cub/<split>/ files for `sizes` images per split; returns
  {split: (filenames, classes, captions [N, 10, 1024], image features [N, 2048])}.

  The two views share a latent per image (captions and image features are noisy linear maps of
  it), so they are correlated as real caption-image pairs are. marked=True writes the image
  index i into caption[i, j, 0] and image[i, 0] and j into caption[i, j, 1], to trace pairs.
  Files named in `skip` are not written."""
  sizes = sizes or {'train': 6, 'test': 4}
  rng = np.random.default_rng(seed)
  to_caption = rng.standard_normal((8, cub_features.CAPTION_DIM)).astype(np.float32)
  to_image = rng.standard_normal((8, cub_features.IMAGE_DIM)).astype(np.float32)
  out = {}
  first_class = 1
  for split, n in sizes.items():
    folder = os.path.join(manual_dir, cub_features.MANUAL_SUBDIR, split)
    os.makedirs(folder, exist_ok=True)
    classes = [first_class + i % 3 for i in range(n)]
    first_class += 3  # the standard split's classes are disjoint
    filenames = [f'{c:03d}.Bird_{c}/Bird_{c}_{i:04d}' for i, c in enumerate(classes)]
    latent = rng.standard_normal((n, 8)).astype(np.float32)
    captions = (latent[:, None] @ to_caption + 0.3 * rng.standard_normal(
        (n, 10, cub_features.CAPTION_DIM))).astype(np.float32)
    images = np.maximum(latent @ to_image + 0.3 * rng.standard_normal(
        (n, cub_features.IMAGE_DIM)), 0).astype(np.float32)
    if marked:
      captions[:, :, 0] = np.arange(n)[:, None]
      captions[:, :, 1] = np.arange(10)[None, :]
      images[:, 0] = np.arange(n)
    files = {'filenames.pickle': filenames, 'class_info.pickle': classes,
             # The StackGAN pickle holds the embeddings as a list of [10, 1024] arrays.
             'char-CNN-RNN-embeddings.pickle': list(captions)}
    for name, value in files.items():
      if name not in skip:
        with open(os.path.join(folder, name), 'wb') as f:
          pickle.dump(value, f, protocol=2)  # as Python 2 wrote them
    if cub_features.IMAGE_FEATURES_FILE not in skip:
      np.save(os.path.join(folder, cub_features.IMAGE_FEATURES_FILE), images)
    out[split] = (filenames, np.asarray(classes), captions, images)
  return out
