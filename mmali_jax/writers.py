"""Where a run's metrics go: clu's writers and progress report, with or without TensorFlow.

clu imports TensorFlow for one of its writers only, the TensorBoard summary writer (and through it
TensorBoard's hparams plugin, which imports TensorFlow too). TensorFlow is optional here: a GPU
image with JAX alone can train on datasets prepared as ArrayRecord (README "Data"). Where it is not
installed, that one clu module is replaced, before clu is imported, by `EventFileWriter` below,
which writes the scalars and images to TensorBoard event files with TensorBoard's own TensorFlow-free
writer (the one PyTorch uses), so loss curves, TensorBoard and clu's progress report work as usual.
"""
import io
import os
import sys
import time
import types

from absl import logging
import numpy as np
from PIL import Image

from mmali_jax.data import sources

_SUMMARY_WRITER = 'clu.metric_writers.summary_writer'


def write_atomically(path, text):
  """Writes `text` to `path` through a temporary file beside it: a run stopped while writing
  leaves the previous file, never a truncated one."""
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


class EventFileWriter:
  """clu's SummaryWriter without TensorFlow: scalars and images to an event file in `logdir`.

  The run's hyper-parameters are in its config.json; the other kinds of summary, which this
  project does not write, are logged as skipped."""

  def __init__(self, logdir):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import event_file_writer  # pylint: disable=g-import-not-at-top
    self._event, self._summary = event_pb2.Event, summary_pb2.Summary
    self._writer = event_file_writer.EventFileWriter(logdir)

  def _add(self, step, values):
    self._writer.add_event(self._event(wall_time=time.time(), step=int(step),
                                       summary=self._summary(value=values)))

  def write_scalars(self, step, scalars):
    self._add(step, [self._summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def write_images(self, step, images):
    values = []
    for tag, batch in images.items():
      for k, image in enumerate(np.asarray(batch)):  # [N, H, W, C], uint8 or floats in [0, 1]
        if image.dtype != np.uint8:
          image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(png, 'PNG')
        values.append(self._summary.Value(
            tag=tag if len(batch) == 1 else f'{tag}/{k}',
            image=self._summary.Image(height=image.shape[0], width=image.shape[1],
                                      colorspace=image.shape[2],
                                      encoded_image_string=png.getvalue())))
    self._add(step, values)

  def _skipped(self, kind):
    logging.log_first_n(logging.INFO, 'No TensorFlow: %s are not written to TensorBoard.', 1,
                        kind)

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata
    self._skipped('summaries')

  def write_videos(self, step, videos):
    del step, videos
    self._skipped('videos')

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate
    self._skipped('audios')

  def write_texts(self, step, texts):
    del step, texts
    self._skipped('texts')

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets
    self._skipped('histograms')

  def write_hparams(self, hparams):
    del hparams  # config.json holds them

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


if not sources.tensorflow_installed() and _SUMMARY_WRITER not in sys.modules:
  _stand_in = types.ModuleType(_SUMMARY_WRITER)
  _stand_in.SummaryWriter = EventFileWriter
  sys.modules[_SUMMARY_WRITER] = _stand_in

# pylint: disable=g-import-not-at-top,wrong-import-position
from clu import asynclib
from clu import metric_writers
from clu import periodic_actions
# pylint: enable=g-import-not-at-top,wrong-import-position


def create(workdir, main_process):
  """The run's writer: log and TensorBoard event files on process 0, log only on the others."""
  return metric_writers.create_default_writer(workdir, just_logging=not main_process,
                                              asynchronous=True)


class DeferringWriter:
  """`writer`, whose first error, with `defer`, is kept instead of raised until
  `raise_deferred()`; after it, nothing more is written.

  For multi-process jobs, where process 0 alone writes the logs: raised at once, an error at a
  logging step would stop it while the other processes go on into the next training step and
  wait there for it until the runtime aborts them. Kept, it stops every process at the next point
  where they meet anyway (the next checkpoint), after that checkpoint is written. A single
  process raises it at once. clu writes in the background and raises what failed there at a
  later call or `flush()`, wrapped twice in its AsyncError: the error kept is the one underneath,
  whose message says what went wrong."""

  _METHODS = ('write_scalars', 'write_images', 'write_texts', 'write_histograms',
              'write_summaries', 'write_hparams', 'write_videos', 'write_audios', 'flush',
              'close')

  def __init__(self, writer, defer):
    self._writer = writer
    self._defer = defer
    self._error = None

  def __getattr__(self, name):
    if name not in self._METHODS:
      raise AttributeError(name)
    method = getattr(self._writer, name)

    def guarded(*args, **kwargs):
      if self._error is not None:
        return None
      try:
        return method(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        if not self._defer:
          raise
        while isinstance(e, asynclib.AsyncError) and e.__cause__ is not None:
          e = e.__cause__
        self._error = e
        logging.error('Writing the logs failed; training stops at the next checkpoint.',
                      exc_info=e)
        return None

    return guarded

  def raise_deferred(self):
    if self._error is not None:
      raise self._error


__all__ = ['create', 'DeferringWriter', 'metric_writers', 'periodic_actions']
