"""Linear probe on frozen, sampled encoder latents: latent accuracy (ALGORITHM.md §6.1).

Tables 1-3 of the paper: one Linear(d -> 10) trained with Adam(1e-3, 0.9, 0.999), batch 256,
100 epochs, on a *sample* z ~ q(z|x) that is redrawn at every forward, also at test time.

Speed. The encoder is frozen and deterministic up to its Gaussian noise, so one sample is
mean(x) + exp(logvar(x) / 2) * eps. `LatentFeatures.precompute` runs the encoder once over a split
and keeps (mean, logvar); each epoch then redraws only eps inside one jitted epoch (lax.scan over
batches). Every forward still sees a fresh, independent sample of q(z|x), exactly as when the
reference calls the encoder at every forward; only the encoder's deterministic part is cached.

Readouts (ALGORITHM.md §10): the probe is trained on the training split minus its last `holdout`
examples, then scored after every epoch on the held-out part and on the test split.
`final_test_accuracy` (after the last epoch) is the headline; `selected_test_accuracy` is taken at
the epoch with the best held-out accuracy; `best_test_accuracy_over_epochs` is the reference's
protocol (maximum over epochs of the test accuracy: selection on the test set), kept only for
comparison with the paper.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmali_jax import posterior
from mmali_jax.data import pipeline
from mmali_jax.evaluators import common

PARTS = ('both', 'content', 'style')


class LatentFeatures:
  """features_fn(rng, x_float) -> a fresh sample of the chosen part of z ~ q(z|x).

  part: 'both' (the whole z; Tables 1, 2 and 3 "Both"), 'content' (z[style_dim:]) or 'style'
  (z[:style_dim]). The posterior is diagonal, so sampling the chosen dimensions only is the same
  as sampling z and slicing it.
  """

  def __init__(self, encode_fn, style_dim, part='both', chunk_size=1000):
    if part not in PARTS:
      raise ValueError(f'part={part!r}; expected one of {PARTS}.')
    self.encode_fn = encode_fn
    self.style_dim = style_dim
    self.part = part
    self.chunk_size = chunk_size
    self._encode_jit = jax.jit(lambda x: jnp.concatenate(self._encode(x), axis=-1))

  def _select(self, a):
    if self.part == 'style':
      return a[..., :self.style_dim]
    if self.part == 'content':
      return a[..., self.style_dim:]
    return a

  def _encode(self, x):
    mean, logvar = self.encode_fn(x)
    return self._select(mean), self._select(logvar)

  def precompute(self, x):
    """(mean, logvar) of the chosen part for every example of x (numpy; uint8 or float input)."""
    stats = common.map_chunks(lambda c: self._encode_jit(pipeline.to_float(c)), x, self.chunk_size)
    dim = stats.shape[-1] // 2
    return stats[:, :dim], stats[:, dim:]

  def sample(self, rng, stats):
    mean, logvar = stats
    return posterior.sample(rng, mean, logvar)

  def __call__(self, rng, x):
    return self.sample(rng, self._encode(x))


def latent_features(encode_fn, style_dim, part='both'):
  """features_fn for `linear_probe` from encode_fn(x_float) -> (mean, logvar) in [style|content]."""
  return LatentFeatures(encode_fn, style_dim, part)


class LinearProbe(nn.Module):
  """One Linear layer with PyTorch's default initialisation (as the reference's nn.Linear)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, kernel_init=common.torch_kernel_init(),
                    bias_init=common.torch_bias_init(x.shape[-1]))(x)


def _gather(stats, idx):
  return jax.tree.map(lambda a: a[idx], stats)


def linear_probe(features_fn, train_x, train_y, test_x, test_y, *, epochs=100, batch_size=256,
                 lr=1e-3, seed=0, holdout=5000, num_classes=10, eval_batch_size=1000):
  """Trains a linear classifier on features_fn(rng, x) and reports its accuracies.

  features_fn: either a plain jax-traceable callable (rng, x_float) -> features [B, d], which is
    called on every batch inside the jitted epoch, or an object with `precompute(x) -> stats` and
    `sample(rng, stats) -> features` (such as `LatentFeatures`), whose deterministic part is then
    computed once per split.
  train_x/test_x: images (uint8 or float) or any arrays features_fn accepts; labels int [N].
  holdout: the last `holdout` training examples are not trained on; they select the epoch.

  Returns a dict with final_test_accuracy (headline), selected_test_accuracy (+ selected_epoch),
  best_test_accuracy_over_epochs (reference-style, + best_epoch), num_train, num_holdout and the
  per-epoch history. Accuracies are fractions in [0, 1].
  """
  train_y = np.asarray(train_y, np.int32)
  test_y = np.asarray(test_y, np.int32)
  if hasattr(features_fn, 'precompute'):
    sample = features_fn.sample
    train_stats = features_fn.precompute(train_x)
    test_stats = features_fn.precompute(test_x)
  else:
    sample = features_fn
    train_stats = pipeline.to_float(np.asarray(train_x))
    test_stats = pipeline.to_float(np.asarray(test_x))

  fit_idx, hold_idx = common.split_holdout(len(train_y), holdout)
  fit_stats, fit_y = _gather(train_stats, fit_idx), train_y[fit_idx]
  hold_stats, hold_y = _gather(train_stats, hold_idx), train_y[hold_idx]
  # On the device once, not at every epoch call.
  fit_stats, hold_stats, test_stats = jax.tree.map(jnp.asarray, (fit_stats, hold_stats, test_stats))

  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  feature_shape = jax.eval_shape(sample, init_rng, _gather(fit_stats, np.arange(1)))
  model = LinearProbe(num_classes)
  params = model.init(init_rng, jnp.zeros(feature_shape.shape, jnp.float32))
  tx = optax.adam(lr, b1=0.9, b2=0.999)
  opt_state = tx.init(params)

  def loss_fn(params, features, labels):
    logits = model.apply(params, features)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train_epoch(params, opt_state, rng, batch_idx, stats, labels):
    def step(carry, inputs):
      params, opt_state = carry
      idx, key = inputs
      features = sample(key, _gather(stats, idx))
      loss, grads = jax.value_and_grad(loss_fn)(params, features, labels[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(rng, batch_idx.shape[0])
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (batch_idx, keys))
    return params, opt_state, losses.mean()

  @jax.jit
  def accuracy(params, rng, stats, labels, batch_idx, mask):
    def step(correct, inputs):
      idx, valid, key = inputs
      predictions = jnp.argmax(model.apply(params, sample(key, _gather(stats, idx))), axis=-1)
      return correct + jnp.sum((predictions == labels[idx]) & valid), None

    keys = jax.random.split(rng, batch_idx.shape[0])
    correct, _ = jax.lax.scan(step, jnp.zeros((), jnp.int32), (batch_idx, mask, keys))
    return correct / jnp.maximum(mask.sum(), 1)

  test_eval = common.padded_eval_indices(len(test_y), eval_batch_size)
  hold_eval = common.padded_eval_indices(len(hold_y), eval_batch_size)
  np_rng = np.random.default_rng(seed)
  history = []
  for epoch in range(1, epochs + 1):
    rng, train_rng, test_rng, hold_rng = jax.random.split(rng, 4)
    batch_idx = common.epoch_indices(np_rng, len(fit_y), batch_size)
    params, opt_state, loss = train_epoch(params, opt_state, train_rng, batch_idx, fit_stats,
                                          fit_y)
    entry = dict(epoch=epoch, train_loss=float(loss),
                 test_accuracy=float(accuracy(params, test_rng, test_stats, test_y, *test_eval)))
    if len(hold_y):
      entry['holdout_accuracy'] = float(
          accuracy(params, hold_rng, hold_stats, hold_y, *hold_eval))
    history.append(entry)

  result = common.summarize_epochs(history)
  result.update(num_train=len(fit_y), num_holdout=len(hold_y), num_test=len(test_y),
                epochs=epochs, history=history)
  return result
