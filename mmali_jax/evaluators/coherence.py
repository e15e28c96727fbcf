"""Coherence of generations, judged by pre-trained digit classifiers (ALGORITHM.md §6.3; Table 2).

Inputs are plain callables, one per modality name (names are processed in sorted order):
  encoders[m](x_float) -> (mean, logvar) in [style | content] layout;
  decoders[m](z) -> x_float;
  classifiers[m](x_float) -> int labels.
They must be jax-traceable: each chunk of examples runs through one jitted function (chunks are
padded to one size, so it compiles once). Encoders always *sample* z, as in the reference.

Paired data: `images[m]` holds modality m's images (uint8 or float, NHWC), `labels` the label of
each pair, and `indices` says which image of each modality forms pair p: a dict m -> [P] or an
array [P, M] with columns in sorted name order; None means the arrays are already aligned. This
keeps the 300,000 MNIST-SVHN test pairs as indices instead of copies of images.

All results are fractions in [0, 1]; the report shows percentages.
"""
import jax
import jax.numpy as jnp
import numpy as np

from mmali_jax import posterior
from mmali_jax.data import pipeline
from mmali_jax.evaluators import common


def _names(mapping):
  return sorted(mapping)


def _pair_indices(images, labels, indices):
  names = _names(images)
  if indices is None:
    return {m: np.arange(len(labels)) for m in names}
  if isinstance(indices, dict):
    return {m: np.asarray(indices[m]) for m in names}
  indices = np.asarray(indices)
  if indices.shape != (len(labels), len(names)):
    raise ValueError(f'indices has shape {indices.shape}; expected {(len(labels), len(names))} '
                     f'(pairs x modalities, columns in the order {names}).')
  return {m: indices[:, k] for k, m in enumerate(names)}


def _over_pairs(chunk_fn, images, labels, indices, rng, batch_size):
  """Runs jitted chunk_fn(rng, {m: x}) -> {key: predictions}; returns {key: accuracy vs labels}."""
  labels = np.asarray(labels)
  images = {m: np.asarray(x) for m, x in images.items()}
  indices = _pair_indices(images, labels, indices)
  chunk_fn = jax.jit(chunk_fn)
  correct = {}
  for k, (start, stop) in enumerate(common.chunk_slices(len(labels), batch_size)):
    inputs = {m: pipeline.to_float(images[m][common.pad_rows(idx[start:stop], batch_size)])
              for m, idx in indices.items()}
    predictions = chunk_fn(jax.random.fold_in(rng, k), inputs)
    for key, pred in predictions.items():
      hits = np.asarray(pred)[:stop - start] == labels[start:stop]
      correct[key] = correct.get(key, 0) + int(hits.sum())
  return {key: count / len(labels) for key, count in correct.items()}


def joint_coherence(decoders, classifiers, latent_dim, *, rng, num_samples=10_000,
                    batch_size=1_000):
  """Fraction of prior samples whose generations all get the same predicted label.

  z ~ N(0, I) over the full latent (style dimensions included): the *same* z goes to every
  decoder, as in the reference (§6.3, §8.8). For two modalities this is the reference's agreement
  of the two classifiers; for M > 2 all M predictions must agree (the natural generalisation,
  stricter than any pairwise agreement).
  """
  names = _names(decoders)

  @jax.jit
  def agree(key):
    z = jax.random.normal(key, (batch_size, latent_dim))
    predictions = jnp.stack([classifiers[m](decoders[m](z)) for m in names])
    return jnp.all(predictions == predictions[:1], axis=0)

  agreeing = 0
  for k, (start, stop) in enumerate(common.chunk_slices(num_samples, batch_size)):
    agreeing += int(np.asarray(agree(jax.random.fold_in(rng, k)))[:stop - start].sum())
  return agreeing / num_samples


def cross_coherence(encoders, decoders, classifiers, images, labels, *, rng, indices=None,
                    batch_size=1_000):
  """{'<src>_to_<tgt>': accuracy} for every ordered pair of distinct modalities.

  classifier_tgt(G_tgt(z)) with z one sample of E_src(x_src), compared with the pair's label. The
  full sampled z is decoded, so the source's style fills the target's style slot, as in the
  reference (§6.3, §8.8).
  """
  names = _names(images)

  def chunk_fn(key, x):
    predictions = {}
    for k, src in enumerate(names):
      z = posterior.sample(jax.random.fold_in(key, k), *encoders[src](x[src]))
      for tgt in names:
        if tgt != src:
          predictions[f'{src}_to_{tgt}'] = classifiers[tgt](decoders[tgt](z))
    return predictions

  return _over_pairs(chunk_fn, images, labels, indices, rng, batch_size)


def synergy(encoders, decoders, classifiers, images, labels, style_dim, *, rng, indices=None,
            batch_size=1_000):
  """{m: accuracy} of joint reconstructions from all modalities together.

  Content: the content part of one sample of the averaged product of experts (the geometric mean,
  `posterior.product_of_experts(average=True)`) of every modality's posterior. Style: the style
  part of a separate sample of modality m's own posterior. G_m([style_m, content]) is classified
  and compared with the pair's label (§6.3).
  """
  names = _names(images)

  def chunk_fn(key, x):
    stats = [encoders[m](x[m]) for m in names]
    poe_key, *own_keys = jax.random.split(key, len(names) + 1)
    poe_mean, poe_logvar = posterior.product_of_experts(
        jnp.stack([mean for mean, _ in stats]), jnp.stack([logvar for _, logvar in stats]),
        average=True)
    _, content = posterior.split_style_content(
        posterior.sample(poe_key, poe_mean, poe_logvar), style_dim)
    predictions = {}
    for m, (mean, logvar), own_key in zip(names, stats, own_keys):
      style, _ = posterior.split_style_content(posterior.sample(own_key, mean, logvar), style_dim)
      z = jnp.concatenate([style, content], axis=-1)
      predictions[m] = classifiers[m](decoders[m](z))
    return predictions

  return _over_pairs(chunk_fn, images, labels, indices, rng, batch_size)


def evaluate_coherence(encoders, decoders, classifiers, images, labels, *, style_dim, latent_dim,
                       rng, indices=None, num_joint_samples=10_000, batch_size=1_000):
  """All three metrics as one flat dict: 'joint', 'cross/<src>_to_<tgt>', 'synergy/<m>'."""
  joint_rng, cross_rng, synergy_rng = jax.random.split(rng, 3)
  results = {'joint': joint_coherence(decoders, classifiers, latent_dim, rng=joint_rng,
                                      num_samples=num_joint_samples, batch_size=batch_size)}
  cross = cross_coherence(encoders, decoders, classifiers, images, labels, rng=cross_rng,
                          indices=indices, batch_size=batch_size)
  results.update({f'cross/{k}': v for k, v in cross.items()})
  syn = synergy(encoders, decoders, classifiers, images, labels, style_dim, rng=synergy_rng,
                indices=indices, batch_size=batch_size)
  results.update({f'synergy/{k}': v for k, v in syn.items()})
  return results
