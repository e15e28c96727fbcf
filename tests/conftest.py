"""Test setup: 8 virtual CPU devices (for the data-parallel equivalence tests) and small configs."""
import contextlib
import gc
import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

# Must happen before JAX initialises its backends; a process that chose its own device count
# (tests/multiprocess_worker.py) keeps it.
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
# Most of the suite's time is XLA compiling programs that then run a few steps at batch 8, and
# much of that is LLVM optimising the generated CPU code. Without LLVM's optimisations the suite
# ran in 10.3 instead of 15.0 min (2-core AMD EPYC, same tests passed). XLA's own passes (fusion,
# sharding, what the tests compare) are the same; every comparison is between programs compiled
# alike, and the commands the tests run in subprocesses inherit the flag.
if 'xla_backend_optimization_level' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
# XLA:CPU's older elemental emitters generate the fused kernels with less CPU than its MLIR fusion
# emitters: compiling the tests' MultiMNIST step took 12-24% less CPU time (4 alternated pairs,
# AMD EPYC; docs/performance.md "The test suite's time"), and the suite is CPU-bound. Every
# comparison is still between programs compiled alike.
if 'xla_cpu_use_fusion_emitters' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' --xla_cpu_use_fusion_emitters=false'
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tempfile  # pylint: disable=g-import-not-at-top

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# One persistent compilation cache for the session: many tests train the same small configs, and
# programs that differ only in their inputs' values compile once. Most of the suite's time is XLA
# compiling, so pytest-xdist's workers (`-n 2`) share it: they inherit the environment of the
# process that loaded this file first. (An entry read while another worker writes it fails to
# decompress, and JAX compiles it again with a warning.)
if not jax.config.jax_compilation_cache_dir:
  if 'MMALI_TEST_XLA_CACHE' not in os.environ:
    os.environ['MMALI_TEST_XLA_CACHE'] = tempfile.mkdtemp(prefix='mmali_test_xla_')
  jax.config.update('jax_compilation_cache_dir', os.environ['MMALI_TEST_XLA_CACHE'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

# Python's cyclic GC took about 6% of the CPU of tests/test_power_iterations.py and
# tests/test_train.py, most of it full collections of a heap that grows with every traced program.
# Collecting the youngest objects every 10,000 allocations instead of 700 halved the GC's time
# there (docs/performance.md, "The test suite's time").
gc.set_threshold(10000, 10, 10)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_on_one_device(script, *args):
  """`python -c script args` in a process with one CPU device (another machine than the
  8-device test process); fails the test with its stderr if it fails."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, '-c', script, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def free_port():
  """A TCP port on localhost that nothing listens on now (for a job's coordinator)."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_processes(commands, env, timeout_s):
  """Starts the processes of a job and waits for them (all are killed on a timeout or an
  error); -> [(return code, output)] per process. The output goes to files, not pipes: a
  process blocked on a full pipe that is not being read would hold up the others at their next
  barrier."""
  logs = [tempfile.TemporaryFile('w+') for _ in commands]  # pylint: disable=consider-using-with
  jobs = [subprocess.Popen(c, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
          for c, log in zip(commands, logs)]
  try:
    for job in jobs:
      job.wait(timeout=timeout_s)
  finally:
    for job in jobs:
      job.kill()
  results = []
  for job, log in zip(jobs, logs):
    log.seek(0)
    results.append((job.returncode, log.read()))
    log.close()
  return results


@contextlib.contextmanager
def ctrl_c(dispatch, presses=1, after_the_check=False, then_wait_s=0):
  """Within the block, Ctrl-C `presses` times when the training loop asks whether to stop after
  its call number `dispatch` (None: never), before it asks or just after, then `then_wait_s`
  seconds. SIGINT is handled as in a terminal (pytest's workers, or a process started in the
  background, may ignore it), and put back after."""
  from mmali_jax import preemption  # pylint: disable=g-import-not-at-top
  requested = preemption.StopRequest.requested

  def press():
    for _ in range(presses):
      os.kill(os.getpid(), signal.SIGINT)
    time.sleep(then_wait_s)

  def pressing(self, i):
    if i == dispatch and not after_the_check:
      press()
    asked = requested(self, i)
    if i == dispatch and after_the_check:
      press()
    return asked

  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with mock.patch.object(preemption.StopRequest, 'requested', pressing):
      yield
  finally:
    signal.signal(signal.SIGINT, previous)


def load_config(name, arg=None):
  """get_config of configs/<name>.py, as `--config=configs/<name>.py:<arg>` would."""
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def small_config(name, arg=None, **overrides):
  """The real config with a short schedule and tiny batches: same networks and losses."""
  config = load_config(name, arg)
  config.batch_size = 8
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.num_sample_images = 4
  config.data.multiplication = 2
  config.num_devices = 1  # compiles faster; test_train checks 8 devices against 1 explicitly
  config.eval.every_steps = 0  # no evaluation inside training unless a test asks for it
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value
  return config


def data_parallel_config(**overrides):
  """small_config's MultiMNIST M=2 for the tests that compare device and process counts (8 == 1
  device, the multi-process job): 2 examples per device on 8 devices, and a decaying EMA from
  step 1 so that it is compared too. One config, so those tests share its compiled programs."""
  return small_config('multimnist', 'modalities=2', batch_size=16,
                      **{'ema.start_step': 1, 'ema.decay': 0.9, **overrides})


# small_config's schedule, sizes and device count as command-line flags, for tests that run a
# command. One device: the 8 virtual CPU devices each run the whole optimizer update on replicated
# weights, which made a step of these runs 8 times slower (0.92 s against 0.12 s).
SMALL_COMMAND_FLAGS = ('--config.batch_size=8', '--config.num_devices=1',
                       '--config.data.multiplication=2', '--config.num_sample_images=4',
                       '--config.eval.every_steps=0', '--config.log_every_steps=1',
                       '--config.checkpoint_every_steps=2')


@pytest.fixture(scope='session')
def cache():
  """The session's compilation cache, for the commands tests run in subprocesses: the same
  programs compile once."""
  return jax.config.jax_compilation_cache_dir


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  """Tests never download: a missing dataset behaves as on a machine without internet (tests of
  the online path patch this again)."""
  from mmali_jax.data import sources  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sources, '_online', lambda: False)


@pytest.fixture(autouse=True)
def _fresh_data_cache():
  """Loaded splits are cached per process; mocked data must not leak between tests."""
  from mmali_jax.data import sources  # pylint: disable=g-import-not-at-top
  sources.clear_cache()
  yield
  sources.clear_cache()
