"""How a multi-process job is joined: which cluster is detected and which GPUs each process drives
(the runtime itself is exercised by tests/test_multiprocess.py)."""
import os
import sys

import jax
import pytest

from mmali_jax import distributed
from tests.conftest import free_port
from tests.conftest import run_processes


@pytest.mark.parametrize('environ,expected', [
    # One task per node with the node's 8 GPUs: all of them (JAX alone would give [0]).
    ({'SLURM_NTASKS': '2', 'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_ON_NODE': '8',
      'SLURM_LOCALID': '0'}, list(range(8))),
    ({'SLURM_NTASKS': '2', 'SLURM_NNODES': '2', 'CUDA_VISIBLE_DEVICES': '0,1,2,3'}, [0, 1, 2, 3]),
    # --gpus-per-task=1: each task sees one GPU, numbered 0 (JAX alone: SLURM_LOCALID, up to 7).
    ({'SLURM_NTASKS': '16', 'SLURM_JOB_NUM_NODES': '2', 'CUDA_VISIBLE_DEVICES': '5',
      'SLURM_LOCALID': '5'}, [0]),
    # One task per GPU, all visible: JAX's own choice (GPU SLURM_LOCALID) is right.
    ({'SLURM_NTASKS': '16', 'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_ON_NODE': '8',
      'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7', 'SLURM_LOCALID': '5'}, None),
    ({'SLURM_STEP_TASKS_PER_NODE': '8(x2)', 'SLURM_NODEID': '1', 'SLURM_GPUS_ON_NODE': '8'},
     None),
    # Two tasks of 4 GPUs each on an 8-GPU node (--gpus-per-task=4): each drives its four.
    ({'SLURM_STEP_TASKS_PER_NODE': '2(x2)', 'SLURM_GPUS_ON_NODE': '8',
      'CUDA_VISIBLE_DEVICES': '4,5,6,7', 'SLURM_LOCALID': '1'}, [0, 1, 2, 3]),
    # A step of 2 tasks on one node of a 2-node job (srun -N1 -n2): two tasks on this node, so
    # each keeps JAX's one GPU rather than both taking all eight.
    ({'SLURM_NTASKS': '2', 'SLURM_JOB_NUM_NODES': '2', 'SLURM_STEP_NUM_NODES': '1',
      'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7', 'SLURM_GPUS_ON_NODE': '8'}, None),
    # Uneven layout: node 2 of "8(x2),1" runs one task, which drives every GPU it sees.
    ({'SLURM_STEP_TASKS_PER_NODE': '8(x2),1', 'SLURM_NODEID': '2', 'SLURM_GPUS_ON_NODE': '8'},
     list(range(8))),
    # The user's choice (JAX_LOCAL_DEVICE_IDS) and CPU jobs: left to JAX.
    ({'SLURM_NTASKS': '2', 'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_ON_NODE': '8',
      'JAX_LOCAL_DEVICE_IDS': '0,1'}, None),
    ({'SLURM_NTASKS': '4', 'SLURM_JOB_NUM_NODES': '2'}, None),
])
def test_each_slurm_task_drives_the_gpus_it_is_given(environ, expected):
  assert distributed.slurm_local_device_ids(environ) == expected


def _joined(monkeypatch, environ, **kwargs):
  """The arguments initialize passes to jax.distributed.initialize (None: not called)."""
  for key in ('SLURM_NTASKS', 'SLURM_JOB_ID', 'SLURM_JOB_NUM_NODES', 'SLURM_GPUS_ON_NODE',
              'SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE', 'SLURM_STEP_NUM_NODES',
              'SLURM_NNODES', 'SLURM_NODEID', 'JAX_LOCAL_DEVICE_IDS', 'CUDA_VISIBLE_DEVICES',
              'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(key, raising=False)
  for key, value in environ.items():
    monkeypatch.setenv(key, value)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **a: calls.append(a))
  monkeypatch.setattr(distributed, 'use_runtime_barriers_in_orbax', lambda: None)
  distributed.initialize(**kwargs)
  return calls[0] if calls else None


def test_the_runtime_is_started_for_detected_or_requested_jobs_only(monkeypatch):
  assert _joined(monkeypatch, {}) is None  # one process: nothing to join
  slurm = _joined(monkeypatch, {'SLURM_NTASKS': '2', 'SLURM_JOB_ID': '7',
                                'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_ON_NODE': '8'})
  assert slurm['coordinator_address'] is None and slurm['local_device_ids'] == list(range(8))
  # --auto_distributed (a Cloud TPU VM slice): JAX's own detection, no arguments of ours.
  auto = _joined(monkeypatch, {}, auto=True)
  assert auto is not None and auto['coordinator_address'] is None
  assert auto['num_processes'] is None and auto['local_device_ids'] is None
  explicit = _joined(monkeypatch, {}, coordinator_address='localhost:1234', num_processes=2,
                     process_id=0)
  assert explicit['num_processes'] == 2 and explicit['local_device_ids'] is None


_STOPPING_TOGETHER = '''
import sys
import jax
jax.distributed.initialize(f'localhost:{sys.argv[2]}', 2, int(sys.argv[1]))
from mmali_jax import config_checks, distributed
failures = {'in stage a': (), 'in stage b': (0,), 'in stage c': (0, 1), 'in stage d': (1,),
            'in stage e': (1,)}
for stage, failing in failures.items():
  try:
    with distributed.stopping_together(stage, (config_checks.ConfigError,)):
      if jax.process_index() in failing:
        if stage == 'in stage d':
          raise KeyError('a bug')
        # A path with undecodable bytes, as os.fsdecode gives it.
        where = ' at /data/\\udcff' if stage == 'in stage e' else ''
        raise config_checks.ConfigError(f'process {jax.process_index()} cannot go on{where}')
    print(stage, 'passed', flush=True)
  except Exception as err:
    print(stage, type(err).__name__, ascii(str(err)), flush=True)
'''


@pytest.mark.skipif(sys.platform != 'linux', reason='gloo CPU collectives')
def test_an_error_on_some_processes_stops_every_process_with_its_message():
  """Two processes (JAX's runtime on this machine) through blocks that fail on none, one or both
  of them: each failing process raises its own error, the others the first one's message."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  results = run_processes([[sys.executable, '-c', _STOPPING_TOGETHER, str(k), str(port)]
                           for k in (0, 1)], env, 300)
  for returncode, out in results:
    assert returncode == 0, out[-3000:]
  outputs = [out for _, out in results]
  lines = [[l for l in out.splitlines() if l.startswith('in stage')] for out in outputs]
  assert lines[0] == [
      'in stage a passed',
      "in stage b ConfigError 'process 0 cannot go on'",
      "in stage c ConfigError 'process 0 cannot go on'",
      'in stage d DistributedError "Process 1 stopped in stage d: KeyError: \'a bug\'"',
      "in stage e DistributedError 'Process 1 stopped in stage e: process 1 cannot go on at "
      "/data/\\\\udcff'"]
  assert lines[1] == [
      'in stage a passed',
      "in stage b DistributedError 'Process 0 stopped in stage b: process 0 cannot go on'",
      "in stage c ConfigError 'process 1 cannot go on'",
      'in stage d KeyError "\'a bug\'"',
      "in stage e ConfigError 'process 1 cannot go on at /data/\\udcff'"]
