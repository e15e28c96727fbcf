"""The image-feature command: ResNet-101 pool features of the split's images, in its order."""
import os
import pickle

import numpy as np
from PIL import Image
import pytest

from mmali_jax import cub_features


def _split(tmp_path, num=3):
  """A CUB-like images folder and a split folder whose filenames.pickle lists them."""
  rng = np.random.default_rng(0)
  names = [f'00{k + 1}.Bird/Bird_{k:04d}' for k in range(num)]
  for k, name in enumerate(names):
    path = tmp_path / 'images' / f'{name}.jpg'
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (40 + 7 * k, 60, 3), dtype=np.uint8)  # sizes differ
    Image.fromarray(pixels).save(path)
  split = tmp_path / 'train'
  split.mkdir()
  with open(split / 'filenames.pickle', 'wb') as f:
    pickle.dump(names, f, protocol=2)
  return str(tmp_path / 'images'), str(split)


def test_features_are_2048_pool_outputs_in_filename_order(tmp_path):
  images_dir, split_dir = _split(tmp_path)
  paths = cub_features.image_paths(images_dir, split_dir)
  assert [os.path.basename(p) for p in paths] == [f'Bird_{k:04d}.jpg' for k in range(3)]
  assert cub_features.load_image(paths[1]).shape == (224, 224, 3)
  model = cub_features.load_model('keras', weights='none')  # random weights: shapes only
  features = cub_features.compute_features(model, paths, batch_size=2)
  assert features.shape == (3, 2048) and features.dtype == np.float32
  assert np.all(features >= 0)  # averages of ReLU outputs
  backwards = cub_features.compute_features(model, paths[::-1], batch_size=3)
  np.testing.assert_allclose(backwards[::-1], features, rtol=1e-4, atol=1e-5)
  assert not np.allclose(features[0], features[1])


def test_missing_images_are_named(tmp_path):
  images_dir, split_dir = _split(tmp_path, num=2)
  os.remove(os.path.join(images_dir, '002.Bird', 'Bird_0001.jpg'))
  with pytest.raises(FileNotFoundError, match=r'1 of the 2 images .*Bird_0001.jpg'):
    cub_features.image_paths(images_dir, split_dir)
