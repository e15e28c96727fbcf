"""`python -m mmali_jax.evaluate` end to end on a checkpoint written by a short training run."""
import json
import os

import pytest
import tensorflow_datasets as tfds

from mmali_jax import checkpointing
from mmali_jax import classifiers
from mmali_jax import evaluate
from mmali_jax import paper
from mmali_jax import train
from tests.conftest import small_config


def _eval_settings(config):
  config.eval.probe_epochs = 2
  config.eval.probe_holdout = 4
  config.eval.classifier_epochs = 1
  config.eval.classifier_holdout = 4
  config.eval.num_joint_samples = 64
  config.eval.batch_size = 32
  config.eval.num_figure_examples = 3
  return config


def test_evaluate_a_trained_checkpoint(tmp_path):
  config = _eval_settings(small_config('multimnist', 'modalities=2', num_train_steps=2,
                                       checkpoint_every_steps=2))
  config.eval.every_steps = 1  # periodic evaluation during training, after steps 1 and 2
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, workdir)
    for step in (1, 2):
      with open(tmp_path / 'eval' / f'metrics_step_{step}.json') as f:
        assert json.load(f)['step'] == step
    classifiers.train_all(config, os.path.join(workdir, 'classifiers'))
    # As the command line does: the config comes back from the workdir.
    restored_config = checkpointing.load_config(workdir)
    assert [m.name for m in restored_config.modalities] == ['0mnist', '1mnist']
    metrics = evaluate.evaluate(restored_config, workdir)

  assert metrics['step'] == 2
  with open(tmp_path / 'eval' / 'metrics.json') as f:
    assert json.load(f) == metrics
  for readout in evaluate.PROBE_READOUTS:
    assert 0.0 <= metrics[f'latent/0mnist/both/{readout}'] <= 100.0
  # Only the unrotated modality is probed (Table 1).
  assert not any(k.startswith('latent/1mnist') for k in metrics)
  for key in ('coherence/joint', 'coherence/cross/0mnist_to_1mnist',
              'coherence/cross/1mnist_to_0mnist', 'coherence/synergy/0mnist',
              'classifier/0mnist/test_accuracy', 'classifier/1mnist/test_accuracy'):
    assert 0.0 <= metrics[key] <= 100.0, key
  report = (tmp_path / 'eval' / 'report.md').read_text()
  assert '| latent/0mnist/both (best test accuracy over epochs (reference protocol)) |' in report
  assert '| 97.02 |' in report  # Table 1, M = 2, factorized
  for figure in ('figure3.png', 'figure4.png'):
    assert os.path.getsize(tmp_path / 'eval' / figure) > 0


def test_evaluate_without_classifiers_says_how_to_train_them(tmp_path):
  config = _eval_settings(small_config('multimnist', 'modalities=2', num_train_steps=1,
                                       checkpoint_every_steps=1))
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, str(tmp_path))
    metrics = evaluate.evaluate(config, str(tmp_path))
  assert not any(k.startswith('coherence/') for k in metrics)
  report = (tmp_path / 'eval' / 'report.md').read_text()
  assert 'python -m mmali_jax.classifiers' in report


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
  config = small_config('multimnist')
  with pytest.raises(checkpointing.CheckpointError, match='train first'):
    evaluate.evaluate(config, str(tmp_path))


def test_paper_values_pick_the_right_table():
  assert paper.paper_values(small_config('multimnist', 'modalities=3,discriminator=joint')) == {
      'latent/0mnist/both': 85.44}
  values = paper.paper_values(small_config('mnist_svhn', 'percentage=0.2'))
  assert values['coherence/cross/0mnist_to_1svhn'] == 86.19
  assert 'latent/0mnist/content' not in values  # Table 3 is for 100% only
  assert paper.paper_values(small_config('mnist_svhn'))['latent/1svhn/style'] == 21.39
