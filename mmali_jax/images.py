"""Image helpers with one definition each: uint8 -> float, PNG grids of images, and matplotlib
figures saved whole.

Grids: images are HWC (or HW) floats in [0, 1]. Images of different shapes share one grid: every
image becomes RGB and is padded with black, centred, to the largest height and width (MNIST 28x28x1
next to SVHN 32x32x3 -> 32x32x3 cells). Cells are separated by white lines; optional row labels go
in a left margin.
"""
import os

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont


def to_float(images):
  """uint8 images -> float32 in [0, 1], as torchvision's ToTensor; float input is kept as it is.

  Works on numpy and jax arrays (also inside jit, where the dtype is static)."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return images.astype(np.float32)


def _to_rgb(image):
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'Expected an HW, HWx1 or HWx3 image; got shape {image.shape}.')
  return np.clip(image, 0.0, 1.0)


def image_grid(rows, path=None, *, row_labels=None, scale=1, pad=2):
  """Writes rows of images (list of lists of HWC floats in [0, 1]) as one PNG grid.

  Rows may have different lengths and images different sizes and channel counts (see the module
  docstring). scale: integer nearest-neighbour upscaling. Returns the grid as uint8 [H, W, 3].
  """
  cells = [[_to_rgb(image) for image in row] for row in rows]
  flat = [c for row in cells for c in row]
  if not flat:
    raise ValueError('image_grid needs at least one image.')
  height = max(c.shape[0] for c in flat)
  width = max(c.shape[1] for c in flat)
  num_cols = max(len(row) for row in cells)
  canvas = np.ones((len(cells) * (height + pad) + pad, num_cols * (width + pad) + pad, 3),
                   np.float32)
  for r, row in enumerate(cells):
    for c, image in enumerate(row):
      top = pad + r * (height + pad)
      left = pad + c * (width + pad)
      canvas[top:top + height, left:left + width] = 0.0
      dy, dx = (height - image.shape[0]) // 2, (width - image.shape[1]) // 2
      canvas[top + dy:top + dy + image.shape[0], left + dx:left + dx + image.shape[1]] = image
  grid = Image.fromarray(np.round(canvas * 255).astype(np.uint8))
  if scale != 1:
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
  if row_labels:
    grid = _add_row_labels(grid, row_labels, len(cells))
  if path is not None:
    grid.save(path)
  return np.asarray(grid)


def _add_row_labels(grid, labels, num_rows):
  font = ImageFont.load_default()
  draw = ImageDraw.Draw(grid)
  margin = 6 + max((int(draw.textlength(str(label), font=font)) for label in labels), default=0)
  out = Image.new('RGB', (grid.width + margin, grid.height), (255, 255, 255))
  out.paste(grid, (margin, 0))
  draw = ImageDraw.Draw(out)
  row_height = grid.height / num_rows
  for r, label in enumerate(labels):
    draw.text((3, (r + 0.5) * row_height), str(label), fill=(0, 0, 0), font=font, anchor='lm')
  return out


def save_figure(fig, path):
  """A matplotlib figure as the PNG `path`, replaced whole: a reader (a browser, TensorBoard, a
  sync) never sees a half-written file, and a failed save leaves the previous one."""
  partial = f'{path}.tmp.png'
  try:
    fig.savefig(partial, dpi=100)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
