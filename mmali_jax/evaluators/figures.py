"""PNG figures (Pillow only): the paper's Figures 3 and 4, and a generic image grid.

Images are HWC (or HW) floats in [0, 1]. Modalities of different shapes share one figure: every
image becomes RGB and is padded with black, centred, to the largest height and width (MNIST 28x28x1
next to SVHN 32x32x3 -> 32x32x3 cells). Cells are separated by white lines; optional row labels go
in a left margin.
"""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from mmali_jax import posterior
from mmali_jax.data import pipeline


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


def _decode(decoder, z):
  return np.asarray(decoder(z))


def figure3(encoders, decoders, images, *, rng, path=None, sources=None, scale=2):
  """The paper's Figure 3: for each source modality m, rows of: input x_m, reconstruction
  G_m(z), and the translation G_t(z) to every other modality t, with z one sample of E_m(x_m).

  images: dict m -> [n, H, W, C] (uint8 or float); one column per example. sources: the source
  modalities to show (default: all, in sorted order). Returns (rows, row_labels).
  """
  names = sorted(images)
  rows, labels = [], []
  for k, src in enumerate(sources or names):
    x = pipeline.to_float(np.asarray(images[src]))
    z = posterior.sample(jax.random.fold_in(rng, k), *encoders[src](x))
    rows += [list(x), list(_decode(decoders[src], z))]
    labels += [f'{src} input', 'reconstruction']
    for tgt in names:
      if tgt != src:
        rows.append(list(_decode(decoders[tgt], z)))
        labels.append(f'to {tgt}')
  if path is not None:
    image_grid(rows, path, row_labels=labels, scale=scale)
  return rows, labels


def figure4(encoders, decoders, images, style_dim, *, rng, path=None, sources=None, scale=2):
  """The paper's Figure 4 (latent factorisation): for each source modality m, rows of: original
  x_m; reconstruction G_m(z); reconstruction with random style G_m([s, c]); then for every other
  modality t, cross translation with the original style G_t(z) and with random style G_t([s, c]).

  z = [style | c] is one sample of E_m(x_m); s ~ N(0, I) is one random style per column, shared by
  the random-style rows. "Original style" is the source's sampled style in the target's style slot,
  as cross coherence decodes it (§6.3). Returns (rows, row_labels).
  """
  names = sorted(images)
  rows, labels = [], []
  for k, src in enumerate(sources or names):
    x = pipeline.to_float(np.asarray(images[src]))
    z_key, s_key = jax.random.split(jax.random.fold_in(rng, k))
    z = posterior.sample(z_key, *encoders[src](x))
    _, content = posterior.split_style_content(z, style_dim)
    random_style = jax.random.normal(s_key, (z.shape[0], style_dim), z.dtype)
    z_random = jnp.concatenate([random_style, content], axis=-1)
    rows += [list(x), list(_decode(decoders[src], z)), list(_decode(decoders[src], z_random))]
    labels += [f'{src} original', 'reconstruction', 'random style']
    for tgt in names:
      if tgt != src:
        rows += [list(_decode(decoders[tgt], z)), list(_decode(decoders[tgt], z_random))]
        labels += [f'to {tgt}, original style', f'to {tgt}, random style']
  if path is not None:
    image_grid(rows, path, row_labels=labels, scale=scale)
  return rows, labels
