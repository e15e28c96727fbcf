"""Stopping cleanly when the cluster preempts the job (SIGTERM, as SLURM and Cloud TPU send).

The training loop asks `StopRequest.requested(dispatch)` after every call into the device, with
the number of calls made before it (0, 1, 2, ...: JAX's sync point is the highest number any
process reported, plus one, so the numbers must go up by one whatever number of steps a call
runs); once it says yes, the loop writes a checkpoint of that step, waits until it is on disk
and raises `Preempted`, which the command line turns into a message and exit status
`EXIT_PREEMPTED`.
Re-running the same command resumes from that checkpoint.

Single process: a SIGTERM handler sets a flag (a second SIGTERM while the checkpoint is written
changes nothing). Several processes: JAX's preemption sync point, so that every process stops at
the same step even though only some of them received the signal.
"""
import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, run the same command again


class Preempted(Exception):
  """The run stopped on SIGTERM after writing a checkpoint of the current step."""


class StopRequest:
  """Whether training should stop now, after a SIGTERM (see the module docstring)."""

  def __init__(self):
    self.reason = None
    self._previous = None
    self._multiprocess = jax.process_count() > 1
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.reason = signal.Signals(signum).name

  def requested(self, dispatch):
    """dispatch: this call's number, counted from 0 in this process, the same on all."""
    if self._multiprocess:
      if multihost_utils.reached_preemption_sync_point(dispatch):
        self.reason = 'a preemption notice (SIGTERM)'
    return self.reason is not None

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
