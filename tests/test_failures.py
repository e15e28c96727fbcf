"""What each failure does: kills, preemption, unreadable checkpoints, NaNs, missing data, bad input.

The kill and preemption tests run the real command (`python -m mmali_jax.main`, on generated
data: tests/command_worker.py) in a subprocess and compare every array of the final checkpoint
bitwise with an uninterrupted run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from mmali_jax import checkpointing
from mmali_jax import config_checks
from mmali_jax import curves
from mmali_jax import preemption
from mmali_jax import train
from mmali_jax.data import pipeline
from mmali_jax.data import sources
from tests.conftest import ctrl_c
from tests.conftest import ROOT
from tests.conftest import SMALL_COMMAND_FLAGS
from tests.conftest import small_config

STEPS = 8


def _command(workdir, cache, steps=STEPS, *extra):
  return [sys.executable, os.path.join(ROOT, 'tests', 'command_worker.py'),
          '--config=configs/multimnist.py', f'--workdir={workdir}', f'--compilation_cache={cache}',
          *SMALL_COMMAND_FLAGS, f'--config.num_train_steps={steps}', *extra]


def _start(workdir, cache, *extra):
  return subprocess.Popen(_command(workdir, cache, STEPS, *extra), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(workdir, cache, *extra):
  result = subprocess.run(_command(workdir, cache, STEPS, *extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _steps(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  return {int(d) for d in os.listdir(folder) if d.isdigit()} if os.path.isdir(folder) else set()


def _wait_for_checkpoint(workdir, process, timeout=300, in_progress=False):
  """Returns once the running process has written a checkpoint of its own (with in_progress:
  once it has started writing one, i.e. during an asynchronous save)."""
  before, start = _steps(workdir), time.time()
  folder = os.path.join(workdir, 'checkpoints')
  while True:
    if _steps(workdir) - before:
      return
    if in_progress and os.path.isdir(folder) and any('tmp' in d for d in os.listdir(folder)):
      return
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() - start < timeout
    time.sleep(0.01)


def _final_arrays(workdir):
  """Every array of the run's last checkpoint, as host numpy arrays keyed by item and path."""
  arrays = {}
  with ocp.StandardCheckpointer() as checkpointer:
    for item in ('train', 'ema'):
      path = os.path.join(workdir, 'checkpoints', str(STEPS), item)
      tree = checkpointer.restore(
          path, checkpointing.host_target(checkpointer.metadata(path).item_metadata.tree))
      flat, _ = jax.tree_util.tree_flatten_with_path(tree)
      arrays.update({f'{item}{jax.tree_util.keystr(p)}': v for p, v in flat})
  return arrays


def _assert_bitwise_equal(a, b):
  assert sorted(a) == sorted(b)
  different = [k for k in a if not np.array_equal(a[k], b[k])]
  assert not different, different[:5]


@pytest.fixture(scope='session')
def uninterrupted(tmp_path_factory, cache):
  """The command's run, uninterrupted (in a process of its own too: XLA:CPU compiles for the
  process's device count, and bitwise equality needs the same program)."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  _run(workdir, cache)
  return _final_arrays(workdir)


def test_killed_or_preempted_then_rerun_equals_uninterrupted(tmp_path, cache, uninterrupted):
  """SIGKILL at arbitrary moments (during and between asynchronous saves), then SIGTERM twice
  (a preemption notice, and another while the checkpoint is written), then the same command
  again: the final checkpoint is bitwise the uninterrupted run's."""
  workdir = str(tmp_path / 'run')
  for during_a_save in (True, False):
    process = _start(workdir, cache)
    _wait_for_checkpoint(workdir, process, in_progress=during_a_save)
    if not during_a_save:
      time.sleep(0.2)  # between saves
    process.send_signal(signal.SIGKILL)
    process.communicate()
  process = _start(workdir, cache)
  _wait_for_checkpoint(workdir, process)
  process.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  if process.poll() is None:
    process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == preemption.EXIT_PREEMPTED, stderr[-3000:]
  message = [l for l in stderr.splitlines() if l.startswith('Stopped by SIGTERM at step')][0]
  step = int(message.split('at step ')[1].split()[0])
  assert 0 < step < STEPS and 'Run the same command again' in message
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert steps[-1] == step  # the checkpoint of the step it stopped at, complete
  checkpointing.restore_ema(workdir, step)
  _run(workdir, cache)
  _assert_bitwise_equal(_final_arrays(workdir), uninterrupted)


def _train(config, workdir):
  with tfds.testing.mock_data(num_examples=24):
    return train.train_and_evaluate(config, workdir)


def _damage(workdir, step, how):
  folder = os.path.join(workdir, 'checkpoints', str(step))
  if how == 'truncated files':
    for root, _, files in os.walk(folder):
      for name in files:
        path = os.path.join(root, name)
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
  elif how == 'a missing item':
    shutil.rmtree(os.path.join(folder, 'ema'))
  elif how == 'no commit':  # a save cut short: no metadata, an item left empty
    for name in os.listdir(folder):
      if not os.path.isdir(os.path.join(folder, name)):
        os.remove(os.path.join(folder, name))
    shutil.rmtree(os.path.join(folder, 'ema'))
    os.makedirs(os.path.join(folder, 'ema'))


FOUR_STEPS = dict(num_train_steps=4, checkpoint_every_steps=2, log_every_steps=4)


@pytest.fixture(scope='session')
def four_steps(tmp_path_factory):
  """A run of 4 steps with checkpoints (and logs) at 2 and 4: (its workdir, its final generator
  weights). Tests copy the workdir before changing anything in it."""
  workdir = str(tmp_path_factory.mktemp('four_steps'))
  config = small_config('multimnist', **FOUR_STEPS)
  return workdir, train.distributed.local(_train(config, workdir).gen_params)


def test_sync_point_ids_count_dispatches_and_evaluated_steps_keep_checkpoints(tmp_path,
                                                                              monkeypatch):
  """One short run checks three things of the loop: preemption ids, kept checkpoints, and what
  the progress report leaves out."""
  # JAX's multi-process preemption sync point is the highest id any process reported, plus one,
  # and is only reached by a call with exactly that id: ids that jumped by the steps of a
  # dispatch (2 here) would never reach it, and a preempted job would train on until killed.
  seen, excluded = [], []
  real = preemption.StopRequest.requested
  monkeypatch.setattr(preemption.StopRequest, 'requested',
                      lambda self, i: seen.append(i) or real(self, i))
  real_excluded = train.ProgressReport.excluded
  monkeypatch.setattr(train.ProgressReport, 'excluded',
                      lambda self, name: excluded.append(name) or real_excluded(self, name))
  config = small_config('multimnist', num_train_steps=6, log_every_steps=2,
                        checkpoint_every_steps=2)
  config.steps_per_dispatch = 2
  config.keep_checkpoints = 1
  config.eval.every_steps = 4
  config.eval.evaluators = ('figures',)
  _train(config, str(tmp_path / 'run'))
  assert seen == [0, 1, 2]
  # Compiling (once: every dispatch runs 2 steps) and evaluating (step 4 and the last) are left
  # out of steps/s and the ETA.
  assert excluded == ['compile', 'eval', 'eval']
  # Checkpoints of steps 2, 4, 6: the newest is kept, and the evaluated step 4 (to evaluate
  # again later).
  assert _steps(str(tmp_path / 'run')) == {4, 6}


def _losses(workdir):
  return {tag: points for tag, points in curves.read_scalars(workdir).items()
          if tag.startswith(('d/', 'g/'))}


@pytest.mark.xdist_group('four_steps')
def test_preempted_between_logging_steps_logs_as_uninterrupted_and_resumes_on_its_data_only(
    tmp_path, four_steps):
  """Stopped by Ctrl-C at step 3, inside the logging window of steps 3-4 (checkpoints at 2 and 4,
  logs at 4), the run logs nothing at 3; the checkpoint carries step 3's losses, so the resumed
  run logs at step 4 the average over steps 3-4, as the uninterrupted run does. Resuming on other
  data is refused before anything is written."""
  whole, stopped = four_steps[0], str(tmp_path / 'stopped')
  config = small_config('multimnist', **FOUR_STEPS)
  with ctrl_c(dispatch=2):  # the run's handler takes it: no KeyboardInterrupt
    with pytest.raises(preemption.Preempted, match=r'Stopped by Ctrl-C \(SIGINT\) at step 3 of 4'):
      _train(config, stopped)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
  current = _losses(whole)
  assert _steps(stopped) == {2, 3}  # nothing logged off the grid:
  assert _losses(stopped) == {t: p[:1] for t, p in current.items()} and current

  before = sorted(os.listdir(stopped))
  sources.clear_cache()  # loaded splits are cached per process
  with tfds.testing.mock_data(num_examples=32):  # other MNIST files than the run started with
    with pytest.raises(checkpointing.WorkdirConfigError,
                       match=r'other data .*examples of .*sha256.*data.tfds_data_dir'):
      train.train_and_evaluate(config, stopped)
  sources.clear_cache()
  assert sorted(os.listdir(stopped)) == before and _steps(stopped) == {2, 3}

  # Copies: asked to end at step 3, the run logs them there; stored under a term this code does
  # not compute (a checkpoint of other code), they are logged at step 3 on their own.
  ended, renamed = str(tmp_path / 'ended'), str(tmp_path / 'renamed')
  for copy in (ended, renamed):
    shutil.copytree(stopped, copy)
  path = os.path.join(renamed, 'checkpoints', '3', 'unlogged', 'metadata')
  with open(path) as f:
    unlogged = json.load(f)
  assert [(first, n) for first, n, _ in unlogged] == [(2, 1)]
  values = unlogged[0][2]
  old_term = sorted(values)[0]
  values['d/an_old_term'] = values.pop(old_term)
  with open(path, 'w') as f:
    json.dump(unlogged, f)
  _train(small_config('multimnist', **dict(FOUR_STEPS, num_train_steps=3)), ended)
  assert {t: [s for s, _ in p] for t, p in _losses(ended).items()} == {t: [2, 3] for t in current}
  _train(config, renamed)
  logged = {t: [s for s, _ in p] for t, p in _losses(renamed).items()}
  assert logged == {t: [2] * (t in current) + [3] * (t in values) + [4] * (t in current)
                    for t in {*values, *current}}
  assert logged['d/an_old_term'] == [3] and logged[old_term] == [2, 4]

  _train(config, stopped)
  resumed = _losses(stopped)
  for tag, points in current.items():  # the same float64 average of the same float32 losses
    assert resumed[tag] == points and [s for s, _ in points] == [2, 4], tag


@pytest.mark.xdist_group('four_steps')
def test_a_second_ctrl_c_stops_at_once(tmp_path, capfd):
  """For a user who will not wait for the checkpoint: KeyboardInterrupt, the last checkpoint
  (step 2) kept, nothing of step 3 written."""
  with ctrl_c(dispatch=2, presses=2), pytest.raises(KeyboardInterrupt):
    _train(small_config('multimnist', **FOUR_STEPS), str(tmp_path / 'run'))
  assert _steps(str(tmp_path / 'run')) == {2}
  assert ('Ctrl-C (SIGINT): stopping after a checkpoint of the current step; Ctrl-C again stops '
          'at once') in capfd.readouterr().err


@pytest.mark.xdist_group('four_steps')
def test_ctrl_c_after_the_last_step_is_asked_about_still_stops(tmp_path):
  """Ctrl-C during the last step's work (its evaluation, say), after the loop last asked: the
  run is complete, and it still ends as stopped, so that a sweep of runs does not go on."""
  with ctrl_c(dispatch=3, after_the_check=True):
    with pytest.raises(preemption.Preempted,
                       match=r'Stopped by Ctrl-C \(SIGINT\) at the end of the run \(step 4, '):
      _train(small_config('multimnist', **FOUR_STEPS), str(tmp_path / 'run'))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
  assert _steps(str(tmp_path / 'run')) == {2, 4}


@pytest.mark.xdist_group('four_steps')  # one worker runs the fixture's training once
@pytest.mark.parametrize('how', ['truncated files', 'a missing item', 'no commit'])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, how, four_steps):
  config = small_config('multimnist', num_train_steps=4, checkpoint_every_steps=2)
  workdir = str(tmp_path / 'run')
  shutil.copytree(four_steps[0], workdir)
  full = four_steps[1]
  _damage(workdir, 4, how)
  # Evaluation with --step unset takes the newest readable checkpoint too.
  _, step = checkpointing.restore_ema(workdir)
  assert step == 2
  set_aside = os.listdir(checkpointing.unreadable_dir(workdir))
  assert len(set_aside) == 1 and set_aside[0].startswith('4-')
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']  # the good one stays
  resumed = train.distributed.local(_train(config, workdir).gen_params)  # goes on from step 2
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), full,
               resumed)


@pytest.mark.xdist_group('four_steps')
def test_checkpoints_saved_before_unlogged_losses_existed_resume(tmp_path, four_steps, caplog):
  """A checkpoint saved without the `unlogged` item (older code) restores; one saved with it that
  lost it is unreadable, set aside like one that lost any other item. A workdir of code that did
  not record its training data (train_data.json) resumes with a warning that it cannot be
  checked."""
  def strip(workdir, step, from_metadata):
    folder = os.path.join(workdir, 'checkpoints', str(step))
    shutil.rmtree(os.path.join(folder, 'unlogged'))
    if from_metadata:
      path = os.path.join(folder, '_CHECKPOINT_METADATA')
      with open(path) as f:
        metadata = json.load(f)
      del metadata['item_handlers']['unlogged']
      with open(path, 'w') as f:
        json.dump(metadata, f)

  config = small_config('multimnist', num_train_steps=4, checkpoint_every_steps=2)
  old, lost = str(tmp_path / 'old'), str(tmp_path / 'lost')
  for workdir, from_metadata in ((old, True), (lost, False)):
    shutil.copytree(four_steps[0], workdir)
    strip(workdir, 4, from_metadata)
  os.remove(os.path.join(old, train.TRAIN_DATA_FILE))
  restored = train.distributed.local(_train(config, old).gen_params)  # nothing left to train
  assert [r.getMessage() for r in caplog.records if 'train_data.json' in r.getMessage()] == [
      f'{old} was started before runs recorded their training data (train_data.json): whether '
      'this command loads the same data cannot be checked; from now on it is checked against the '
      'data loaded now.']
  jax.tree.map(np.testing.assert_array_equal, four_steps[1], restored)
  assert not os.path.exists(checkpointing.unreadable_dir(old))
  config.num_train_steps = 2
  _train(config, lost)
  assert [d.split('-')[0] for d in os.listdir(checkpointing.unreadable_dir(lost))] == ['4']


def test_no_readable_checkpoint_is_a_clear_error_and_deletes_nothing(tmp_path):
  config = small_config('multimnist', num_train_steps=2, checkpoint_every_steps=2)
  _train(config, str(tmp_path))
  _damage(str(tmp_path), 2, 'truncated files')
  config.num_train_steps = 4
  with pytest.raises(checkpointing.CheckpointError, match='None of the checkpoints'):
    _train(config, str(tmp_path))
  assert len(os.listdir(checkpointing.unreadable_dir(str(tmp_path)))) == 1


def _altered_from_step(step, alter):
  """train.compile_train_steps whose programs return alter(state, metrics) once the state has
  trained `step` iterations: a run of the common small config goes wrong at a chosen step
  without a program of its own to compile."""
  compile_train_steps = train.compile_train_steps

  def altered(*args):
    steps, shardings = compile_train_steps(*args)

    def lower(state, data, num_steps):  # the loop compiles each dispatch size ahead of time
      compiled = steps.lower(state, data, num_steps).compile()

      def run(state, data):
        state, metrics = compiled(state, data)
        if int(train.distributed.local(state.step)) >= step:
          state, metrics = alter(state, metrics)
        return state, metrics
      return types.SimpleNamespace(compile=lambda: run)
    return types.SimpleNamespace(lower=lower), shardings
  return altered


def test_non_finite_loss_stops_naming_step_and_terms_and_writes_nothing_after(tmp_path,
                                                                             monkeypatch):
  config = small_config('multimnist', num_train_steps=6, checkpoint_every_steps=1,
                        log_every_steps=2)
  monkeypatch.setattr(train, 'compile_train_steps', _altered_from_step(
      3, lambda state, metrics: (state, dict(metrics, **{'g/joint/decoder': float('nan'),
                                                         'g/total': float('nan')}))))
  with pytest.raises(train.NonFiniteError) as info:
    _train(config, str(tmp_path))
  message = str(info.value)
  assert message.startswith('Non-finite loss at step 3: g/joint/decoder=nan, g/total=nan.')
  assert 'Nothing after step 2 was written' in message
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']
  assert sorted(os.listdir(tmp_path / 'samples')) == ['step_0000001.png', 'step_0000002.png']


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
  """Weights sent to infinity by the first update (as a learning rate of 1e30 does) with finite
  losses: the checkpoint of step 1 is never written."""
  config = small_config('multimnist', num_train_steps=3, checkpoint_every_steps=1)
  monkeypatch.setattr(train, 'compile_train_steps', _altered_from_step(
      1, lambda state, metrics: (state.replace(gen_params=jax.tree.map(
          lambda w: jnp.full_like(w, np.inf), state.gen_params)), metrics)))
  with pytest.raises(train.NonFiniteError, match=r'Non-finite parameters \(generators\) after '
                     r'step 1\. Nothing after step 0 was written'):
    _train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints') or not os.listdir(tmp_path / 'checkpoints')


# ------------------------------------------------------------------------------------- data


def test_every_missing_dataset_is_named_at_once_offline(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_online', lambda: False)
  start = time.time()
  with pytest.raises(sources.MissingDatasetError) as info:
    sources.ensure_prepared(['mnist', 'svhn_cropped'], str(tmp_path))
  message = str(info.value)
  assert time.time() - start < 30
  assert "'mnist'" in message and "'svhn_cropped'" in message
  assert 'train-images-idx3-ubyte.gz' in message and 'train_32x32.mat' in message
  assert 'cannot reach the internet' in message
  assert str(tmp_path / 'downloads' / 'manual') in message


def test_online_missing_data_is_downloaded_by_tfds_and_a_failure_explained(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setattr(sources, '_online', lambda: True)
  tfds_module = sources._import_tfds()  # pylint: disable=protected-access
  calls = []

  def fail(self, download_config=None):
    calls.append((self.name, download_config.manual_dir))
    raise ConnectionError('HTTP 503 from the mirror')

  monkeypatch.setattr(tfds_module.core.DatasetBuilder, 'download_and_prepare', fail)
  with pytest.raises(sources.MissingDatasetError) as info:
    sources.load_split('mnist', 'train', str(tmp_path))
  assert calls == [('mnist', str(tmp_path / 'downloads' / 'manual'))]
  assert 'the download failed (ConnectionError: HTTP 503 from the mirror)' in str(info.value)


def test_half_prepared_dataset_says_what_to_delete(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_online', lambda: False)
  leftover = tmp_path / 'mnist' / 'incomplete.Z8K2QX' / '3.0.1'
  leftover.mkdir(parents=True)
  with pytest.raises(sources.MissingDatasetError) as info:
    sources.load_split('mnist', 'train', str(tmp_path))
  assert 'only partly prepared' in str(info.value)
  assert f'Delete {tmp_path / "mnist" / "incomplete.Z8K2QX"}' in str(info.value)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize('field,value,message', [
    ('num_train_steps', 0, 'config.num_train_steps=0 must be an integer >= 1'),
    ('batch_size', -8, 'config.batch_size=-8 must be an integer >= 1'),
    ('latent_dim', 0, 'config.latent_dim=0 must be an integer >= 1'),
    ('style_dim', 20, 'config.style_dim=20 must be smaller than config.latent_dim=20'),
    ('discriminator', 'huge', "config.discriminator='huge'; choose one of"),
    ('joint_critic', 'sum', "config.joint_critic='sum'; choose one of"),
    ('data.percentage', 1.5, 'config.data.percentage=1.5 must be a number in (0.0, 1.0]'),
    ('data.percentage', 0.0, 'config.data.percentage=0.0 must be a number in (0.0, 1.0]'),
    ('ema.decay', 1.0, 'config.ema.decay=1.0 must be a number in [0.0, 1.0)'),
    ('matmul_precision', 'fast', "config.matmul_precision='fast'; choose one of"),
    ('eval.probe_parts', ('both', 'contnt'),
     "config.eval.probe_parts=('both', 'contnt'): choose one or more of ('both', 'content', "
     "'style')"),
])
def test_bad_values_are_named_before_anything_is_written(tmp_path, field, value, message):
  config = small_config('multimnist')
  target = config
  *path, leaf = field.split('.')
  for part in path:
    target = target[part]
  target[leaf] = value
  with pytest.raises(config_checks.ConfigError, match=message.replace('(', r'\(').replace(
      ')', r'\)').replace('[', r'\[').replace(']', r'\]')):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def _with_modalities(*specs):
  config = small_config('multimnist')
  config.modalities = [dict(name=n, dataset=d, network=f, rotation=0, rec_weight=1.0)
                       for n, d, f in specs]
  import ml_collections  # pylint: disable=g-import-not-at-top
  config.modalities = [ml_collections.ConfigDict(m) for m in config.modalities]
  return config


@pytest.mark.parametrize('specs,message', [
    ([('0mnist', 'mnist', 'mnist')], 'has 1 modalities; MMALI needs at least 2'),
    ([(f'{k}m', 'mnist', 'mnist') for k in range(11)], 'supports up to 10'),
    ([('a', 'mnist', 'mnist'), ('a', 'mnist', 'mnist')], "duplicate names \\['a'\\]"),
    ([('a', 'mnist', 'mnist'), ('b', 'mnist', 'resnet')], "unknown network family 'resnet'"),
    ([('a', 'mnist', 'mnist'), ('b', '', 'mnist')], "dataset='' must be the name of a TFDS"),
])
def test_bad_modalities_are_named(tmp_path, specs, message):
  with pytest.raises(config_checks.ConfigError, match=message):
    train.train_and_evaluate(_with_modalities(*specs), str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_images_the_network_family_cannot_take(tmp_path):
  config = _with_modalities(('0mnist', 'mnist', 'mnist'), ('1svhn', 'mnist', 'svhn'))
  with pytest.raises(config_checks.ConfigError,
                     match=r"dataset 'mnist' has images of shape \(28, 28, 1\).*family 'svhn' "
                           r'takes uint8 images of shape \(32, 32, 3\)'):
    _train(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('field,evaluator', [('probe_holdout', 'latent_probe'),
                                             ('classifier_holdout', 'coherence')])
def test_a_holdout_as_large_as_the_training_split_is_named_before_training(tmp_path, field,
                                                                           evaluator):
  config = small_config('multimnist')
  config.eval.evaluators = (evaluator,)
  config.eval.every_steps = 1
  config.eval[field] = 24  # all of the mock split
  with pytest.raises(config_checks.ConfigError,
                     match=f'config.eval.{field}=24 holds out all 24 training examples of '
                           "modality '0mnist'; use a value below 24"):
    _train(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_data_the_config_cannot_use_is_named(tmp_path, monkeypatch):
  config = _with_modalities(('0mnist', 'mnist', 'mnist'), ('1mnist', 'mnist', 'mnist'))
  config.modalities[1].feature = 'imag'
  with pytest.raises(config_checks.ConfigError,
                     match=r"Dataset 'mnist' has no feature 'imag'; it has \['image', 'label'\]"):
    _train(config, str(tmp_path / 'run'))
  config = small_config('mnist_svhn')
  config.data.pairing = 'aligned'
  sizes = {'mnist': 24, 'svhn_cropped': 20}  # as the real splits, MNIST and SVHN differ in size
  real_load_images = pipeline.load_images
  monkeypatch.setattr(pipeline, 'load_images', lambda dataset, *args: tuple(
      a[:sizes[dataset]] for a in real_load_images(dataset, *args)))
  with pytest.raises(config_checks.ConfigError,
                     match=r"config.data.pairing='aligned' cannot pair \['0mnist', '1svhn'\]: "
                           'Aligned pairing needs the same number of instances'):
    _train(config, str(tmp_path / 'run'))
  monkeypatch.undo()
  config = small_config('multimnist')
  config.data.percentage = 0.01  # 24 examples: no class keeps one
  with pytest.raises(config_checks.ConfigError,
                     match='No training tuples: .* config.data.percentage=0.01'):
    _train(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
  config = small_config('multimnist')
  (tmp_path / 'file').write_text('not a directory')
  with pytest.raises(config_checks.ConfigError, match='is a file, not a directory'):
    train.train_and_evaluate(config, str(tmp_path / 'file'))
  assert (tmp_path / 'file').read_text() == 'not a directory'
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(locked, os.W_OK):
      pytest.skip('running as a user who can write anywhere')
    with pytest.raises(config_checks.ConfigError, match='cannot be written'):
      train.train_and_evaluate(config, str(locked / 'run'))
  finally:
    locked.chmod(0o700)


# `python -m mmali_jax.main ARGS`, telling on a line of stderr ('imported: [...]') whether it
# imported the trainer or TensorFlow.
_MAIN_TELLING_IMPORTS = """
import runpy, sys
sys.argv = ['mmali_jax.main'] + sys.argv[1:]
try:
  runpy.run_module('mmali_jax.main', run_name='__main__', alter_sys=True)
finally:
  print('imported:', [m for m in ('mmali_jax.train', 'tensorflow') if m in sys.modules],
        file=sys.stderr)
"""


def _run_command(*args):
  return subprocess.run([sys.executable, '-c', _MAIN_TELLING_IMPORTS, *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_unknown_or_mistyped_config_fields_on_the_command_line(tmp_path):
  """Refused as soon as the flags are read: the trainer, and with it TensorFlow, is not imported
  (10 s on a 2-core machine)."""
  result = _run_command('--config=configs/multimnist.py', f'--workdir={tmp_path / "run"}',
                        '--config.num_train_step=5')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert ('--config.num_train_step: there is no such config field. Did you mean '
          '"num_train_steps"?') in result.stderr
  assert 'imported: []' in result.stderr.splitlines(), result.stderr[-3000:]
  result = _run_command('--config=configs/multimnist.py', f'--workdir={tmp_path / "run"}',
                        '--config.batch_size=many')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert "--config.batch_size=many: invalid literal for int()" in result.stderr
  assert 'imported: []' in result.stderr.splitlines(), result.stderr[-3000:]
  assert not os.path.exists(tmp_path / 'run')


def test_a_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  config = small_config('multimnist', num_train_steps=2, checkpoint_every_steps=2)
  _train(config, str(tmp_path))
  original = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 4:
      os.makedirs(os.path.join(self.directory, f'{step}.orbax-checkpoint-tmp-1'), exist_ok=True)
      raise OSError(28, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  config.num_train_steps = 4
  with pytest.raises(checkpointing.CheckpointError,
                     match='Could not write the checkpoint of step 4 .*No space left on device.*'
                           'step 2 is intact'):
    _train(config, str(tmp_path))
  monkeypatch.setattr(ocp.CheckpointManager, 'save', original)
  _, step = checkpointing.restore_ema(str(tmp_path))
  assert step == 2
  assert int(_train(config, str(tmp_path)).step) == 4  # room again: the same command goes on


def test_evaluate_an_unknown_step(tmp_path):
  config = small_config('multimnist', num_train_steps=2, checkpoint_every_steps=2)
  _train(config, str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'No checkpoint at step 7 .*available steps: \[2\]'):
    checkpointing.restore_ema(str(tmp_path), 7)
