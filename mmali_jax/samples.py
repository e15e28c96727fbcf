"""Sample grids written at every checkpoint, from the EMA generators and fixed inputs/noise."""
import jax
import numpy as np

from mmali_jax import images
from mmali_jax import posterior
from mmali_jax import programs


def make_sample_fn(gen, mods, style_dim):
  """-> (row names, jitted fn(params, xs, fixed_styles, fixed_content, rng) -> row images).

  For every modality m: its inputs; reconstructions G_m(z~q(z|x_m)); cross generations
  G_m([fixed style, content of q(z|x_j)]) from every other modality j; joint generations
  G_m([fixed style_m, fixed shared content]), whose columns should show the same digit across
  modalities. The jitted function is kept for the process (`programs`).
  """

  names = []
  for m, mod in enumerate(mods):
    names += [f'{mod.name} input', f'{mod.name} reconstruction']
    names += [f'{src.name} -> {mod.name}' for j, src in enumerate(mods) if j != m]
    names.append(f'{mod.name} joint prior')

  def sample(params, xs, fixed_styles, fixed_content, rng):
    keys = jax.random.split(rng, len(mods))
    z_enc = []
    for m, x in enumerate(xs):
      mean, logvar = gen.apply({'params': params}, m, x, method='encode')
      z_enc.append(posterior.sample(keys[m], mean, logvar))
    decode = lambda m, z: gen.apply({'params': params}, m, z, method='decode')
    rows = []  # in the order of `names`
    for m in range(len(mods)):
      rows += [xs[m], decode(m, z_enc[m])]
      rows += [decode(m, posterior.join_latent(fixed_styles[m],
                                               posterior.split_latent(z_enc[j], style_dim)[1]))
               for j in range(len(mods)) if j != m]
      rows.append(decode(m, posterior.join_latent(fixed_styles[m], fixed_content)))
    return rows

  return names, programs.kept('samples', (programs.networks_key(gen, None, mods), style_dim),
                              lambda: jax.jit(sample))


def vectors_as_images(row):
  """Feature vectors [B, D] as square grey tiles (zero-padded to the next square), scaled to
  [0, 1] by the row's range, so that feature modalities get a sample grid too; images are
  returned as they are."""
  row = np.asarray(row, np.float32)
  if row.ndim != 2:
    return row
  side = int(np.ceil(np.sqrt(row.shape[1])))
  low, high = float(row.min()), float(row.max())
  scaled = (row - low) / (high - low) if high > low else np.zeros_like(row)
  padded = np.zeros((row.shape[0], side * side), np.float32)
  padded[:, :row.shape[1]] = scaled
  return padded.reshape(row.shape[0], side, side, 1)


def write_grid(names, rows, path):
  """Writes the labelled PNG and returns the grid as float [1, H, W, 3] for TensorBoard."""
  grid = images.image_grid([list(vectors_as_images(r)) for r in rows], path, row_labels=names,
                            scale=2)
  return grid[None].astype(np.float32) / 255.0
