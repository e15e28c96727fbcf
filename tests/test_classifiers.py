"""Coherence classifiers: architectures, training with a held-out selection set, checkpoints."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmali_jax import default_config
from mmali_jax.evaluators import classifiers
from mmali_jax.models import mnist
from mmali_jax.models import svhn
from tests.conftest import run_on_one_device


def _squares(labels, seed, size=28, channels=1):
  """Noisy images whose class is the position of a bright 5x5 square (linearly separable)."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 60, (len(labels), size, size, channels)).astype(np.uint8)
  for i, k in enumerate(labels):
    r, c = divmod(int(k), 4)
    x[i, 2 + 7 * r:7 + 7 * r, 2 + 6 * c:7 + 6 * c] = 255
  return x


def _config(*modalities):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.modalities = list(modalities)
  return config


def test_architectures_and_registry():
  lenet = classifiers.make_classifier('mnist')
  svhn_cnn = classifiers.make_classifier('svhn')
  assert isinstance(lenet, mnist.Classifier)
  assert isinstance(svhn_cnn, svhn.Classifier)
  v = jax.jit(lenet.init)(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
  assert jax.jit(lenet.apply)(v, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
  assert v['params']['Dense_0']['kernel'].shape == (320, 50)
  v = jax.jit(svhn_cnn.init)(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
  assert jax.jit(svhn_cnn.apply)(v, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
  assert 'batch_stats' in v and v['params']['Dense_0']['kernel'].shape == (128, 10)
  with pytest.raises(ValueError, match=r"Unknown network family 'cub'; registered: "
                                       r"\[.*'mnist', 'svhn'\]"):
    classifiers.make_classifier('cub')


@pytest.mark.parametrize('network,shape', [('mnist', (28, 28, 1)), ('svhn', (32, 32, 3))])
def test_dropout_is_off_at_evaluation(network, shape):
  """The reference's LeNet keeps dropout on at evaluation; ours does not (docs/algorithm.md §10)."""
  model = classifiers.make_classifier(network)
  x = jax.random.uniform(jax.random.PRNGKey(1), (8,) + shape)
  v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  apply = jax.jit(lambda v, x, rng, train: model.apply(
      v, x, train=train, rngs={'dropout': rng}, mutable=['batch_stats'])[0], static_argnums=3)
  evals = [apply(v, x, jax.random.PRNGKey(k), False) for k in (1, 2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  trains = [apply(v, x, jax.random.PRNGKey(k), True) for k in (1, 2)]
  assert not np.allclose(trains[0], trains[1])


def test_distinct_classifiers_per_dataset_and_rotation():
  multimnist = _config(*[default_config.modality(f'{k}mnist', 'mnist', 'mnist', rotation=k)
                         for k in range(4)])
  assert [k for k, _ in classifiers.distinct_classifiers(multimnist)] == [
      'mnist_rot0', 'mnist_rot1', 'mnist_rot2', 'mnist_rot3']
  ms = _config(default_config.modality('0mnist', 'mnist', 'mnist'),
               default_config.modality('1svhn', 'svhn_cropped', 'svhn'))
  assert [k for k, _ in classifiers.distinct_classifiers(ms)] == ['mnist_rot0',
                                                                   'svhn_cropped_rot0']


def test_eval_config_fills_defaults():
  config = _config()
  assert default_config.eval_config(config).classifier_epochs == 30
  config.eval = ml_collections.ConfigDict(dict(classifier_epochs=3))
  merged = default_config.eval_config(config)
  assert merged.classifier_epochs == 3 and merged.probe_epochs == 100


def test_training_reaches_high_accuracy_and_never_trains_on_the_holdout():
  """Training set: classes 0-8 only. Held-out part: all class 9. A classifier that never saw the
  held-out examples cannot predict 9, so its held-out accuracy stays 0 at every epoch."""
  rng = np.random.default_rng(0)
  fit_labels = rng.integers(0, 9, 800)
  labels = np.concatenate([fit_labels, np.full(100, 9)]).astype(np.int32)
  images = _squares(labels, 1)
  test_labels = rng.integers(0, 9, 300).astype(np.int32)
  result = classifiers.train_classifier(images, labels, _squares(test_labels, 2), test_labels,
                                        'mnist', epochs=4, batch_size=32, seed=0, holdout=100,
                                        log_fn=lambda msg: None)
  assert (result['num_train'], result['num_holdout'], result['num_test']) == (800, 100, 300)
  assert all(h['holdout_accuracy'] == 0.0 for h in result['history'])
  assert result['final_test_accuracy'] > 0.95
  assert result['best_test_accuracy_over_epochs'] >= result['final_test_accuracy']
  assert len(result['history']) == 4


def test_save_load_round_trip_and_missing_message(tmp_path):
  labels = np.arange(200, dtype=np.int32) % 10
  images = _squares(labels, 0)
  result = classifiers.train_classifier(images, labels, images[:50], labels[:50], 'mnist',
                                        epochs=3, batch_size=32, seed=0, holdout=20,
                                        log_fn=lambda msg: None)
  classifier_dir = tmp_path / 'classifiers'
  classifiers.save_classifier(result, classifier_dir / 'mnist_rot0')
  with open(classifier_dir / 'mnist_rot0' / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics['selected_test_accuracy'] == result['selected_test_accuracy']

  config = _config(default_config.modality('0mnist', 'mnist', 'mnist'))
  predict = classifiers.load_classifiers(config, str(classifier_dir))['0mnist']
  x = images[:16].astype(np.float32) / 255.0
  expected = jnp.argmax(mnist.Classifier().apply(result['variables'], x), axis=-1)
  np.testing.assert_array_equal(predict(x), expected)

  config.modalities.append(default_config.modality('1mnist', 'mnist', 'mnist', rotation=1))
  with pytest.raises(FileNotFoundError) as error:
    classifiers.load_classifiers(config, str(classifier_dir))
  message = str(error.value)
  assert 'python -m mmali_jax.classifiers --config=' in message
  assert f'--workdir={tmp_path}' in message and 'mnist_rot1' in message


_PREDICT_ON_ONE_DEVICE = """
import sys
import ml_collections
import numpy as np
from mmali_jax import default_config
from mmali_jax.evaluators import classifiers
config = ml_collections.ConfigDict(dict(modalities=[default_config.modality('0mnist', 'mnist',
                                                                            'mnist')]))
predict = classifiers.load_classifiers(config, sys.argv[1])['0mnist']
np.save(sys.argv[3], np.asarray(predict(np.load(sys.argv[2]))))
"""


def test_classifiers_trained_on_another_device_are_used_on_this_one(tmp_path):
  """As when the classifiers were trained on a GPU and the run is evaluated on a CPU machine: the
  checkpoint names a device (here cpu:5 of 8) that the evaluating process does not have."""
  labels = np.arange(120, dtype=np.int32) % 10
  images = _squares(labels, 0)
  result = classifiers.train_classifier(images, labels, images[:40], labels[:40], 'mnist',
                                        epochs=1, batch_size=32, seed=0, holdout=20,
                                        log_fn=lambda msg: None)
  result['variables'] = jax.device_put(result['variables'], jax.devices()[5])
  classifier_dir = tmp_path / 'classifiers'
  classifiers.save_classifier(result, classifier_dir / 'mnist_rot0')
  x = images[:32].astype(np.float32) / 255.0
  np.save(tmp_path / 'x.npy', x)
  run_on_one_device(_PREDICT_ON_ONE_DEVICE, classifier_dir, tmp_path / 'x.npy',
                    tmp_path / 'predicted.npy')
  expected = jnp.argmax(mnist.Classifier().apply(result['variables'], x), axis=-1)
  np.testing.assert_array_equal(np.load(tmp_path / 'predicted.npy'), expected)


def test_train_all_trains_one_per_rotation_and_keeps_existing(tmp_path, monkeypatch):
  """The CLI's work on stand-in data: rotated MNIST gets its own classifier."""
  from mmali_jax.data import sources  # pylint: disable=g-import-not-at-top
  labels = np.arange(120, dtype=np.int32) % 10
  calls = []

  def fake_load_split(dataset, split, data_dir=None, feature=None):
    assert feature is None
    calls.append((dataset, split))
    return _squares(labels, 0 if split == 'train' else 1), labels

  monkeypatch.setattr(sources, 'load_split', fake_load_split)
  config = _config(default_config.modality('0mnist', 'mnist', 'mnist'),
                   default_config.modality('1mnist', 'mnist', 'mnist', rotation=1))
  config.data = ml_collections.ConfigDict(dict(tfds_data_dir=None))
  config.eval = ml_collections.ConfigDict(dict(classifier_holdout=20, classifier_batch_size=32))
  summary = classifiers.train_all(config, str(tmp_path), epochs=1)
  assert sorted(summary) == ['mnist_rot0', 'mnist_rot1']
  assert summary['mnist_rot1']['rotation'] == 1
  for key in summary:
    assert os.path.exists(tmp_path / key / 'checkpoint')
  assert set(classifiers.load_classifiers(config, str(tmp_path))) == {'0mnist', '1mnist'}
  calls.clear()
  classifiers.train_all(config, str(tmp_path), epochs=1)
  assert not calls  # Existing classifiers are kept.
