"""Evaluators on constructed cases whose answers are known."""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from mmali_jax import posterior
from mmali_jax.evaluators import coherence
from mmali_jax.evaluators import common
from mmali_jax.evaluators import figures
from mmali_jax.evaluators import latent_probe
from mmali_jax.evaluators import retrieval

STYLE_DIM = 3
CONTENT_DIM = 10
LATENT_DIM = STYLE_DIM + CONTENT_DIM


# ----------------------------------------------------------------------------- common


def test_split_holdout_is_disjoint_and_covers():
  train, held = common.split_holdout(100, 30)
  assert len(set(train) & set(held)) == 0
  assert sorted(np.concatenate([train, held])) == list(range(100))
  np.testing.assert_array_equal(held, np.arange(70, 100))  # The last examples.
  with pytest.raises(ValueError):
    common.split_holdout(10, 10)


def test_epoch_indices_visit_every_example():
  idx = common.epoch_indices(np.random.default_rng(0), 50, 16)
  assert idx.shape == (4, 16)
  assert set(idx.ravel()) == set(range(50))


def test_summarize_epochs_selects_on_holdout_not_test():
  history = [dict(epoch=1, holdout_accuracy=0.5, test_accuracy=0.9),
             dict(epoch=2, holdout_accuracy=0.8, test_accuracy=0.6),
             dict(epoch=3, holdout_accuracy=0.7, test_accuracy=0.7)]
  s = common.summarize_epochs(history)
  assert (s['selected_epoch'], s['selected_test_accuracy']) == (2, 0.6)
  assert (s['best_epoch'], s['best_test_accuracy_over_epochs']) == (1, 0.9)
  assert (s['final_epoch'], s['final_test_accuracy']) == (3, 0.7)


# ----------------------------------------------------------------------------- latent probe


def _onehot_data(n, seed):
  labels = np.random.default_rng(seed).integers(0, 10, n).astype(np.int32)
  return np.eye(10, dtype=np.float32)[labels], labels


def _label_encoder(x):
  """Latent = [zero style | 5 * one-hot label], nearly deterministic."""
  mean = jnp.concatenate([jnp.zeros((x.shape[0], STYLE_DIM)), 5.0 * x], axis=-1)
  return mean, jnp.full_like(mean, -20.0)


def _latent_probe(part, train_x, train_y, test_x, test_y, *, epochs, lr, seed, holdout):
  """The evaluator's way: posterior statistics of each split, then a probe on their part."""
  stats = [latent_probe.latent_stats(_label_encoder, x, STYLE_DIM, part) for x in (train_x, test_x)]
  probe = latent_probe.LinearProbe(epochs=epochs, lr=lr)
  return probe(stats[0], train_y, stats[1], test_y, seed=seed, holdout=holdout)


def test_probe_on_one_hot_label_latent_is_perfect_and_style_is_chance():
  train_x, train_y = _onehot_data(2000, 0)
  test_x, test_y = _onehot_data(500, 1)
  kwargs = dict(epochs=15, lr=1e-2, seed=0, holdout=300)
  content = _latent_probe('content', train_x, train_y, test_x, test_y, **kwargs)
  assert content['final_test_accuracy'] == 1.0
  assert content['selected_test_accuracy'] == 1.0
  assert content['best_test_accuracy_over_epochs'] == 1.0
  assert (content['num_train'], content['num_holdout'], content['num_test']) == (1700, 300, 500)
  assert len(content['history']) == 15
  both = _latent_probe('both', train_x, train_y, test_x, test_y, **kwargs)
  assert both['final_test_accuracy'] == 1.0
  # The style part is all zeros: nothing to learn from it.
  style = _latent_probe('style', train_x, train_y, test_x, test_y, **dict(kwargs, epochs=5))
  assert style['final_test_accuracy'] < 0.3


def test_probe_is_fit_on_train_only():
  """Test labels permuted relative to the features: a probe fit on train scores ~chance on test,
  while the held-out part of train (same distribution as train) is still perfect."""
  train_x, train_y = _onehot_data(2000, 0)
  test_x, test_y = _onehot_data(1000, 1)
  shuffled_test_y = (test_y + 1 + np.random.default_rng(2).integers(0, 9, len(test_y))) % 10
  result = _latent_probe('content', train_x, train_y, test_x, shuffled_test_y, epochs=10, lr=1e-2,
                         seed=0, holdout=300)
  assert all(h['holdout_accuracy'] == 1.0 for h in result['history'][-3:])
  # Every test label is wrong for its features: once the probe has learnt the training mapping,
  # its test accuracy is exactly 0 (a probe fit on the test pairs would score above chance).
  assert all(h['test_accuracy'] == 0.0 for h in result['history'][-3:])
  assert result['best_test_accuracy_over_epochs'] < 0.1


def test_cached_posterior_statistics_match_sampling_the_encoder():
  x, _ = _onehot_data(64, 0)
  encode = lambda x: (x @ jnp.arange(10.0 * LATENT_DIM).reshape(10, LATENT_DIM),
                      jnp.full((x.shape[0], LATENT_DIM), -1.0))
  key = jax.random.PRNGKey(3)
  mean, logvar = encode(x)
  direct = posterior.sample(key, mean[:, STYLE_DIM:], logvar[:, STYLE_DIM:])
  stats = latent_probe.latent_stats(encode, x, STYLE_DIM, 'content', chunk_size=24)
  cached = latent_probe.gaussian_sample(key, stats)
  assert cached.shape == (64, CONTENT_DIM)
  np.testing.assert_allclose(direct, cached, rtol=1e-6, atol=1e-6)
  # Fresh noise per key: the features are re-sampled.
  assert not np.allclose(latent_probe.gaussian_sample(jax.random.PRNGKey(4), stats), cached)


def test_probe_accepts_a_plain_features_fn():
  train_x, train_y = _onehot_data(1000, 0)
  test_x, test_y = _onehot_data(200, 1)
  features_fn = lambda rng, x: 5.0 * x + 0.01 * jax.random.normal(rng, x.shape)
  probe = latent_probe.LinearProbe(features_fn, epochs=15, lr=1e-2)
  result = probe(train_x, train_y, test_x, test_y, seed=0, holdout=0)
  assert result['final_test_accuracy'] == 1.0
  assert result['selected_epoch'] == 15  # Without a held-out set, the final epoch.


# ----------------------------------------------------------------------------- coherence
# Synthetic modalities: an image is a 1 x 10 strip whose brightest pixel is the digit class
# (modality 'a': 1 channel; 'b': 3 channels). Classifiers read the brightest pixel back.


def _strips(labels, channels):
  x = np.zeros((len(labels), 1, 10, channels), np.uint8)
  x[np.arange(len(labels)), 0, labels] = 255
  return x


def _classify(x):
  return jnp.argmax(x[:, 0, :, 0], axis=-1)


def _coherent_decoder(channels):
  """Writes the class argmax(content) as the strip: a perfectly coherent generator."""
  def decode(z):
    strip = jax.nn.one_hot(jnp.argmax(z[:, STYLE_DIM:], axis=-1), 10)
    return jnp.repeat(strip[:, None, :, None], channels, axis=-1)
  return decode


def _constant_decoder(channels, digit=3):
  """Ignores z."""
  def decode(z):
    strip = jnp.broadcast_to(jax.nn.one_hot(digit, 10), (z.shape[0], 10))
    return jnp.repeat(strip[:, None, :, None], channels, axis=-1)
  return decode


def _precise_encoder(style_mean=0.0):
  """Content = 10 * the strip (the label), variance e^-10; style = style_mean."""
  def encode(x):
    content = 10.0 * x[:, 0, :, 0]
    mean = jnp.concatenate([jnp.full((x.shape[0], STYLE_DIM), style_mean), content], axis=-1)
    return mean, jnp.full_like(mean, -10.0)
  return encode


def _uninformative_encoder(style_mean=0.0):
  """Content: N(0, e^10) whatever the input (std ~150); style: precise at style_mean."""
  def encode(x):
    n = x.shape[0]
    mean = jnp.concatenate([jnp.full((n, STYLE_DIM), style_mean), jnp.zeros((n, CONTENT_DIM))], -1)
    logvar = jnp.concatenate([jnp.full((n, STYLE_DIM), -10.0), jnp.full((n, CONTENT_DIM), 10.0)],
                             -1)
    return mean, logvar
  return encode


def _paired(n=250):
  labels = np.arange(n) % 10  # Balanced: exactly 10% of each class.
  return {'a': _strips(labels, 1), 'b': _strips(labels, 3)}, labels


CLASSIFIERS = {'a': _classify, 'b': _classify}


def _coherence(encoders, decoders, classifiers=CLASSIFIERS, **kwargs):
  """A Coherence of parameter-free toy models (they ignore the `params` argument)."""
  ignore_params = lambda fns: {m: (lambda params, v, f=f: f(v)) for m, f in fns.items()}
  return coherence.Coherence(ignore_params(encoders), ignore_params(decoders), classifiers,
                             style_dim=STYLE_DIM, latent_dim=LATENT_DIM, **kwargs)


def test_joint_coherence_of_a_coherent_generator_is_one():
  decoders = {'a': _coherent_decoder(1), 'b': _coherent_decoder(3)}
  score = _coherence({}, decoders, CLASSIFIERS, num_joint_samples=3000,
                    batch_size=512).joint(None, rng=jax.random.PRNGKey(0))
  assert score == 1.0


def test_joint_coherence_with_a_decoder_ignoring_z_is_chance():
  decoders = {'a': _coherent_decoder(1), 'b': _constant_decoder(3)}
  score = _coherence({}, decoders, CLASSIFIERS, num_joint_samples=10_000,
                    batch_size=2048).joint(None, rng=jax.random.PRNGKey(0))
  assert 0.08 < score < 0.12


def test_joint_coherence_needs_all_modalities_to_agree():
  decoders = {'a': _coherent_decoder(1), 'b': _coherent_decoder(1), 'c': _constant_decoder(1)}
  classifiers = {m: _classify for m in decoders}
  score = _coherence({}, decoders, classifiers, num_joint_samples=10_000,
                    batch_size=2048).joint(None, rng=jax.random.PRNGKey(1))
  assert 0.08 < score < 0.12


def test_cross_coherence_perfect_and_chance():
  images, labels = _paired()
  encoders = {'a': _precise_encoder(), 'b': _precise_encoder()}
  perfect = _coherence(encoders, {'a': _coherent_decoder(1), 'b': _coherent_decoder(3)},
                       batch_size=64).cross(None, images, labels, rng=jax.random.PRNGKey(0))
  assert perfect == {'a_to_b': 1.0, 'b_to_a': 1.0}
  ignoring = _coherence(encoders, {'a': _coherent_decoder(1), 'b': _constant_decoder(3)},
                        batch_size=64).cross(None, images, labels, rng=jax.random.PRNGKey(0))
  # The constant decoder always draws a 3: right for exactly the 10% of pairs labelled 3.
  assert ignoring == {'a_to_b': 0.1, 'b_to_a': 1.0}


def test_cross_coherence_from_an_uninformative_encoder_is_chance():
  images, labels = _paired(2000)
  encoders = {'a': _uninformative_encoder(), 'b': _precise_encoder()}
  decoders = {'a': _coherent_decoder(1), 'b': _coherent_decoder(3)}
  scores = _coherence(encoders, decoders, batch_size=500).cross(None, images, labels,
                                                               rng=jax.random.PRNGKey(0))
  assert 0.05 < scores['a_to_b'] < 0.15
  assert scores['b_to_a'] == 1.0


def _style_checking_decoder(channels, sign):
  """Coherent only when the style has the given sign; otherwise draws the next digit."""
  coherent = _coherent_decoder(channels)

  def decode(z):
    strip = coherent(z)
    ok = (sign * z[:, 0] > 0)[:, None, None, None]
    return jnp.where(ok, strip, jnp.roll(strip, 1, axis=2))
  return decode


def test_synergy_uses_poe_content_and_own_style():
  """'a' knows nothing about the content (huge variance), 'b' is precise: the (averaged) product
  of experts' content is b's, so both modalities' joint reconstructions are right. Each decoder
  also needs its own modality's style (a: +5, b: -5; their product would average to ~0)."""
  images, labels = _paired(1000)
  encoders = {'a': _uninformative_encoder(style_mean=5.0), 'b': _precise_encoder(style_mean=-5.0)}
  decoders = {'a': _style_checking_decoder(1, +1), 'b': _style_checking_decoder(3, -1)}
  scorer = _coherence(encoders, decoders, batch_size=256)
  scores = scorer.synergy(None, images, labels, rng=jax.random.PRNGKey(0))
  assert scores == {'a': 1.0, 'b': 1.0}
  # Without the product, 'a' alone is at chance.
  cross = scorer.cross(None, images, labels, rng=jax.random.PRNGKey(0))
  assert cross['a_to_b'] < 0.2


def test_synergy_with_decoders_ignoring_z_is_chance():
  images, labels = _paired()
  encoders = {'a': _precise_encoder(), 'b': _precise_encoder()}
  decoders = {'a': _constant_decoder(1, 7), 'b': _constant_decoder(3, 2)}
  scores = _coherence(encoders, decoders, batch_size=64).synergy(None, images, labels,
                                                                 rng=jax.random.PRNGKey(0))
  assert scores == {'a': 0.1, 'b': 0.1}


def test_coherence_over_index_pairs():
  """Pairs given as an index array [P, M] into per-modality image sets (as the test pairing)."""
  rng = np.random.default_rng(0)
  labels_a = np.arange(40) % 10
  labels_b = rng.permutation(np.arange(60) % 10)
  pair_labels = np.arange(300) % 10
  pairs = np.stack([rng.choice(np.flatnonzero(labels_a == l)) for l in pair_labels]), np.stack(
      [rng.choice(np.flatnonzero(labels_b == l)) for l in pair_labels])
  pairs = np.stack(pairs, axis=1)
  images = {'a': _strips(labels_a, 1), 'b': _strips(labels_b, 3)}
  encoders = {'a': _precise_encoder(), 'b': _precise_encoder()}
  decoders = {'a': _coherent_decoder(1), 'b': _constant_decoder(3)}
  scorer = _coherence(encoders, decoders, num_joint_samples=1000, batch_size=128)
  results = scorer(None, images, pair_labels, rng=jax.random.PRNGKey(0), indices=pairs)
  assert results['cross/b_to_a'] == 1.0 and results['synergy/a'] == 1.0
  assert results['cross/a_to_b'] == 0.1 and results['synergy/b'] == 0.1
  assert 0.05 < results['joint'] < 0.16
  with pytest.raises(ValueError, match=r'indices has shape \(300, 1\); expected \(300, 2\)'):
    scorer.cross(None, images, pair_labels, rng=jax.random.PRNGKey(0), indices=pairs[:, :1])


def test_coherence_compiles_once_and_scores_each_parameter_set():
  """Built once, run on new parameters: the same compiled functions, new numbers."""
  images, labels = _paired(100)
  shift_decoder = lambda params, z: _coherent_decoder(1)(z + params['shift'])
  scorer = coherence.Coherence(
      {m: (lambda params, x: _precise_encoder()(x)) for m in 'ab'},
      {'a': shift_decoder, 'b': lambda params, z: _coherent_decoder(3)(z)}, CLASSIFIERS,
      style_dim=STYLE_DIM, latent_dim=LATENT_DIM, batch_size=50)
  shift_to = lambda digit: {'shift': 100.0 * jax.nn.one_hot(STYLE_DIM + digit, LATENT_DIM)}
  right = scorer.cross({'shift': jnp.zeros(LATENT_DIM)}, images, labels, rng=jax.random.PRNGKey(0))
  wrong = scorer.cross(shift_to(4), images, labels, rng=jax.random.PRNGKey(0))
  assert right['b_to_a'] == 1.0 and wrong['b_to_a'] == 0.1  # every generated 'a' is now a 4
  assert scorer._cross_predictions._cache_size() == 1  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- figures


def _image_models():
  """'m': 28x28x1 and 's': 32x32x3 toy modalities; decoders paint z's mean brightness."""
  def encoder(x):
    mean = jnp.broadcast_to(jnp.mean(x, axis=(1, 2, 3))[:, None], (x.shape[0], LATENT_DIM))
    return mean, jnp.full_like(mean, -20.0)

  def decoder(shape):
    def decode(z):
      style = jax.nn.sigmoid(z[:, :STYLE_DIM].mean(-1))
      content = jnp.clip(z[:, STYLE_DIM:].mean(-1), 0, 1)
      top = jnp.broadcast_to(style[:, None, None, None], (z.shape[0], shape[0] // 2) + shape[1:])
      bottom = jnp.broadcast_to(content[:, None, None, None],
                                (z.shape[0], shape[0] - shape[0] // 2) + shape[1:])
      return jnp.concatenate([top, bottom], axis=1)
    return decode

  encoders = {'m': encoder, 's': encoder}
  decoders = {'m': decoder((28, 28, 1)), 's': decoder((32, 32, 3))}
  rng = np.random.default_rng(0)
  images = {'m': rng.integers(0, 256, (5, 28, 28, 1)).astype(np.uint8),
            's': rng.random((5, 32, 32, 3)).astype(np.float32)}
  return encoders, decoders, images


def test_figure3_rows(tmp_path):
  encoders, decoders, images = _image_models()
  path = tmp_path / 'figure3.png'
  rows, labels = figures.figure3(encoders, decoders, images, rng=jax.random.PRNGKey(0), path=path)
  assert labels == ['m input', 'reconstruction', 'to s', 's input', 'reconstruction', 'to m']
  assert [len(r) for r in rows] == [5] * 6
  assert rows[2][0].shape == (32, 32, 3) and rows[5][0].shape == (28, 28, 1)
  assert Image.open(path).size[1] == 2 * (6 * 34 + 2)


def test_figure4_random_style_changes_only_the_style(tmp_path):
  encoders, decoders, images = _image_models()
  path = tmp_path / 'figure4.png'
  rows, labels = figures.figure4(encoders, decoders, images, STYLE_DIM,
                                 rng=jax.random.PRNGKey(0), path=path)
  assert labels == ['m original', 'reconstruction', 'random style', 'to s, original style',
                    'to s, random style', 's original', 'reconstruction', 'random style',
                    'to m, original style', 'to m, random style']
  assert path.exists()
  recon, random_style = np.stack(rows[1]), np.stack(rows[2])
  # Content (bottom half) kept, style (top half) redrawn.
  np.testing.assert_allclose(recon[:, 14:], random_style[:, 14:], atol=1e-6)
  assert not np.allclose(recon[:, :14], random_style[:, :14])
  cross, cross_random = np.stack(rows[3]), np.stack(rows[4])
  np.testing.assert_allclose(cross[:, 16:], cross_random[:, 16:], atol=1e-6)
  assert not np.allclose(cross[:, :16], cross_random[:, :16])


def test_reference_readouts_train_on_the_whole_split_and_selection_holds_out():
  """Class 9 appears only in the last 300 training examples: only a probe that trained on them
  (the whole split, as the reference) can recognise the 9s of the test set."""
  rng = np.random.default_rng(0)
  train_y = np.concatenate([rng.integers(0, 9, 1700), np.full(300, 9)]).astype(np.int32)
  test_y = np.arange(500, dtype=np.int32) % 10
  eye = np.eye(10, dtype=np.float32)
  stats = [latent_probe.latent_stats(_label_encoder, eye[y], STYLE_DIM, 'content')
           for y in (train_y, test_y)]
  probe = latent_probe.LinearProbe(epochs=15, lr=1e-2)
  out = latent_probe.readouts(probe, stats[0], train_y, stats[1], test_y, seed=0, holdout=300)
  assert out['final_test_accuracy'] == 1.0
  assert out['best_test_accuracy_over_epochs'] == 1.0
  assert out['selected_test_accuracy'] <= 0.9  # never trained on a 9


def test_retrieval_ranks_by_euclidean_distance_across_chunks():
  # The paper looks neighbours up by Euclidean distance: item 0 points exactly the first query's
  # way (cosine 1, first by cosine similarity) but is far, so it is not among its three nearest.
  # Items 3 and 4 are equally far from the second query: the lower index comes first.
  items = np.array([[10.0, 0.0], [1.2, 0.5], [0.0, 3.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
  indices, distances = retrieval.nearest(np.array([[1.0, 0.0], [0.0, 2.0]]), items, k=3, chunk=2)
  np.testing.assert_array_equal(indices, [[3, 1, 4], [2, 1, 3]])
  np.testing.assert_allclose(distances, [[0.0, np.hypot(0.2, 0.5), 2.0],
                                         [1.0, np.hypot(1.2, 1.5), np.sqrt(5.0)]], rtol=1e-6)
  record = retrieval.neighbour_record(indices[0], distances[0], ['a', 'b', 'c', 'd', 'e'])
  assert record['filenames'] == ['d', 'b', 'e']
