"""uint8 -> float conversion and PNG image grids."""
import jax
import numpy as np
from PIL import Image

from mmali_jax import images


def test_to_float_numpy_and_jax():
  pixels = np.array([0, 51, 255], np.uint8)
  out = images.to_float(pixels)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [0.0, 0.2, 1.0], rtol=1e-6)
  jitted = jax.jit(images.to_float)(pixels)
  assert jitted.dtype == np.float32
  np.testing.assert_allclose(np.asarray(jitted), out)


def test_image_grid_mixes_gray_and_rgb_sizes(tmp_path):
  gray = np.ones((28, 28, 1), np.float32)  # A white 28x28 MNIST-like image.
  rgb = np.zeros((32, 32, 3), np.float32)
  rgb[..., 0] = 1.0  # A red 32x32 SVHN-like image.
  path = tmp_path / 'grid.png'
  grid = images.image_grid([[gray, rgb, gray], [rgb]], path, pad=2)
  assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3)
  read = np.asarray(Image.open(path))
  np.testing.assert_array_equal(read, grid)
  # The gray image is centred in a black 32x32 cell: 2 black pixels, then white.
  np.testing.assert_array_equal(read[2 + 16, 2 + 1], [0, 0, 0])
  np.testing.assert_array_equal(read[2 + 16, 2 + 2], [255, 255, 255])
  np.testing.assert_array_equal(read[2 + 16, 36 + 16], [255, 0, 0])
  # Missing cells of a short row stay background (white).
  np.testing.assert_array_equal(read[36 + 16, 36 + 16], [255, 255, 255])
  labelled = images.image_grid([[gray], [rgb]], tmp_path / 'labelled.png', row_labels=['x', 'y'],
                                scale=2)
  assert labelled.shape[0] == 2 * (2 * 34 + 2) and labelled.shape[1] > 2 * 36
