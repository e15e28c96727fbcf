"""The paper's Figures 3 and 4 as PNG grids (`mmali_jax.images.image_grid`)."""
import jax
import numpy as np

from mmali_jax import images as images_lib
from mmali_jax import posterior


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
    x = images_lib.to_float(np.asarray(images[src]))
    z = posterior.sample(jax.random.fold_in(rng, k), *encoders[src](x))
    rows += [list(x), list(_decode(decoders[src], z))]
    labels += [f'{src} input', 'reconstruction']
    for tgt in names:
      if tgt != src:
        rows.append(list(_decode(decoders[tgt], z)))
        labels.append(f'to {tgt}')
  if path is not None:
    images_lib.image_grid(rows, path, row_labels=labels, scale=scale)
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
    x = images_lib.to_float(np.asarray(images[src]))
    z_key, s_key = jax.random.split(jax.random.fold_in(rng, k))
    z = posterior.sample(z_key, *encoders[src](x))
    _, content = posterior.split_latent(z, style_dim)
    random_style = jax.random.normal(s_key, (z.shape[0], style_dim), z.dtype)
    z_random = posterior.join_latent(random_style, content)
    rows += [list(x), list(_decode(decoders[src], z)), list(_decode(decoders[src], z_random))]
    labels += [f'{src} original', 'reconstruction', 'random style']
    for tgt in names:
      if tgt != src:
        rows += [list(_decode(decoders[tgt], z)), list(_decode(decoders[tgt], z_random))]
        labels += [f'to {tgt}, original style', f'to {tgt}, random style']
  if path is not None:
    images_lib.image_grid(rows, path, row_labels=labels, scale=scale)
  return rows, labels
