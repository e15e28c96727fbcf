"""Training end to end on generated data: runs, data parallelism, resume, and failure modes."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmali_jax import checkpointing
from mmali_jax import config_checks
from mmali_jax import curves
from mmali_jax import networks
from mmali_jax import train
from mmali_jax import train_step
from tests.conftest import data_parallel_config
from tests.conftest import small_config


def _params(state):
  return jax.device_get({'gen': state.gen_params, 'disc': state.disc_params,
                         'ema': state.ema_params, 'stats': state.disc_stats})


def _assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@pytest.mark.parametrize('name,arg', [
    ('mnist_svhn', ''),
    ('multimnist', 'modalities=3,discriminator=factorized'),
    ('multimnist', 'modalities=3,discriminator=monolithic'),
])
def test_training_runs_and_writes_checkpoints(tmp_path, name, arg):
  config = small_config(name, arg)
  mods, gen, disc = networks.build(config)
  initial = _params(train_step.create_train_state(config, gen, disc, mods))
  with tfds.testing.mock_data(num_examples=24):
    state = train.train_and_evaluate(config, str(tmp_path))
  final = _params(state)
  assert int(state.step) == 3
  for leaf in jax.tree.leaves(final):
    assert np.all(np.isfinite(leaf))
  for part in ('gen', 'disc'):
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), initial[part], final[part])
    assert all(jax.tree.leaves(changed)), f'some {part} parameters did not move'
  # Before ema.start_step the EMA is an exact copy of the generators.
  _assert_trees_close(final['ema'], final['gen'], rtol=0, atol=0)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '3']
  assert sorted(os.listdir(tmp_path / 'samples')) == ['step_0000002.png', 'step_0000003.png']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  logged = curves.read_scalars(str(tmp_path))
  assert [step for step, _ in logged['d/total']] == [1, 2, 3]  # every loss term, every step
  assert all(np.isfinite(v) for tag in logged if tag.startswith(('d/', 'g/'))
             for _, v in logged[tag])
  assert os.path.getsize(tmp_path / 'loss_curves.png') > 0
  ema, step = checkpointing.restore_ema(str(tmp_path))
  assert step == 3
  _assert_trees_close(ema, final['ema'], rtol=0, atol=0)


def _random_data(config, mods, num_examples=24):
  """Device data of random images and random pairs. The default sizes are those of the data the
  tests' MultiMNIST training runs load (`tfds.testing.mock_data(num_examples=24)`, paired
  `config.data.multiplication` times): the data are inputs of the step, so a step called here
  with a run's config and devices is the same program as that run's, and the suite's
  compilation cache compiles it once."""
  num_pairs = num_examples * config.data.multiplication
  rng = np.random.default_rng(0)
  return {'images': tuple(rng.integers(0, 256, (num_examples,) + m.image_shape, dtype=np.uint8)
                          for m in mods),
          'pairs': rng.integers(0, num_examples, (num_pairs, len(mods))).astype(np.int32),
          'key': train_step.data_key(config.seed)}


def _run_steps(config, dispatches, num_devices=1):
  """Trains from the initial state, calling the jitted steps with the given numbers of steps."""
  config.num_devices = num_devices
  mods, gen, disc = networks.build(config)
  mesh = train.make_mesh(config)
  train_steps, shardings = train.compile_train_steps(config, gen, disc, mods, mesh)
  state = jax.device_put(train_step.create_train_state(config, gen, disc, mods),
                         shardings.replicated)
  data = jax.device_put(_random_data(config, mods), shardings.replicated)
  metrics = []
  for num_steps in dispatches:
    state, m = train_steps(state, data, num_steps)
    metrics.append(jax.device_get(m))
  return state, metrics


def test_eight_devices_match_one_device():
  assert jax.local_device_count() == 8, 'conftest should give 8 CPU devices'
  config = data_parallel_config()
  results = []
  for num_devices in (1, 8):
    state, metrics = _run_steps(config, [1, 1, 1], num_devices)
    assert len(state.gen_params['encoder_0mnist']['Dense_0']['kernel'].sharding.device_set) == (
        num_devices)
    results.append((_params(state), metrics[-1]))
  (one, one_metrics), (eight, eight_metrics) = results
  _assert_trees_close(one_metrics, eight_metrics, rtol=1e-4, atol=1e-6)
  _assert_same_training(one, eight, steps=3, learning_rate=config.optim.learning_rate)


def _assert_same_training(a, b, steps, learning_rate):
  """Parameters of two runs that differ only in the order of float operations. Adam divides by
  sqrt(v), so for the few weights whose gradient is ~0 rounding can flip a step of up to the
  learning rate: every weight must stay within that bound, and nearly all must agree to float
  precision."""
  diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(
      jax.tree.leaves(a), jax.tree.leaves(b))])
  assert diffs.max() <= steps * learning_rate, diffs.max()
  assert np.mean(diffs > 1e-5) < 1e-3, np.mean(diffs > 1e-5)


def test_k_steps_per_dispatch_equal_k_single_steps():
  config = small_config('multimnist', 'modalities=2')
  singles, single_metrics = _run_steps(config, [1, 1, 1, 1])
  # Two dispatches of 2: the second goes on from the state and the step the first left.
  scanned, scanned_metrics = _run_steps(config, [2, 2])
  assert int(scanned.step) == int(singles.step) == 4
  _assert_same_training(_params(singles), _params(scanned), steps=4,
                        learning_rate=config.optim.learning_rate)
  # A dispatch returns the mean of its iterations' metrics, reduced on the device.
  for k in range(2):
    mean = jax.tree.map(lambda *v: np.mean(v), *single_metrics[2 * k:2 * k + 2])
    _assert_trees_close(mean, scanned_metrics[k], rtol=1e-5, atol=1e-6)


def test_dispatches_stop_at_every_logging_checkpoint_and_evaluation_step():
  sizes = train.dispatch_sizes(0, 25, 7, boundaries=(5, 10, 0))
  assert sizes == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 5)]
  assert train.dispatch_sizes(3, 30, 100, boundaries=(10, 12, 0)) == [
      (3, 7), (10, 2), (12, 8), (20, 4), (24, 6)]
  assert train.dispatch_sizes(0, 9, 4, boundaries=(100,)) == [(0, 4), (4, 4), (8, 1)]


def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
  """Stopped and re-run, as on CPU and as the loop runs on GPUs and TPUs (the state donated to
  every call, so checkpoints, samples and resuming must read no donated buffer; two iterations
  per call)."""
  config = small_config('multimnist', 'modalities=2', num_train_steps=4, log_every_steps=2)

  def stopped_and_rerun(workdir):
    config.num_train_steps = 2  # stop after 2 steps ...
    train.train_and_evaluate(config, workdir)
    config.num_train_steps = 4  # ... and re-run the same command on the same workdir
    return _params(train.train_and_evaluate(config, workdir))

  with tfds.testing.mock_data(num_examples=24):
    uninterrupted = _params(train.train_and_evaluate(config, str(tmp_path / 'full')))
    resumed = stopped_and_rerun(str(tmp_path / 'resumed'))
    monkeypatch.setattr(train, 'donates_state', lambda mesh: True)
    config.steps_per_dispatch = 2
    accelerator_loop = stopped_and_rerun(str(tmp_path / 'accelerator_loop'))
  _assert_trees_close(uninterrupted, resumed, rtol=1e-6, atol=1e-7)
  _assert_same_training(uninterrupted, accelerator_loop, steps=4,
                        learning_rate=config.optim.learning_rate)
  assert sorted(os.listdir(tmp_path / 'accelerator_loop' / 'samples')) == [
      'step_0000002.png', 'step_0000004.png']


def test_batch_not_divisible_by_devices_is_a_clear_error():
  config = small_config('multimnist', batch_size=12, num_devices=None)
  # ConfigError: the command line shows its message alone, without a traceback.
  with pytest.raises(config_checks.ConfigError,
                     match='batch_size=12 is not divisible by the 8 devices'):
    train.make_mesh(config)
  config = small_config('multimnist', num_devices=9)
  with pytest.raises(config_checks.ConfigError,
                     match='config.num_devices=9, but 8 devices are available'):
    train.make_mesh(config)


def test_changed_config_on_existing_workdir_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = small_config('multimnist', num_train_steps=2)
  with tfds.testing.mock_data(num_examples=24):
    train.train_and_evaluate(config, 'run')  # a relative workdir, as users type it
    tmp_path = tmp_path / 'run'
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
    before = sorted(os.listdir(tmp_path / 'checkpoints'))
    config.loss.lambda_unimodal = 0.5
    with pytest.raises(ValueError, match=r'loss.lambda_unimodal: 0.1 -> 0.5'):
      train.train_and_evaluate(config, 'run')
    # A rerun asking for fewer steps than were trained does nothing, and changes nothing: the
    # stored config still names the steps its checkpoints and evaluations are of.
    config.loss.lambda_unimodal = 0.1
    config.num_train_steps = 1
    train.train_and_evaluate(config, 'run')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  assert json.loads((tmp_path / 'config.json').read_text())['num_train_steps'] == 2


def test_command_line_reports_missing_data_without_traceback(tmp_path):
  """python -m mmali_jax.main on a machine without the data: the instructions, exit status 1."""
  result = subprocess.run(
      [sys.executable, '-m', 'mmali_jax.main', '--config=configs/multimnist.py',
       f'--workdir={tmp_path / "run"}', f'--config.data.tfds_data_dir={tmp_path / "tfds"}'],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
      text=True, timeout=300, check=False)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert 'train-images-idx3-ubyte.gz' in result.stderr
  assert str(tmp_path / 'tfds' / 'downloads' / 'manual') in result.stderr


class _Scalars:
  def __init__(self):
    self.written = {}

  def write_scalars(self, step, scalars):
    self.written.setdefault(step, {}).update(scalars)


def test_progress_rate_and_eta_leave_out_evaluation_time(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(train.time, 'monotonic', lambda: clock[0])
  writer = _Scalars()
  report = train.ProgressReport(num_train_steps=10, writer=writer, every_steps=2, every_secs=None)
  report(1)  # the first call only starts the clock
  clock[0] = 101.0
  with report.excluded('eval'):
    clock[0] = 151.0  # 50 s of evaluation ...
  clock[0] = 152.0
  report(2)
  # ... are not training time: 1 step in 2 s, not in 52 s.
  assert writer.written[2]['steps_per_sec'] == pytest.approx(0.5)
  clock[0] = 156.0
  report(3)
  report(4)
  assert writer.written[4]['steps_per_sec'] == pytest.approx(0.5)


def test_a_run_stored_before_new_config_fields_still_resumes(tmp_path):
  """Fields added to the code later (here: everything the CUB experiment added) take their
  defaults when a stored config.json lacks them, so old workdirs resume; real changes are still
  refused."""
  import json  # pylint: disable=g-import-not-at-top
  config = small_config('multimnist', 'modalities=2')
  stored = json.loads(config.to_json_best_effort())
  del stored['joint_critic_width'], stored['data']['pairing'], stored['eval']['evaluators']
  for spec in stored['modalities']:
    del spec['feature']
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  train.check_workdir_config(config, str(tmp_path), write=False)
  config.joint_critic_width = 512
  with pytest.raises(ValueError, match=r'joint_critic_width: 1024 -> 512\). Nothing in it was'):
    train.check_workdir_config(config, str(tmp_path), write=False)
