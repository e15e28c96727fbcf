"""Loss curves as a PNG, read back from the run's TensorBoard events (so resumed runs are whole)."""
import collections
import glob
import os

import matplotlib

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util


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


def write_loss_curves(workdir, path):
  """One panel per group: discriminator terms, generator terms, totals, steps/s."""
  series = read_scalars(workdir)
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
  fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.5 * rows), squeeze=False)
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
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
