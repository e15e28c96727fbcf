"""The processes of a local multi-process training job, for tests/test_multiprocess.py.

  python tests/multiprocess_worker.py --process_id=0 --num_processes=2 --port=PORT \\
      --devices=4 --workdir=DIR --steps=4 [--resume_in=DIR2] [--failing=... --failures_in=DIR3]

Trains a small MultiMNIST config on generated data (tfds.testing.mock_data, the same on every
process) through the real training loop, then saves this process's copy of the final parameters
to DIR/params_process<k>.npz (and which barriers orbax used). --slow_start_s delays this process
between restoring and its first training step, as a slower host would be (that run only).

The same processes then go on (one job, so that the processes import, trace and compile once: on
CPU each process compiles its own programs, tests/test_multiprocess.py). A run here that resumes
reads the checkpoint as a restarted job's processes would, but with the programs already traced
and compiled, and the collectives already set up, by the runs before it:
- --resume_in: a copy of DIR without its last checkpoint and its sample grids, resumed to
  --steps, its parameters saved as above;
- --failing: one run per thing that fails, in FAILURES_IN/<thing>, one after the other. Before
  training: processes with different configs or data, or process 1 alone unable to use its
  workdir; during training: process 0 alone failing at its first evaluation, its first
  checkpoint's sample grid or writing that checkpoint step's losses; or process 1 alone
  interrupted by Ctrl-C.
"""
import argparse
import contextlib
import copy
import os
import shutil
import sys
import time
from unittest import mock

NUM_EXAMPLES = 24  # per split of the generated MNIST, as tests/test_multiprocess.py's runs


def job_config(steps, num_devices):
  """The config of the job's runs and of the single-process runs they are compared with
  (conftest.data_parallel_config: a single-process run on 1 or 8 devices is a program
  tests/test_train.py compiles)."""
  from tests.conftest import data_parallel_config  # pylint: disable=g-import-not-at-top
  return data_parallel_config(num_train_steps=steps, checkpoint_every_steps=2, log_every_steps=1,
                              num_devices=num_devices)


@contextlib.contextmanager
def _failing(thing, config, workdir, num_examples):
  """`thing` (see --failing) failing while in the block; -> the config, workdir and number of
  generated examples per split of this process's run."""
  # pylint: disable=g-import-not-at-top
  import jax
  from mmali_jax import config_checks
  from mmali_jax import samples
  from mmali_jax import writers
  from mmali_jax.evaluators import evaluator
  from tests.conftest import ctrl_c
  # pylint: enable=g-import-not-at-top
  config = copy.deepcopy(config)
  process = jax.process_index()
  workdir = os.path.join(workdir, thing)
  if thing in ('config', 'data', 'workdir'):  # the processes differ before training
    if thing == 'config':
      config.seed = process
    elif thing == 'data':
      num_examples += 8 * process
    elif process == 1:  # on its host the workdir is a file
      workdir += '_a_file'
      with open(workdir, 'w'):
        pass
    yield config, workdir, num_examples
    return
  if thing == 'interrupted':  # JAX's preemption notice, once given, stays: the job's last run
    config.num_train_steps = 12
    # Process 1 alone; JAX's notifier looks for a SIGTERM once a second.
    with ctrl_c(dispatch=1 if process == 1 else None, then_wait_s=3):
      yield config, workdir, num_examples
    return

  def failing_evaluation(self, ema_params, step):
    del self, ema_params
    raise config_checks.ConfigError(f'The evaluation of step {step} failed.')

  def failing_grid(names, rows, path):
    del names, rows
    raise OSError(f'No space left on the device to write {os.path.basename(path)}.')

  def failing_write_scalars(self, step, scalars):
    # The losses of a checkpoint's step, the last write before the checkpoint: failing in the
    # background, the error comes up during the checkpoint.
    del self
    if step == 2 and 'd/total' in scalars:
      raise OSError(f'No space left on the device to write the losses of step {step}.')

  patches = {'evaluation': (evaluator.Evaluator, 'run', failing_evaluation),
             'samples': (samples, 'write_grid', failing_grid),
             # The event-file writer, which clu runs in the background on process 0 only.
             'scalars': (writers.metric_writers.SummaryWriter, 'write_scalars',
                         failing_write_scalars)}
  if thing == 'evaluation':
    config.eval.every_steps = 2
    config.eval.probe_holdout = config.eval.classifier_holdout = 0
  with mock.patch.object(*patches[thing]):
    yield config, workdir, num_examples


def _save(state, workdir):
  """This process's copy of the final parameters, and which barriers orbax used."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from mmali_jax import distributed
  # pylint: enable=g-import-not-at-top
  params = distributed.local({'gen': state.gen_params, 'disc': state.disc_params,
                              'ema': state.ema_params, 'stats': state.disc_stats})
  flat = {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(os.path.join(workdir, f'params_process{jax.process_index()}.npz'), **flat)
  # Orbax's asynchronous saves synchronise through the distributed runtime, not XLA collectives
  # that could interleave with the training step's (mmali_jax/distributed.py).
  with open(os.path.join(workdir, f'orbax_barriers_process{jax.process_index()}.txt'),
            'w') as f:
    f.write('runtime' if distributed.orbax_uses_runtime_barriers() else 'collectives')


def copy_without_last_checkpoint(workdir, dest, steps):
  """A copy of the finished run `workdir` at `dest`, to resume: without checkpoint `steps` and
  without any sample grid (a resumed run draws only those after its restored step, which is
  what the tests check), nor what the test worker saved. The logs are copied whole."""
  shutil.copytree(workdir, dest, ignore=shutil.ignore_patterns('params_process*',
                                                                 'orbax_barriers_process*'))
  shutil.rmtree(os.path.join(dest, 'checkpoints', str(steps)))
  shutil.rmtree(os.path.join(dest, 'samples'))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--devices', type=int, default=1)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, required=True)
  parser.add_argument('--slow_start_s', type=float, default=0,
                      help='Seconds this process takes longer to reach its first training step '
                      '(after the processes restored their checkpoint together), in the first '
                      'run only.')
  parser.add_argument('--resume_in', default='',
                      help='After the run: a copy of WORKDIR without its checkpoint of --steps '
                      'and its sample grids (made by process 0), resumed to --steps by every '
                      'process; its parameters are saved there as the run\'s are in WORKDIR.')
  parser.add_argument('--failing', default='',
                      help='Comma-separated things that fail, one run each in FAILURES_IN/<thing>, '
                      'one after the other in the same processes, after the run (and the '
                      'resume). Before training: "config" (process k trains with seed k), "data" '
                      '(process k generates 8k more examples per split), "workdir" (process 1\'s '
                      'workdir is a file, FAILURES_IN/workdir_a_file). Process 0 alone, during '
                      'training: "evaluation" (its first, evaluating every 2 steps), "samples" '
                      '(the grid of its first checkpoint), "scalars" (writing the losses of step '
                      '2, its first checkpoint\'s). Process 1 alone: "interrupted" (Ctrl-C after '
                      'its first step of 12; the last one, since a preemption notice cannot be '
                      'taken back). Each run\'s error is printed as "<thing> failed: <type>: '
                      '<message>".')
  parser.add_argument('--failures_in', default='', help='Where the runs of --failing go.')
  args = parser.parse_args()
  if args.failing and not args.failures_in:
    parser.error('--failing needs --failures_in')
  # The device count of this process; other flags (the test session's) are kept.
  os.environ['XLA_FLAGS'] = ' '.join(
      [f for f in os.environ.get('XLA_FLAGS', '').split()
       if 'xla_force_host_platform_device_count' not in f] +
      [f'--xla_force_host_platform_device_count={args.devices}'])
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # pylint: disable=g-import-not-at-top
  import jax
  import tensorflow_datasets as tfds
  from mmali_jax import distributed
  from mmali_jax import train
  from mmali_jax import samples
  from mmali_jax.data import sources
  # pylint: enable=g-import-not-at-top

  if args.num_processes > 1:
    distributed.initialize(f'localhost:{args.port}', args.num_processes, args.process_id,
                           timeout_s=120)
  config = job_config(args.steps, num_devices=None)  # every device of the job

  make_sample_fn = samples.make_sample_fn

  def slow_make_sample_fn(*a, **k):
    time.sleep(args.slow_start_s)
    return make_sample_fn(*a, **k)

  with mock.patch.object(samples, 'make_sample_fn',
                         slow_make_sample_fn if args.slow_start_s else make_sample_fn):
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
      _save(train.train_and_evaluate(config, args.workdir), args.workdir)

  if args.resume_in:
    if jax.process_index() == 0:
      copy_without_last_checkpoint(args.workdir, args.resume_in, args.steps)
    distributed.barrier('copied')
    sources.clear_cache()  # loaded splits are kept per process; a new run loads its own
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
      _save(train.train_and_evaluate(config, args.resume_in), args.resume_in)

  if args.failing:
    os.makedirs(args.failures_in, exist_ok=True)
  for thing in filter(None, args.failing.split(',')):
    sources.clear_cache()
    with _failing(thing, config, args.failures_in, NUM_EXAMPLES) as (
        failing_config, workdir, num_examples):
      try:
        with tfds.testing.mock_data(num_examples=num_examples):
          train.train_and_evaluate(failing_config, workdir)
      except Exception as e:  # pylint: disable=broad-except
        print(f'{thing} failed: {type(e).__name__}: {e}', flush=True)


if __name__ == '__main__':
  main()
