"""Multi-process training on JAX's own distributed runtime (`jax.distributed`).

A job is one process per host (or per GPU); every process runs the same command. The runtime is
initialised from explicit coordinator flags, or detected from the environment on SLURM and on
Cloud TPU VM slices (JAX's own cluster detection); otherwise the run is single-process and nothing
is initialised. After that, `jax.devices()` lists every device of the job, the mesh spans them all,
and arrays are global `jax.Array`s: no communication code of ours.

Helpers for global arrays: `replicate` puts the same host value on every device of a mesh (each
process passes its own, identical copy), `local` reads a replicated array back on this process.
"""
import contextlib
import hashlib
import itertools
import os
import socket
import time

from absl import flags
from absl import logging
import jax
import numpy as np
# Defines the absl flag set below (`experimental_orbax_use_distributed_barrier`).
from orbax.checkpoint._src.multihost import multihost as orbax_multihost

# Orbax's barriers between processes default to an XLA collective (a psum over every device).
# Its asynchronous saves run them on a background thread while the training step runs its own
# collectives on the main thread, and the two can start in different orders on different
# processes: a deadlock (seen with 2 processes x 4 CPU devices, both hung in the step after a
# save). The distributed runtime's own barrier (the coordination service) cannot interleave so.
_ORBAX_BARRIER_FLAG = 'experimental_orbax_use_distributed_barrier'


class DistributedError(RuntimeError):
  """The distributed runtime could not start, or the processes do not agree."""


def _detected_cluster(auto=False):
  """'SLURM' or 'Cloud TPU' when launched as a multi-process job there; with `auto`, whatever
  JAX's own detection finds (a Cloud TPU VM slice finds its workers through the VM's metadata
  server, which only JAX asks); else None."""
  if int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in os.environ:
    return 'SLURM'
  if len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1:
    return 'Cloud TPU'
  if auto:
    return 'JAX-detected cluster'
  return None


def _tasks_on_this_node(environ):
  """This node's number of tasks in the SLURM job step ("8(x2),4": 8 on nodes 0-1, 4 on 2)."""
  layout = environ.get('SLURM_STEP_TASKS_PER_NODE') or environ.get('SLURM_TASKS_PER_NODE')
  if layout:
    counts = []
    for part in layout.split(','):
      number, _, repeat = part.partition('(x')
      counts += [int(number)] * int(repeat.rstrip(')') or 1)
    node = int(environ.get('SLURM_NODEID', '0'))
    return counts[node] if node < len(counts) else counts[-1]
  nodes = int(environ.get('SLURM_STEP_NUM_NODES') or environ.get('SLURM_NNODES') or
              environ.get('SLURM_JOB_NUM_NODES') or 1)
  return max(1, int(environ.get('SLURM_NTASKS', '1')) // max(nodes, 1))


def slurm_local_device_ids(environ):
  """The GPUs this SLURM task drives, as jax.distributed.initialize's `local_device_ids`.

  JAX's own SLURM detection gives each task only the GPU numbered SLURM_LOCALID: right when every
  task of a node sees all of the node's GPUs, at least one per task (--ntasks-per-node=G
  --gpus-per-node=G), and then None keeps JAX's choice. Otherwise each task drives all the GPUs
  it sees: one task per node (--ntasks-per-node=1 --gpus-per-node=G), or GPUs bound to tasks
  (--gpus-per-task=K, where every task numbers its own from 0). None also when there are no GPUs
  or JAX_LOCAL_DEVICE_IDS chooses them."""
  if environ.get('JAX_LOCAL_DEVICE_IDS'):
    return None
  visible = environ.get('CUDA_VISIBLE_DEVICES')
  on_node = int(environ.get('SLURM_GPUS_ON_NODE', '0') or 0)
  seen = len([d for d in visible.split(',') if d.strip()]) if visible is not None else on_node
  if seen < 1:
    return None
  tasks = _tasks_on_this_node(environ)
  if 1 < tasks <= seen and (not on_node or seen == on_node):
    return None
  return list(range(seen))


def initialize(coordinator_address=None, num_processes=None, process_id=None, timeout_s=300,
               auto=False):
  """Starts jax.distributed for a multi-process job; single-process runs need nothing.

  Explicit arguments win; otherwise a SLURM job with several tasks, or a Cloud TPU VM slice with
  several workers, is detected; `auto` leaves the detection to JAX (jax.distributed.initialize()
  without arguments; launch/tpu_vm.sh). Returns the number of processes."""
  explicit = coordinator_address is not None or num_processes is not None
  cluster = None if explicit else _detected_cluster(auto)
  if not explicit and cluster is None:
    return 1
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise DistributedError('Pass all of --coordinator_address, --num_processes and --process_id '
                           '(or none, to run single-process or let SLURM / Cloud TPU set them).')
  hint = ('Check that process 0 runs and listens on that address and port, that the port is '
          'reachable from this host (firewall), and that every process was given the same '
          '--num_processes and a distinct --process_id.')
  if coordinator_address is not None and process_id != 0:
    # JAX aborts the whole process when it cannot register with the coordinator; find out first.
    _wait_for_coordinator(coordinator_address, timeout_s, hint)
  logging.info('Joining the job at %s; waiting up to %d s for all processes. If this stops with '
               'DEADLINE_EXCEEDED: %s', coordinator_address or f'the {cluster} coordinator',
               timeout_s, hint)
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=(slurm_local_device_ids(os.environ)
                                                 if cluster == 'SLURM' else None),
                               initialization_timeout=int(timeout_s))
  except Exception as err:  # pylint: disable=broad-except
    where = coordinator_address or f'the coordinator {cluster} designates'
    raise DistributedError(f'Could not start the distributed runtime with {where} within '
                           f'{timeout_s} s ({type(err).__name__}: {err}). {hint}') from err
  use_runtime_barriers_in_orbax()
  logging.info('Process %d of %d (%s); %d devices in the job, %d here.', jax.process_index(),
               jax.process_count(), cluster or 'explicit coordinator', jax.device_count(),
               jax.local_device_count())
  return jax.process_count()


def use_runtime_barriers_in_orbax():
  """Makes orbax synchronise processes through the distributed runtime, not XLA collectives."""
  flag = flags.FLAGS[_ORBAX_BARRIER_FLAG]
  flag.value = True
  flag.present = 1  # readable also where absl flags are never parsed (library use, tests)


def orbax_uses_runtime_barriers():
  return bool(orbax_multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.value)


def _wait_for_coordinator(address, timeout_s, hint):
  """Waits until a TCP connection to host:port succeeds, or raises DistributedError."""
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
        return
    except (OSError, ValueError) as err:
      if time.monotonic() >= deadline:
        raise DistributedError(f'Could not start the distributed runtime with {address} within '
                               f'{timeout_s} s: the coordinator cannot be reached '
                               f'({type(err).__name__}: {err}). {hint}') from None
      time.sleep(0.5)


def is_main_process():
  """True on the process that writes logs, images, reports and config.json."""
  return jax.process_index() == 0


def replicate(tree, sharding):
  """The same host value (identical on every process) on every device of `sharding`."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def local(tree):
  """Host copies of replicated arrays, readable on every process (also single-process)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def barrier(name, timeout_s=1800):
  """Waits until every process of the job reaches this point (nothing to do single-process),
  through the distributed runtime (the coordination service), not an XLA collective: on CPU a
  collective's first use waits only 30 s for the other processes."""
  if jax.process_count() > 1:
    orbax_multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))


_exchanges = itertools.count()  # every process makes the same exchanges in the same order


def _exchange(what, text, timeout_s):
  """Every process's `text`, by process index: each writes its own to the distributed runtime's
  key-value store, all meet at a barrier, then each reads them all. No device takes part, so a
  process whose devices have failed can still report."""
  key = f'mmali/{what.replace(" ", "_")}/{next(_exchanges)}'
  client = orbax_multihost.get_jax_distributed_client()
  # A path with undecodable bytes holds lone surrogates, which the runtime cannot send.
  text = text.encode('utf-8', 'backslashreplace').decode('utf-8')
  client.key_value_set(f'{key}/{jax.process_index():06d}', text)
  barrier(key, timeout_s)
  return [value for _, value in sorted(client.key_value_dir_get(f'{key}/'))]


@contextlib.contextmanager
def stopping_together(stage, user_errors=(), timeout_s=1800):
  """Runs the block on every process and stops them all when it raises on any of them.

  Every process must enter the block, and the block must not wait for the other processes (no
  barrier, no collective): they meet at its end. There, the processes whose block raised an
  exception raise it again, and the others raise a DistributedError with the message of the
  failing process of lowest index: 'Process K stopped <stage>: <message>'. Exceptions of the
  `user_errors` types are quoted without their type's name. The processes wait for each other
  up to `timeout_s`. KeyboardInterrupt and SystemExit pass through, and leave the others waiting.

  Without it, a process failing alone (data missing on its host, a workdir it cannot write)
  exits, and the others wait at their next barrier or collective until the runtime's shutdown
  timeout (300 s) aborts them with a crash report that says nothing of the cause."""
  if not jax.distributed.is_initialized():  # single-process: no backend started here
    yield
    return
  error = None
  try:
    yield
  except Exception as err:  # pylint: disable=broad-except
    error = err
  text = ''
  if error is not None:
    text = str(error) if isinstance(error, user_errors) else f'{type(error).__name__}: {error}'
    text = text or type(error).__name__
  try:
    messages = _exchange(f'stopping_together/{stage}', text, timeout_s)
  except Exception as err:  # pylint: disable=broad-except
    if error is not None:
      raise error from None  # this process's own failure is the one to report
    raise DistributedError(f'The processes did not all get to the end of the stage {stage!r} '
                           f'within {timeout_s} s ({type(err).__name__}: {err}); see the other '
                           'processes\' logs.') from err
  if error is not None:
    raise error
  failed = [p for p, message in enumerate(messages) if message]
  if failed:
    others = f' (processes {failed} failed; see their logs)' if len(failed) > 1 else ''
    raise DistributedError(f'Process {failed[0]} stopped {stage}{others}: {messages[failed[0]]}')


def check_same(text, what, fix):
  """Stops every process with one clear error when `text` (a config, a data fingerprint) differs
  between the processes of the job; `what` names it, `fix` says what to do."""
  if not jax.distributed.is_initialized():
    return
  digests = _exchange(f'check_same/{what}', hashlib.sha256(text.encode()).hexdigest(), 1800)
  differing = [p for p, d in enumerate(digests) if d != digests[0]]
  if differing:
    raise DistributedError(f'The processes have different {what} (processes {differing} differ '
                           f'from process 0). {fix}')
