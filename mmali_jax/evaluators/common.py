"""Small helpers shared by the evaluators and the coherence classifiers.

Mostly host-side bookkeeping (numpy), so that the jitted functions see fixed shapes:
chunks are padded to one size (one compilation), epochs are whole batches (the permutation is
topped up with a few repeated examples, so every example is still seen at least once per epoch).
"""
import numpy as np


def chunk_slices(num, chunk_size):
  """[(start, stop), ...] covering range(num) in chunks of at most chunk_size."""
  return [(start, min(start + chunk_size, num)) for start in range(0, num, chunk_size)]


def pad_rows(x, size):
  """Pads the leading axis to `size` by repeating the last row (callers slice the padding off)."""
  missing = size - x.shape[0]
  if missing <= 0:
    return x
  return np.concatenate([x, np.repeat(x[-1:], missing, axis=0)], axis=0)


def map_chunks(fn, x, chunk_size):
  """np.concatenate([fn(chunk) for chunk in x]) with every chunk padded to `chunk_size`.

  `fn` is typically jitted; with equal chunk shapes it compiles once.
  """
  outputs = []
  for start, stop in chunk_slices(x.shape[0], chunk_size):
    out = fn(pad_rows(x[start:stop], chunk_size))
    outputs.append(np.asarray(out)[:stop - start])
  return np.concatenate(outputs, axis=0)


def split_holdout(num, holdout):
  """(train indices, held-out indices): the last `holdout` examples are held out for selection."""
  if not 0 <= holdout < num:
    raise ValueError(f'holdout={holdout} must be in [0, {num}) for {num} training examples.')
  indices = np.arange(num)
  return indices[:num - holdout], indices[num - holdout:]


def epoch_indices(np_rng, num, batch_size):
  """One shuffled epoch as an index array [num_batches, batch_size].

  The permutation is topped up to a whole number of batches with randomly chosen extra examples,
  so that the jitted epoch has a fixed shape (the reference's DataLoader keeps a short last batch
  instead; the difference is a handful of repeated examples per epoch).
  """
  num_batches = -(-num // batch_size)
  perm = np_rng.permutation(num)
  missing = num_batches * batch_size - num
  if missing:
    perm = np.concatenate([perm, np_rng.choice(num, missing, replace=missing > num)])
  return perm.reshape(num_batches, batch_size)


def padded_eval_indices(num, batch_size):
  """(indices [num_batches, batch_size], mask) for scoring every example exactly once."""
  num_batches = max(1, -(-num // batch_size))
  indices = np.arange(num_batches * batch_size)
  mask = indices < num
  indices = np.minimum(indices, max(num - 1, 0))
  return indices.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def summarize_epochs(history):
  """The three readouts of a model trained for several epochs and scored after each one.

  history: list of dicts with 'epoch', 'test_accuracy' and (optionally) 'holdout_accuracy'.
  - final_test_accuracy: after the last epoch (the headline: no test-set selection).
  - selected_test_accuracy: at the epoch with the best held-out accuracy (first one on ties);
    without a held-out set it is the final epoch.
  - best_test_accuracy_over_epochs: the maximum test accuracy over epochs. This is the
    reference's protocol (docs/algorithm.md §9): it selects on the test set, so it is
    optimistic; it is reported only for comparison with the paper, labelled as such.
  """
  final = history[-1]
  best = max(history, key=lambda h: h['test_accuracy'])
  if history[0].get('holdout_accuracy') is not None:
    selected = max(history, key=lambda h: h['holdout_accuracy'])
  else:
    selected = final
  return dict(
      final_epoch=final['epoch'],
      final_test_accuracy=final['test_accuracy'],
      selected_epoch=selected['epoch'],
      selected_holdout_accuracy=selected.get('holdout_accuracy'),
      selected_test_accuracy=selected['test_accuracy'],
      best_epoch=best['epoch'],
      best_test_accuracy_over_epochs=best['test_accuracy'],
  )
