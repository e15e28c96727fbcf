"""Stopping cleanly when the cluster preempts the job (SIGTERM, as SLURM and Cloud TPU send) or
the user presses Ctrl-C (SIGINT).

The training loop asks `StopRequest.requested(dispatch)` after every call into the device, with
the number of calls made before it (0, 1, 2, ...: JAX's sync point is the highest number any
process reported, plus one, so the numbers must go up by one whatever number of steps a call
runs); once it says yes, the loop writes a checkpoint of that step, waits until it is on disk
and raises `Preempted`, which the command line turns into a message and exit status
`EXIT_PREEMPTED`.
Re-running the same command resumes from that checkpoint.

Single process: a SIGTERM or SIGINT handler sets a flag (a second SIGTERM while the checkpoint is
written changes nothing; a second Ctrl-C raises KeyboardInterrupt as usual, for a user who will
not wait). Several processes: JAX's preemption sync point, so that every process stops at the
same step even though only some of them received the signal; there Ctrl-C is turned into a
SIGTERM to the process itself. A process that raised KeyboardInterrupt alone would leave the
others waiting at their next collective until the runtime's timeout aborts them (minutes, with a
crash report).
"""
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, run the same command again
CTRL_C = 'Ctrl-C (SIGINT)'


class Preempted(Exception):
  """The run stopped on SIGTERM or Ctrl-C after writing a checkpoint of the current step."""


class StopRequest:
  """Whether training should stop now, after a SIGTERM or Ctrl-C (see the module docstring)."""

  def __init__(self):
    self.reason = None
    self._interrupted = False
    self._previous = {}  # signal -> its handler before this one
    self._multiprocess = jax.process_count() > 1
    if threading.current_thread() is threading.main_thread():
      if not self._multiprocess:  # else JAX's preemption notifier takes SIGTERM
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      # Not where Ctrl-C is ignored (a background job of a script: its launcher forwards it).
      if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._interrupt)

  def _handle(self, signum, frame):
    del frame
    self.reason = self.reason or signal.Signals(signum).name

  def _interrupt(self, signum, frame):
    del signum, frame
    signal.signal(signal.SIGINT, self._previous[signal.SIGINT])  # the next one stops at once
    self._interrupted = True
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier takes it to every process
    else:
      self.reason = self.reason or CTRL_C
    try:  # to the file descriptor: print could re-enter a write the signal interrupted
      os.write(2, (f'{CTRL_C}: stopping after a checkpoint of the current step'
                   f'{" on every process" if self._multiprocess else ""}; Ctrl-C again stops '
                   'at once, losing the steps since the last checkpoint.\n').encode())
    except OSError:  # stderr gone (a pipe whose reader Ctrl-C stopped too): stop all the same
      pass

  def requested(self, dispatch):
    """dispatch: this call's number, counted from 0 in this process, the same on all."""
    if self._multiprocess:
      if multihost_utils.reached_preemption_sync_point(dispatch):
        self.reason = (CTRL_C if self._interrupted else
                       'a preemption notice (SIGTERM, or Ctrl-C on one of the processes)')
    return self.reason is not None

  def close(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
