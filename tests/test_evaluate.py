"""Evaluation of trained models: during training, by `python -m mmali_jax.evaluate`, reports."""
import json
import os
import subprocess
import sys

from absl import flags
import flax
import jax
from ml_collections import config_flags
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmali_jax import checkpointing
from mmali_jax import console
from mmali_jax import default_config
from mmali_jax import evaluate
from mmali_jax import images
from mmali_jax import train
from mmali_jax.evaluators import classifiers
from mmali_jax.evaluators import evaluator
from mmali_jax.evaluators import report
from tests.conftest import data_parallel_config
from tests.conftest import ROOT
from tests.conftest import run_on_one_device
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


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def test_periodic_evaluation_equals_the_evaluate_command_on_that_checkpoint(tmp_path):
  config = _eval_settings(small_config('multimnist', 'modalities=2', num_train_steps=2,
                                       checkpoint_every_steps=1))
  config.eval.every_steps = 1  # periodic evaluation during training, after steps 1 and 2
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=24):
    classifiers.train_all(config, os.path.join(workdir, 'classifiers'))
    train.train_and_evaluate(config, workdir)
    periodic = {step: _read_json(tmp_path / 'eval' / f'metrics_step_{step}.json')
                for step in (1, 2)}
    # As the command line does: the config comes back from the workdir.
    restored_config = checkpointing.load_config(workdir)
    assert [m.name for m in restored_config.modalities] == ['0mnist', '1mnist']
    assert restored_config.eval.probe_epochs == 2
    from_checkpoint = evaluate.evaluate(restored_config, workdir, step=1)
    latest = evaluate.evaluate(restored_config, workdir)

  assert periodic[1] != periodic[2]  # the two steps' EMA weights differ ...
  assert from_checkpoint == periodic[1]  # ... and each is evaluated identically from memory
  assert latest == periodic[2]  # and from its checkpoint.
  assert latest['step'] == 2
  assert _read_json(tmp_path / 'eval' / 'metrics.json') == latest
  for readout in evaluator.PROBE_READOUTS:
    assert 0.0 <= latest[f'latent/0mnist/both/{readout}'] <= 100.0
  # Only the unrotated modality is probed (Table 1).
  assert not any(k.startswith('latent/1mnist') for k in latest)
  for key in ('coherence/joint', 'coherence/cross/0mnist_to_1mnist',
              'coherence/cross/1mnist_to_0mnist', 'coherence/synergy/0mnist',
              'classifier/0mnist/test_accuracy', 'classifier/1mnist/test_accuracy'):
    assert 0.0 <= latest[key] <= 100.0, key
  text = (tmp_path / 'eval' / 'report.md').read_text()
  assert '| latent/0mnist/both (best test accuracy over epochs (reference protocol)) |' in text
  assert '| 97.02 |' in text  # Table 1, M = 2, factorized
  for figure in ('figure3.png', 'figure4.png'):
    assert os.path.getsize(tmp_path / 'eval' / figure) > 0


def test_one_evaluator_scores_new_parameters_without_rebuilding(tmp_path):
  config = _eval_settings(small_config('multimnist', 'modalities=2', num_train_steps=2,
                                       checkpoint_every_steps=1))
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, str(tmp_path))
    scorer = evaluator.Evaluator(config, str(tmp_path))
    first = scorer.run(checkpointing.restore_ema(str(tmp_path), 1)[0], 1)
    figure = (tmp_path / 'eval' / 'figure3.png').read_bytes()
    built, compiled = scorer.test, scorer._encode._cache_size()  # pylint: disable=protected-access
    second = scorer.run(checkpointing.restore_ema(str(tmp_path), 2)[0], 2)
  assert first['step'] == 1 and second['step'] == 2
  # Test pairs loaded once, encoders compiled once ...
  assert scorer.test is built
  assert scorer._encode._cache_size() == compiled  # pylint: disable=protected-access
  # ... and the second parameters drew a different figure, kept as step 2's and as the latest.
  latest = (tmp_path / 'eval' / 'figure3.png').read_bytes()
  assert latest != figure
  assert (tmp_path / 'eval' / 'figure3_step_2.png').read_bytes() == latest
  # Evaluating step 1 again replaces step 1's figure only: step 2's stays.
  with tfds.testing.mock_data(num_examples=24):
    scorer.run(checkpointing.restore_ema(str(tmp_path), 1)[0], 1)
  assert (tmp_path / 'eval' / 'figure3_step_1.png').read_bytes() == figure
  assert (tmp_path / 'eval' / 'figure3_step_2.png').read_bytes() == latest


def test_evaluation_computes_in_float32_whatever_the_default(tmp_path, monkeypatch):
  """JAX's default precision is TF32 on recent GPUs and bfloat16 passes on TPU: the evaluators and
  the coherence classifiers set full float32 themselves, so a checkpoint's metrics do not depend
  on the machine that computed them."""
  config = _eval_settings(small_config('multimnist', 'modalities=2', num_train_steps=1,
                                       checkpoint_every_steps=1))
  seen = []
  real_to_float = images.to_float

  def spy(x):  # every image the evaluation feeds a network goes through it
    seen.append(jax.config.jax_default_matmul_precision)
    return real_to_float(x)

  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, str(tmp_path))
    monkeypatch.setattr(images, 'to_float', spy)
    with jax.default_matmul_precision('bfloat16'):
      classifiers.train_all(config, str(tmp_path / 'classifiers'))
      metrics = evaluate.evaluate(config, str(tmp_path))
  assert 'coherence/joint' in metrics and 'latent/0mnist/both/final_test_accuracy' in metrics
  assert seen and set(seen) == {'highest'}


def test_evaluate_without_classifiers_says_how_to_train_them(tmp_path):
  config = _eval_settings(small_config('multimnist', 'modalities=2', num_train_steps=1,
                                       checkpoint_every_steps=1))
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, str(tmp_path))
    metrics = evaluate.evaluate(config, str(tmp_path))
  assert not any(k.startswith('coherence/') for k in metrics)
  text = (tmp_path / 'eval' / 'report.md').read_text()
  assert 'python -m mmali_jax.classifiers' in text


def test_evaluate_without_checkpoint_is_a_clear_error(tmp_path):
  config = small_config('multimnist')
  with pytest.raises(checkpointing.CheckpointError, match='train first'):
    evaluate.evaluate(config, str(tmp_path))


def _evaluate_command(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'mmali_jax.evaluate', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False, env=env)


def test_evaluate_command_overrides_the_stored_config(tmp_path):
  """--config.FIELD=VALUE on the stored config, without --config: here the data moved."""
  config = small_config('multimnist', 'modalities=2', num_train_steps=1,
                        checkpoint_every_steps=1)
  config.data.tfds_data_dir = str(tmp_path / 'old_data')
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  moved = tmp_path / 'moved_data'
  result = _evaluate_command(f'--workdir={tmp_path / "run"}',
                             f'--config.data.tfds_data_dir={moved}')
  # No data in either folder: the message names the overridden one, not the stored one.
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert str(moved / 'downloads' / 'manual') in result.stderr
  assert 'old_data' not in result.stderr
  assert checkpointing.load_config(str(tmp_path / 'run')).data.tfds_data_dir == str(
      tmp_path / 'old_data')  # the stored config is not rewritten by an override
  # An empty value goes back to TFDS's default folder ($TFDS_DATA_DIR here).
  default = tmp_path / 'default_data'
  result = _evaluate_command(f'--workdir={tmp_path / "run"}', '--config.data.tfds_data_dir=',
                             env=dict(os.environ, TFDS_DATA_DIR=str(default)))
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert f'{default} (the TFDS default)' in result.stderr
  assert str(default / 'downloads' / 'manual') in result.stderr
  assert 'old_data' not in result.stderr


def test_evaluate_command_on_a_directory_that_is_not_a_run(tmp_path):
  result = _evaluate_command(f'--workdir={tmp_path}')
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert 'is not a training workdir' in result.stderr


_RESTORE_ON_ONE_DEVICE = """
import sys
from flax import traverse_util
import jax
import numpy as np
from mmali_jax import checkpointing
assert jax.device_count() == 1
ema, step = checkpointing.restore_ema(sys.argv[1])
np.savez(sys.argv[2], step=step, **traverse_util.flatten_dict(ema, sep='/'))
"""


def test_a_run_trained_on_eight_devices_is_evaluated_on_one(tmp_path):
  """As after training on a multi-GPU machine: its checkpoint restores on a 1-device machine."""
  # tests/test_train.py's config for 8 devices: the same program, compiled once in the suite.
  config = data_parallel_config(num_train_steps=1, checkpoint_every_steps=1, num_devices=8)
  workdir = str(tmp_path / 'run')
  with tfds.testing.mock_data(num_examples=24):
    state = train.train_and_evaluate(config, workdir)
  run_on_one_device(_RESTORE_ON_ONE_DEVICE, workdir, tmp_path / 'ema.npz')
  restored = dict(np.load(tmp_path / 'ema.npz'))
  assert restored.pop('step') == 1
  trained = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(state.ema_params),
                                            sep='/')
  assert restored.keys() == trained.keys()
  for key, value in trained.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  # Nothing was set aside as unreadable.
  assert not os.path.exists(checkpointing.unreadable_dir(workdir))
  assert checkpointing.restore_ema(workdir)[1] == 1


def test_a_classifier_dir_given_on_the_command_line_is_relative_to_where_it_runs(
    tmp_path, monkeypatch):
  """Stored with a run, a relative classifier_dir is relative to the run (the Table 1 sweep's
  '../classifiers'); typed on a command line, it is relative to the directory it runs in."""
  monkeypatch.chdir(tmp_path)
  argv = ['main', '--config.eval.classifier_dir=shared/classifiers']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', default_config.base_config(),
                                  flag_values=flag_values, sys_argv=argv)
  console.parse_flags(argv, flag_values)
  config = flag_values.config
  assert config.eval.classifier_dir == str(tmp_path / 'shared' / 'classifiers')
  assert evaluator.Evaluator(config, 'run').classifier_dir == str(
      tmp_path / 'shared' / 'classifiers')
  config.eval.classifier_dir = '../classifiers'
  assert evaluator.Evaluator(config, 'run').classifier_dir == 'classifiers'
  assert evaluator.Evaluator(config, str(tmp_path / 'run')).classifier_dir == str(
      tmp_path / 'classifiers')


def test_paper_values_pick_the_right_table():
  monolithic = small_config('multimnist', 'modalities=3,discriminator=monolithic')
  assert report.paper_values(monolithic) == {'latent/0mnist/both': 85.44}
  # The older name of the baseline is the same experiment.
  assert report.paper_values(small_config('multimnist', 'modalities=3,discriminator=joint')) == {
      'latent/0mnist/both': 85.44}
  values = report.paper_values(small_config('mnist_svhn', 'percentage=0.2'))
  assert values['coherence/cross/0mnist_to_1svhn'] == 86.19
  assert 'latent/0mnist/content' not in values  # Table 3 is for 100% only
  assert report.paper_values(small_config('mnist_svhn'))['latent/1svhn/style'] == 21.39
