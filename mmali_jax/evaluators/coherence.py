"""Coherence of generations judged by pre-trained digit classifiers (docs/algorithm.md §9.3).

`Coherence` is built once from per-modality callables (modality names are processed in sorted
order) and then scores any generator parameters `params`:
  encoders[m](params, x_float) -> (mean, logvar) in [style | content] layout;
  decoders[m](params, z) -> x_float;
  classifiers[m](x_float) -> int labels.
They must be jax-traceable: each chunk of examples runs through one jitted function (chunks are
padded to one size), compiled on first use and reused for every later call. Encoders always
*sample* z, as in the reference.

Paired data: `images[m]` holds modality m's images (uint8 or float, NHWC), `labels` the label of
each pair, and `indices` says which image of each modality forms pair p: a dict m -> [P] or an
array [P, M] with columns in sorted name order; None means the arrays are already aligned. This
keeps the 300,000 MNIST-SVHN test pairs as indices instead of copies of images.

All results are fractions in [0, 1]; the report shows percentages.
"""
import jax
import jax.numpy as jnp
import numpy as np

from mmali_jax import images as images_lib
from mmali_jax import posterior
from mmali_jax.evaluators import common


def _pair_indices(names, labels, indices):
  if indices is None:
    return {m: np.arange(len(labels)) for m in names}
  if isinstance(indices, dict):
    return {m: np.asarray(indices[m]) for m in names}
  indices = np.asarray(indices)
  if indices.shape != (len(labels), len(names)):
    raise ValueError(f'indices has shape {indices.shape}; expected {(len(labels), len(names))} '
                     f'(pairs x modalities, columns in the order {names}).')
  return {m: indices[:, k] for k, m in enumerate(names)}


class Coherence:
  """Joint, cross and synergy coherence of generators (see the module docstring)."""

  def __init__(self, encoders, decoders, classifiers, *, style_dim, latent_dim,
               num_joint_samples=10_000, batch_size=1_000):
    self.names = sorted(decoders)
    self.style_dim, self.latent_dim = style_dim, latent_dim
    self.num_joint_samples, self.batch_size = num_joint_samples, batch_size
    names = self.names

    @jax.jit
    def joint_agreement(params, key):
      z = jax.random.normal(key, (batch_size, latent_dim))
      predictions = jnp.stack([classifiers[m](decoders[m](params, z)) for m in names])
      return jnp.all(predictions == predictions[:1], axis=0)

    @jax.jit
    def cross_predictions(params, key, x):
      predictions = {}
      for k, src in enumerate(names):
        z = posterior.sample(jax.random.fold_in(key, k), *encoders[src](params, x[src]))
        for tgt in names:
          if tgt != src:
            predictions[f'{src}_to_{tgt}'] = classifiers[tgt](decoders[tgt](params, z))
      return predictions

    @jax.jit
    def synergy_predictions(params, key, x):
      stats = [encoders[m](params, x[m]) for m in names]
      poe_key, *own_keys = jax.random.split(key, len(names) + 1)
      poe_mean, poe_logvar = posterior.product_of_experts(
          jnp.stack([mean for mean, _ in stats]), jnp.stack([logvar for _, logvar in stats]),
          average=True)
      _, content = posterior.split_latent(posterior.sample(poe_key, poe_mean, poe_logvar),
                                          style_dim)
      predictions = {}
      for m, (mean, logvar), own_key in zip(names, stats, own_keys):
        style, _ = posterior.split_latent(posterior.sample(own_key, mean, logvar), style_dim)
        predictions[m] = classifiers[m](decoders[m](params, posterior.join_latent(style, content)))
      return predictions

    self._joint_agreement = joint_agreement
    self._cross_predictions = cross_predictions
    self._synergy_predictions = synergy_predictions

  def joint(self, params, *, rng):
    """Fraction of prior samples whose generations all get the same predicted label.

    z ~ N(0, I) over the full latent (style dimensions included): the *same* z goes to every
    decoder, as in the reference. For two modalities this is the reference's agreement of the two
    classifiers; for M > 2 all M predictions must agree (the natural generalisation, stricter
    than any pairwise agreement).
    """
    agreeing = 0
    for k, (start, stop) in enumerate(common.chunk_slices(self.num_joint_samples,
                                                          self.batch_size)):
      agree = self._joint_agreement(params, jax.random.fold_in(rng, k))
      agreeing += int(np.asarray(agree)[:stop - start].sum())
    return agreeing / self.num_joint_samples

  def cross(self, params, images, labels, *, rng, indices=None):
    """{'<src>_to_<tgt>': accuracy} for every ordered pair of distinct modalities.

    classifier_tgt(G_tgt(z)) with z one sample of E_src(x_src), compared with the pair's label.
    The full sampled z is decoded, so the source's style fills the target's style slot, as in the
    reference.
    """
    return self._over_pairs(self._cross_predictions, params, images, labels, rng, indices)

  def synergy(self, params, images, labels, *, rng, indices=None):
    """{m: accuracy} of joint reconstructions from all modalities together.

    Content: the content part of one sample of the averaged product of experts (the geometric
    mean, `posterior.product_of_experts(average=True)`) of every modality's posterior. Style: the
    style part of a separate sample of modality m's own posterior. G_m([style_m, content]) is
    classified and compared with the pair's label.
    """
    return self._over_pairs(self._synergy_predictions, params, images, labels, rng, indices)

  def __call__(self, params, images, labels, *, rng, indices=None):
    """All three metrics as one flat dict: 'joint', 'cross/<src>_to_<tgt>', 'synergy/<m>'."""
    joint_rng, cross_rng, synergy_rng = jax.random.split(rng, 3)
    results = {'joint': self.joint(params, rng=joint_rng)}
    cross = self.cross(params, images, labels, rng=cross_rng, indices=indices)
    results.update({f'cross/{k}': v for k, v in cross.items()})
    synergy = self.synergy(params, images, labels, rng=synergy_rng, indices=indices)
    results.update({f'synergy/{k}': v for k, v in synergy.items()})
    return results

  def _over_pairs(self, predict, params, images, labels, rng, indices):
    """Runs predict(params, rng, {m: x}) -> {key: predictions} over all pairs, chunk by chunk;
    returns {key: accuracy vs labels}."""
    labels = np.asarray(labels)
    images = {m: np.asarray(images[m]) for m in self.names}
    indices = _pair_indices(self.names, labels, indices)
    correct = {}
    for k, (start, stop) in enumerate(common.chunk_slices(len(labels), self.batch_size)):
      inputs = {m: images_lib.to_float(images[m][common.pad_rows(idx[start:stop],
                                                                 self.batch_size)])
                for m, idx in indices.items()}
      predictions = predict(params, jax.random.fold_in(rng, k), inputs)
      for key, pred in predictions.items():
        hits = np.asarray(pred)[:stop - start] == labels[start:stop]
        correct[key] = correct.get(key, 0) + int(hits.sum())
    return {key: count / len(labels) for key, count in correct.items()}
