"""The run's writer: an error writing the logs is raised at once by a single process, and kept by
the processes of a multi-process job until they meet (mmali_jax/writers.py)."""
import pytest

from mmali_jax import writers


class _DiskFullAtStep1:
  def __init__(self):
    self.written = []

  def write_scalars(self, step, scalars):
    if step == 1:
      raise OSError('No space left on the device.')
    self.written.append((step, dict(scalars)))

  def flush(self):
    self.written.append('flush')


def test_a_single_process_raises_a_write_error_at_once():
  inner = _DiskFullAtStep1()
  writer = writers.DeferringWriter(inner, defer=False)
  writer.write_scalars(0, {'d/total': 1.0})
  with pytest.raises(OSError, match='No space left'):
    writer.write_scalars(1, {'d/total': 2.0})
  writer.write_scalars(2, {'d/total': 3.0})
  writer.raise_deferred()  # nothing kept
  assert inner.written == [(0, {'d/total': 1.0}), (2, {'d/total': 3.0})]


def test_several_processes_keep_the_first_write_error_and_write_nothing_after_it():
  inner = _DiskFullAtStep1()
  writer = writers.DeferringWriter(inner, defer=True)
  writer.write_scalars(0, {'d/total': 1.0})
  writer.raise_deferred()  # nothing kept yet
  writer.write_scalars(1, {'d/total': 2.0})  # kept, not raised
  writer.write_scalars(2, {'d/total': 3.0})
  writer.flush()
  assert inner.written == [(0, {'d/total': 1.0})]
  with pytest.raises(OSError, match='No space left'):
    writer.raise_deferred()


def test_an_error_of_clu_s_background_writer_is_kept_as_what_went_wrong():
  """clu writes in the background and raises a failure at a later call, wrapped twice in its
  AsyncError ("Consider re-running the code without AsyncWriter"): the error kept, and raised to
  every process, is the one underneath."""
  inner = _DiskFullAtStep1()
  writer = writers.DeferringWriter(
      writers.metric_writers.AsyncMultiWriter([writers.metric_writers.MultiWriter([inner])]),
      defer=True)
  writer.write_scalars(1, {'d/total': 2.0})  # fails in the background
  writer.flush()  # raises it here, kept
  writer.write_scalars(2, {'d/total': 3.0})
  writer.flush()
  assert [w for w in inner.written if w != 'flush'] == []  # step 2 not written either
  with pytest.raises(OSError, match='^No space left on the device.$'):
    writer.raise_deferred()
