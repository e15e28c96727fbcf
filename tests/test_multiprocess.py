"""Multi-process training with JAX's distributed runtime: 2 processes x 4 CPU devices on one
machine (local coordinator), against single-process runs; resuming with other process counts."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import multiprocess_worker
from tests.conftest import free_port
from tests.conftest import ROOT
from tests.conftest import run_processes

pytestmark = [pytest.mark.skipif(sys.platform != 'linux', reason='gloo CPU collectives'),
              # One worker of `pytest -n` runs the module: its runs are shared (session-scoped, so
              # that the worker running other modules' tests in between keeps them).
              pytest.mark.xdist_group('multiprocess')]


def _train_here(workdir, steps, num_devices):
  """The worker's run, in this process (8 CPU devices, see conftest): one process x K devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mmali_jax import distributed  # pylint: disable=g-import-not-at-top
  from mmali_jax import train  # pylint: disable=g-import-not-at-top
  config = multiprocess_worker.job_config(steps, num_devices)
  with tfds.testing.mock_data(num_examples=24):
    state = train.train_and_evaluate(config, workdir)
  params = distributed.local({'gen': state.gen_params, 'disc': state.disc_params,
                              'ema': state.ema_params, 'stats': state.disc_stats})
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope='session')
def one_device(tmp_path_factory):
  """The single-process, one-device run of 4 steps that the multi-process runs must reproduce
  (tests/test_train.py checks 8 devices against one, with the same config)."""
  return _train_here(str(tmp_path_factory.mktemp('one')), 4, num_devices=1)


def _launch(workdir, steps, processes, devices, cache, last_slower_s=0, worker_flags=()):
  """Runs the job's processes; -> [(return code, output)] per process. The last one reaches its
  first training step `last_slower_s` seconds later; `worker_flags` go to every process
  (tests/multiprocess_worker.py)."""
  port = free_port()
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  commands = [[sys.executable, os.path.join(ROOT, 'tests', 'multiprocess_worker.py'),
               f'--process_id={k}', f'--num_processes={processes}', f'--port={port}',
               f'--devices={devices}', f'--workdir={workdir}', f'--steps={steps}',
               f'--slow_start_s={last_slower_s if k == processes - 1 else 0}', *worker_flags]
              for k in range(processes)]
  return run_processes(commands, env, 1200)


def _saved_params(workdir, processes):
  """Process 0's final parameters {name: array}, as the worker saved them, after checking that
  every process ended with the same replica and that orbax synchronised through the runtime."""
  for k in range(processes if processes > 1 else 0):
    with open(os.path.join(workdir, f'orbax_barriers_process{k}.txt')) as f:
      assert f.read() == 'runtime'
  with np.load(os.path.join(workdir, 'params_process0.npz')) as f:
    params = dict(f)
  for k in range(1, processes):
    with np.load(os.path.join(workdir, f'params_process{k}.npz')) as f:
      for name, value in f.items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)
  return params


def _assert_same_training(a, b, steps, learning_rate=2e-4):
  """As tests/test_train.py: equal up to the reduction order of float sums (Adam can flip a step
  of at most the learning rate for a weight whose gradient is ~0)."""
  assert sorted(a) == sorted(b)
  diffs = np.concatenate([np.abs(a[k] - b[k]).ravel() for k in a])
  assert diffs.max() <= steps * learning_rate, diffs.max()
  assert np.mean(diffs > 1e-5) < 1e-3, np.mean(diffs > 1e-5)


# What fails in the job's last runs, in order (tests/multiprocess_worker.py --failing).
FAILING = ('config', 'data', 'workdir', 'evaluation', 'samples', 'scalars', 'interrupted')


@pytest.fixture(scope='session')
def job(tmp_path_factory, cache):
  """The module's 2-process x 4-device job. Its two processes make, one after the other:
  - a run of 4 steps in `two`. Process 1 reaches the first step 35 s after process 0: on CPU the
    step's collectives wait only 30 s for the other processes when they are first set up
    (train.py starts them together);
  - a copy of that run stopped after its checkpoint of step 2, resumed to step 4 in
    `resumed_by_2`;
  - one run per thing of FAILING in `failures/<thing>`. Every run's error is caught and printed
    by the worker, so both processes end with status 0.
  One job and not three: every process of a job imports, traces and compiles its programs, and
  on CPU process 1 never finds its programs in the compilation cache (its key holds the
  process's own view of the devices, and JAX writes entries from process 0 only). So the
  processes that resume have trained before: they restore the checkpoint as a restarted job's
  would, with the programs already compiled and the collectives already set up (a fresh
  process's start is what the first run tests).
  The single-process runs the tests compare with are trained after the job, not while it runs:
  the suite is CPU-bound (only process 1's late start leaves a core idle), and by then
  tests/test_train.py has most likely put their programs in the compilation cache.
  -> {'two', 'resumed_by_2', 'failures': their directories, 'out0', 'out1': each process's
  output}."""
  root = tmp_path_factory.mktemp('job')
  dirs = {name: root / name for name in ('two', 'resumed_by_2', 'failures')}
  (code0, out0), (code1, out1) = _launch(
      str(dirs['two']), 4, processes=2, devices=4, cache=cache, last_slower_s=35,
      worker_flags=[f'--resume_in={dirs["resumed_by_2"]}', f'--failing={",".join(FAILING)}',
                    f'--failures_in={dirs["failures"]}'])
  assert code0 == code1 == 0, (out0[-3000:], out1[-3000:])
  return dict(dirs, out0=out0, out1=out1)


@pytest.fixture(scope='session')
def two_processes(job):
  """The job's first run: (its workdir, process 0's final parameters)."""
  return job['two'], _saved_params(job['two'], 2)


def test_the_module_runs_on_one_worker(request):
  """Under `pytest -n 2 --dist loadgroup` (the README's command) the module's group holds: else
  each worker would run the shared multi-process training again (pytest 9.2 broke this)."""
  if not getattr(request.config.option, 'loadgroup', False):
    pytest.skip('not run by pytest-xdist with --dist loadgroup')
  assert request.node.nodeid.endswith('@multiprocess'), request.node.nodeid


def test_two_processes_train_as_one_process(two_processes, one_device):
  workdir, two = two_processes
  _assert_same_training(two, one_device, steps=4)
  # Only process 0 wrote logs, images and config.json.
  files = os.listdir(workdir)
  assert len([f for f in files if f.startswith('events.out.tfevents')]) == 1
  assert 'config.json' in files and 'loss_curves.png' in files
  assert sorted(os.listdir(os.path.join(workdir, 'samples'))) == ['step_0000002.png',
                                                                  'step_0000004.png']
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']


def test_two_process_run_resumes_with_one_or_two_processes(tmp_path, job, two_processes,
                                                           one_device):
  """The 2-process x 4-device run stopped after its checkpoint of step 2, resumed to step 4 by
  two processes (in the job) and by one process on 8 devices (here)."""
  resumed_by_1 = tmp_path / 'resumed_by_1'
  multiprocess_worker.copy_without_last_checkpoint(two_processes[0], resumed_by_1, 4)
  resumed = {1: _train_here(str(resumed_by_1), 4, num_devices=8),
             2: _saved_params(job['resumed_by_2'], 2)}
  for processes, workdir in ((1, resumed_by_1), (2, job['resumed_by_2'])):
    _assert_same_training(resumed[processes], one_device, steps=4)
    # It went on from step 2: a run started afresh would have drawn step 2's samples again.
    assert os.listdir(workdir / 'samples') == ['step_0000004.png']


@pytest.fixture(scope='session')
def failures(job):
  """The job's runs of FAILING: (their directory, process 0's output, process 1's output)."""
  return job['failures'], job['out0'], job['out1']


def _error(out, thing):
  """The error the run of `thing` stopped with, as the worker printed it."""
  lines = [l for l in out.splitlines() if l.startswith(f'{thing} failed: ')]
  assert len(lines) == 1, out[-3000:]
  return lines[0][len(f'{thing} failed: '):]


@pytest.mark.parametrize('thing, message', [
    ('config', 'The processes have different configs (processes [1] differ from process 0). '
               'Start every process with the same command'),
    ('data', 'The processes have different training data (processes [1] differ from process 0). '
             'Give every process the same data'),
])
def test_processes_with_different_configs_or_data_stop_before_training(failures, thing, message):
  workdir, out0, out1 = failures
  for out in (out0, out1):
    assert _error(out, thing).startswith(f'DistributedError: {message}'), out[-3000:]
  assert not os.path.exists(workdir / thing / 'checkpoints')


def test_a_process_failing_alone_stops_every_process_with_its_message(failures):
  """Process 1 cannot use the workdir (on its host a file, here): every process stops before
  training, process 0 quoting process 1's message, instead of waiting for process 1 at the next
  barrier until the runtime's shutdown timeout aborts it with a crash report."""
  workdir, out0, out1 = failures
  message = f'--workdir={workdir / "workdir_a_file"} is a file, not a directory; pass a directory'
  assert f'Process 1 stopped before training: {message}' in _error(out0, 'workdir'), out0[-3000:]
  assert message in _error(out1, 'workdir') and 'Process 1 stopped' not in out1, out1[-3000:]
  assert not os.path.exists(workdir / 'workdir')


@pytest.mark.parametrize('thing, message', [
    ('evaluation', 'Process 0 stopped while evaluating step 2: The evaluation of step 2 failed.'),
    ('samples', 'Process 0 stopped while writing the logs and samples of step 2: OSError: No '
                'space left on the device to write step_0000002.png.'),
    ('scalars', 'Process 0 stopped while writing the logs and samples of step 2: OSError: No '
                'space left on the device to write the losses of step 2.'),
])
def test_what_process_0_alone_does_stops_every_process_when_it_fails(failures, thing, message):
  """Process 0 alone evaluates, draws the sample grids and writes the logs; the others wait for it
  at evaluations and checkpoints, not in the next training step's collectives, and stop with its
  error when it fails there. An error writing the logs stops every process at the next checkpoint,
  once it is written; here the losses of step 2, written in the background by clu, fail while that
  step's checkpoint is written, and stop the run there."""
  workdir, out0, out1 = failures
  assert 'Process 0 stopped' not in out0, out0[-3000:]
  own = message.split(': ', 1)[1]  # process 0 raises its own error
  own = own if own.startswith('OSError') else f'ConfigError: {own}'
  assert _error(out0, thing) == own, out0[-3000:]
  assert _error(out1, thing) == f'DistributedError: {message}', out1[-3000:]
  # The step's checkpoint, then nothing.
  assert os.listdir(workdir / thing / 'checkpoints') == ['2']


def test_ctrl_c_on_one_process_stops_every_process_at_one_checkpointed_step(failures):
  """Ctrl-C on process 1 alone, after its first step of 12: through JAX's preemption sync point
  both processes stop after the same step, once its checkpoint is written, as after a SIGTERM.
  Raising KeyboardInterrupt there, process 1 would leave process 0 waiting in the next step's
  collectives until the runtime aborted it."""
  workdir, out0, out1 = failures
  stopped = []
  for out, reason in ((out0, 'a preemption notice (SIGTERM, or Ctrl-C on one of the processes)'),
                      (out1, 'Ctrl-C (SIGINT)')):
    error = _error(out, 'interrupted')
    assert error.startswith(f'Preempted: Stopped by {reason} at step '), out[-3000:]
    step, of = error.split(' at step ')[1].split(', ')[0].split(' of ')
    assert of == '12', error
    stopped.append(int(step))
  assert stopped[0] == stopped[1] and 2 <= stopped[0] < 12, stopped
  checkpoints = sorted(int(s) for s in os.listdir(workdir / 'interrupted' / 'checkpoints'))
  assert checkpoints[-1] == stopped[0], checkpoints


@pytest.mark.parametrize('presses', [1, 2])
def test_ctrl_c_on_the_local_launcher_stops_every_process(tmp_path, presses):
  """launch/local_multiprocess.sh starts the processes in the background, where Ctrl-C does not
  reach them: it sends each a SIGTERM and exits with their status 75; a second Ctrl-C kills them.
  Here the processes are stand-ins that record the signal (PYTHON names the interpreter the
  launcher runs); for two presses they take a SIGTERM and go on, as while writing a checkpoint."""
  log = tmp_path / 'log'
  stand_in = tmp_path / 'python'
  on_sigterm = 'exit 75' if presses == 1 else ':'
  stand_in.write_text('#!/usr/bin/env bash\n'
                      'if [ "$1" = -c ]; then exec "$REAL_PYTHON" "$@"; fi\n'
                      f'trap \'echo "SIGTERM to ${{*: -1}}" >> "$LOG"; {on_sigterm}\' TERM\n'
                      'echo "started ${*: -1}" >> "$LOG"\n'
                      'while true; do sleep 0.05; done\n')
  stand_in.chmod(0o755)
  env = dict(os.environ, PYTHON=str(stand_in), REAL_PYTHON=sys.executable, LOG=str(log))

  def _count(what):
    return log.read_text().count(what) if log.exists() else 0

  def _wait_for(what):
    deadline = time.time() + 60
    while time.time() < deadline and _count(what) < 2:
      time.sleep(0.05)

  # Ctrl-C as in a terminal, even where this test runs with it ignored (it would be in the
  # launcher too, which could not trap it).
  as_in_a_terminal = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                      'os.execvp("bash", ["bash", *sys.argv[1:]])')
  launcher = subprocess.Popen(
      [sys.executable, '-c', as_in_a_terminal, 'launch/local_multiprocess.sh', '2', '1',
       'configs/multimnist.py', str(tmp_path / 'run'), '--config.seed=1'], cwd=ROOT, env=env,
      start_new_session=True, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for('started')
    os.killpg(launcher.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    if presses == 2:
      _wait_for('SIGTERM')
      os.killpg(launcher.pid, signal.SIGINT)
    _, stderr = launcher.communicate(timeout=60)
  finally:
    try:  # the stand-ins too, had they been left behind
      os.killpg(launcher.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  assert launcher.returncode == (75 if presses == 1 else 128 + signal.SIGKILL), stderr
  assert stderr.count('Stopping: every process writes a checkpoint of the current step') == 1
  assert sorted(log.read_text().splitlines()) == ['SIGTERM to --config.seed=1'] * 2 + [
      'started --config.seed=1'] * 2


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
  """Process 1 of a job whose process 0 never starts: a message, no traceback, within seconds."""
  result = subprocess.run(
      [sys.executable, '-m', 'mmali_jax.main', '--config=configs/multimnist.py',
       f'--workdir={tmp_path / "run"}', f'--coordinator_address=localhost:{free_port()}',
       '--num_processes=2', '--process_id=1', '--distributed_timeout=5'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert 'Could not start the distributed runtime with localhost:' in result.stderr
  assert 'within 5 s' in result.stderr and 'firewall' in result.stderr
  assert not os.path.exists(tmp_path / 'run')
