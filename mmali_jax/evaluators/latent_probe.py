"""Linear probe on frozen, sampled encoder latents: latent accuracy (docs/algorithm.md §9).

Tables 1-3 of the paper: one Linear(d -> 10) trained with Adam(1e-3, 0.9, 0.999), batch 256,
100 epochs, on a *sample* z ~ q(z|x) that is redrawn at every forward, also at test time.

Speed. The encoder is frozen and deterministic up to its Gaussian noise, so one sample is
mean(x) + exp(logvar(x) / 2) * eps. `posterior_stats` runs the encoder once over a split and
keeps (mean, logvar); each epoch then redraws only eps inside one jitted epoch (lax.scan over
batches). Every forward still sees a fresh, independent sample of q(z|x), exactly as when the
reference calls the encoder at every forward; only the encoder's deterministic part is cached.
A `LinearProbe` is built once; its jitted functions compile once per feature shape and are
reused for every model it scores.

Readouts (`readouts`), from two probes scored on the test split after every epoch:
- the reference run, trained on the whole training split as the reference does:
  `final_test_accuracy`, after its last epoch, is the headline; `best_test_accuracy_over_epochs`
  is the reference's protocol (maximum over epochs of the test accuracy: selection on the test
  set), kept only for comparison with the paper;
- the held-out run, trained on the training split minus its last `holdout` examples:
  `selected_test_accuracy`, at the epoch with the best accuracy on those held-out examples.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmali_jax import images
from mmali_jax import posterior
from mmali_jax.evaluators import common
from mmali_jax.models import layers

PARTS = ('both', 'content', 'style')
READOUTS = ('final_test_accuracy', 'selected_test_accuracy', 'best_test_accuracy_over_epochs')


def select_part(a, style_dim, part):
  """The probed part of a latent-shaped array [..., d]: 'both' (all of z; Tables 1, 2 and 3
  "Both"), 'content' (z[style_dim:]) or 'style' (z[:style_dim])."""
  if part not in PARTS:
    raise ValueError(f'part={part!r}; expected one of {PARTS}.')
  style, content = posterior.split_latent(a, style_dim)
  return {'both': a, 'content': content, 'style': style}[part]


def posterior_stats(encode_fn, x, chunk_size=1000):
  """(mean, logvar) numpy arrays of q(z|x) for every example of x (uint8 or float images).

  encode_fn(x_float) -> (mean, logvar), typically jitted; chunks are padded to one size.
  """
  stats = common.map_chunks(lambda c: jnp.concatenate(encode_fn(images.to_float(c)), axis=-1),
                            np.asarray(x), chunk_size)
  dim = stats.shape[-1] // 2
  return stats[:, :dim], stats[:, dim:]


def latent_stats(encode_fn, x, style_dim, part='both', chunk_size=1000):
  """posterior_stats restricted to one part of z. The posterior is diagonal, so sampling the
  chosen dimensions only is the same as sampling z and slicing it."""
  return tuple(select_part(a, style_dim, part)
               for a in posterior_stats(encode_fn, x, chunk_size))


def gaussian_sample(rng, stats):
  """A fresh sample of N(mean, exp(logvar)) for stats = (mean, logvar)."""
  return posterior.sample(rng, *stats)


class _Linear(nn.Module):
  """One Linear layer with PyTorch's default initialisation (as the reference's nn.Linear)."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    return layers.torch_dense(self.num_classes, x.shape[-1])(x)


def _gather(stats, idx):
  return jax.tree.map(lambda a: a[idx], stats)


class LinearProbe:
  """A linear classifier trained on features drawn afresh at every forward, with three readouts.

  sample_fn(rng, stats) -> features [B, d] is jax-traceable: `gaussian_sample` for sampled
  latents (stats = (mean, logvar)), or any function of (rng, x) for plain inputs.
  """

  def __init__(self, sample_fn=gaussian_sample, *, epochs=100, batch_size=256, lr=1e-3,
               num_classes=10, eval_batch_size=1000):
    self.sample_fn = sample_fn
    self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
    self.model = _Linear(num_classes)
    self.tx = optax.adam(lr, b1=0.9, b2=0.999)
    sample, model, tx = sample_fn, self.model, self.tx

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

    self._train_epoch, self._accuracy = train_epoch, accuracy

  def __call__(self, train_stats, train_y, test_stats, test_y, *, seed=0, holdout=5000):
    """Trains a fresh probe on train_stats (minus the last `holdout` examples) and scores it.

    Returns a dict with final_test_accuracy (headline), selected_test_accuracy (+ selected_epoch),
    best_test_accuracy_over_epochs (reference-style, + best_epoch), num_train, num_holdout and the
    per-epoch history. Accuracies are fractions in [0, 1].
    """
    train_y = np.asarray(train_y, np.int32)
    test_y = np.asarray(test_y, np.int32)
    fit_idx, hold_idx = common.split_holdout(len(train_y), holdout)
    fit_stats, fit_y = _gather(train_stats, fit_idx), train_y[fit_idx]
    hold_stats, hold_y = _gather(train_stats, hold_idx), train_y[hold_idx]
    # On the device once, not at every epoch call.
    fit_stats, hold_stats, test_stats = jax.tree.map(jnp.asarray,
                                                     (fit_stats, hold_stats, test_stats))

    rng = jax.random.PRNGKey(seed)
    init_rng, rng = jax.random.split(rng)
    feature_shape = jax.eval_shape(self.sample_fn, init_rng, _gather(fit_stats, np.arange(1)))
    params = self.model.init(init_rng, jnp.zeros(feature_shape.shape, jnp.float32))
    opt_state = self.tx.init(params)

    test_eval = common.padded_eval_indices(len(test_y), self.eval_batch_size)
    hold_eval = common.padded_eval_indices(len(hold_y), self.eval_batch_size)
    np_rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, self.epochs + 1):
      rng, train_rng, test_rng, hold_rng = jax.random.split(rng, 4)
      batch_idx = common.epoch_indices(np_rng, len(fit_y), self.batch_size)
      params, opt_state, loss = self._train_epoch(params, opt_state, train_rng, batch_idx,
                                                  fit_stats, fit_y)
      entry = dict(epoch=epoch, train_loss=float(loss), test_accuracy=float(
          self._accuracy(params, test_rng, test_stats, test_y, *test_eval)))
      if len(hold_y):
        entry['holdout_accuracy'] = float(
            self._accuracy(params, hold_rng, hold_stats, hold_y, *hold_eval))
      history.append(entry)

    result = common.summarize_epochs(history)
    result.update(num_train=len(fit_y), num_holdout=len(hold_y), num_test=len(test_y),
                  epochs=self.epochs, history=history)
    return result


def readouts(probe, train_stats, train_y, test_stats, test_y, *, seed, holdout):
  """{readout: accuracy} for READOUTS, from the reference run and the held-out run of `probe`."""
  whole = probe(train_stats, train_y, test_stats, test_y, seed=seed, holdout=0)
  held_out = probe(train_stats, train_y, test_stats, test_y, seed=seed, holdout=holdout)
  return dict(final_test_accuracy=whole['final_test_accuracy'],
              selected_test_accuracy=held_out['selected_test_accuracy'],
              best_test_accuracy_over_epochs=whole['best_test_accuracy_over_epochs'])
