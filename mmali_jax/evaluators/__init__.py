"""Evaluation building blocks (ALGORITHM.md §6), each a function of plain callables and arrays.

- `latent_probe`: linear probe on sampled encoder latents (latent accuracy; Tables 1-3).
- `coherence`: joint, cross and synergy coherence with pre-trained classifiers (Table 2).
- `figures`: PNG grids (the paper's Figures 3 and 4; `image_grid` for sample grids).
The coherence classifiers themselves live in `mmali_jax.classifiers`.

Nothing here imports the training loop. This package's `__init__` stays light (no JAX import), so
that `default_config` can take `eval_defaults()` from it.
"""
import ml_collections


def eval_defaults():
  """Defaults of `config.eval`."""
  return ml_collections.ConfigDict(dict(
      # Periodic evaluation during training (the reference's eval_interval); 0 = only at the end.
      every_steps=50_000,
      # Default: <workdir>/classifiers.
      classifier_dir=ml_collections.config_dict.placeholder(str),
      # The reference trains 100 epochs; MNIST's is at 98.75% after 30 (see classifiers.py).
      classifier_epochs=30,
      classifier_batch_size=256,
      classifier_lr=1e-3,
      # Last training examples held out for selecting the kept classifier epoch.
      classifier_holdout=5_000,
      # Linear probe of §6.1: Adam(1e-3), batch 256, 100 epochs, as the reference.
      probe_epochs=100,
      probe_batch_size=256,
      probe_lr=1e-3,
      # Last training examples held out for the probe's `selected_test_accuracy`.
      probe_holdout=5_000,
      # Parts of z probed: 'both' (Tables 1, 2), 'content' and 'style' (Table 3).
      probe_parts=('both', 'content', 'style'),
      # Joint coherence: prior samples (the reference: 10,000).
      num_joint_samples=10_000,
      # Chunk size of the jitted evaluation functions (does not change any number).
      batch_size=1_000,
      # Examples (columns) in Figures 3 and 4.
      num_figure_examples=10,
  ))


def eval_config(config):
  """`config.eval` with every default filled in (works on configs without an `eval` field)."""
  merged = eval_defaults()
  if 'eval' in config:
    for key, value in config.eval.items():  # resolved values: placeholders can't be merged
      merged[key] = value
  return merged
