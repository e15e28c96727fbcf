"""Loss curves as a PNG (`draw_loss_curves`), drawn during training from what it logs after the
events of its earlier runs (`LossCurves`, so resumed runs are whole; `read_scalars` reads them).

Training draws the PNG on a thread of its own from the scalars it logs (`LossCurves`): reading
the events back and drawing took 0.8-1.1 s at the start of a run and 3.2-5.0 s at 2,500 logged
steps (the paper's 250,000 steps, logged every 100) on a 2-core CPU, as long as a GPU needs for
thousands of iterations.
"""
import collections
import glob
import os
import threading
import time

from matplotlib import figure
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from mmali_jax import images
from mmali_jax import writers  # clu's writers, importable without TensorFlow


def read_scalars(workdir):
  """{tag: [(step, value)]} of every scalar written to the workdir's event files."""
  series = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    acc = event_accumulator.EventAccumulator(path, size_guidance={'tensors': 0, 'scalars': 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in tags.get('tensors', []):
      for event in acc.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.size == 1:
          series[tag][event.step] = float(value)
    for tag in tags.get('scalars', []):
      for event in acc.Scalars(tag):
        series[tag][event.step] = float(event.value)
  return {tag: sorted(points.items()) for tag, points in series.items()}


def draw_loss_curves(series, path):
  """`series` ({tag: [(step, value)]}) as a PNG, one panel per group: discriminator terms,
  generator terms, totals, steps/s; None if it holds none of them."""
  groups = {
      'discriminator terms': [t for t in series if t.startswith('d/') and t != 'd/total'],
      'generator terms': [t for t in series if t.startswith('g/') and t != 'g/total'],
      'totals': [t for t in ('d/total', 'g/total') if t in series],
      'steps per second': [t for t in ('steps_per_sec',) if t in series],
  }
  groups = {k: v for k, v in groups.items() if v}
  if not groups:
    return None
  cols = min(2, len(groups))
  rows = (len(groups) + cols - 1) // cols
  # A Figure of its own, not pyplot's global state: this may run beside other plotting threads.
  fig = figure.Figure(figsize=(7 * cols, 4.5 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat[len(groups):]:
    ax.axis('off')
  for ax, (title, tags) in zip(axes.flat, groups.items()):
    for tag in sorted(tags):
      steps, values = zip(*series[tag])
      ax.plot(steps, values, label=tag, linewidth=1)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if len(tags) > 1:
      ax.legend(fontsize=6, loc='best')
  fig.tight_layout()
  images.save_figure(fig, path)
  return path


class LossCurves(writers.metric_writers.MetricWriter):
  """A metric writer that keeps `<workdir>/loss_curves.png` up to date without making training
  wait for it: it records the scalars written to it, after those of the run's event files so far
  (a resumed run's curves are whole), and draws them on a thread of its own.

  `update()` starts a redraw unless one is running or the last one started less than
  `min_interval_s` ago: then the next update, or `close()`, draws the newer scalars. `close()`
  waits for the thread and, if scalars came since the last redraw started, draws once more, so a
  finished run's PNG shows every step. An error while drawing is raised by the next `update()` or
  `close()`. The thread reads no file: it draws a copy of the recorded scalars."""

  def __init__(self, workdir, min_interval_s=30.0):
    self._path = os.path.join(workdir, 'loss_curves.png')
    self._series = collections.defaultdict(list, read_scalars(workdir))
    self._min_interval_s = min_interval_s
    self._thread = None
    self._started = -float('inf')  # time.monotonic() when the last redraw started
    self._stale = False  # scalars came after the last redraw started
    self._error = None

  def write_scalars(self, step, scalars):
    for tag, value in scalars.items():
      points = self._series[tag]
      while points and points[-1][0] >= step:  # a resumed run logs its steps again
        points.pop()
      points.append((int(step), float(value)))
    self._stale = True

  def _draw(self, series):
    try:
      draw_loss_curves(series, self._path)
    except Exception as err:  # pylint: disable=broad-except
      self._error = err

  def _raise_error(self):
    if self._error is not None:
      err, self._error = self._error, None
      raise RuntimeError(f'Writing {self._path} failed: {err}') from err

  def _start(self):
    self._stale = False
    self._started = time.monotonic()
    series = {tag: list(points) for tag, points in self._series.items()}
    self._thread = threading.Thread(target=self._draw, args=(series,), name='loss_curves',
                                    daemon=True)
    self._thread.start()

  def update(self):
    self._raise_error()
    if not self._stale or (self._thread is not None and self._thread.is_alive()):
      return
    if time.monotonic() - self._started >= self._min_interval_s:
      self._start()

  def close(self):
    if self._thread is not None:
      self._thread.join()
    self._raise_error()
    if self._stale:
      self._start()
      self._thread.join()
      self._raise_error()

  def flush(self):
    pass

  # What the PNG does not show.
  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass
