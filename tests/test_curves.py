"""The loss-curve PNG: drawn from the event files, rewritten in the background during training."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from mmali_jax import curves
from mmali_jax import writers


class _BlockingWrites:
  """Stands in for write_loss_curves: records each call, and holds it until released."""

  def __init__(self, fail=False):
    self.calls, self.release, self.fail = 0, threading.Event(), fail

  def __call__(self, workdir, path):
    del workdir, path
    self.calls += 1
    self.release.wait(timeout=60)
    if self.fail:
      raise ValueError('no such tag')


def test_updates_never_wait_for_a_rewrite_and_close_draws_the_last_events(monkeypatch, tmp_path):
  writes = _BlockingWrites()
  monkeypatch.setattr(curves, 'write_loss_curves', writes)
  loss_curves = curves.LossCurves(str(tmp_path), min_interval_s=0)
  loss_curves.update()
  loss_curves.update()  # the first rewrite is still drawing: returns at once, starts none
  assert writes.calls == 1
  writes.release.set()
  loss_curves.close()  # events flushed after the first rewrite started: drawn once more
  assert writes.calls == 2
  loss_curves.close()  # nothing new
  assert writes.calls == 2


def test_rewrites_start_at_most_once_per_interval(monkeypatch, tmp_path):
  writes = _BlockingWrites()
  writes.release.set()
  monkeypatch.setattr(curves, 'write_loss_curves', writes)
  loss_curves = curves.LossCurves(str(tmp_path), min_interval_s=3600)
  for _ in range(5):
    loss_curves.update()
    loss_curves._thread.join()  # pylint: disable=protected-access
  assert writes.calls == 1
  loss_curves.close()
  assert writes.calls == 2


def test_a_failed_rewrite_is_raised_by_the_next_call(monkeypatch, tmp_path):
  writes = _BlockingWrites(fail=True)
  writes.release.set()
  monkeypatch.setattr(curves, 'write_loss_curves', writes)
  loss_curves = curves.LossCurves(str(tmp_path), min_interval_s=0)
  loss_curves.update()
  loss_curves._thread.join()  # pylint: disable=protected-access
  with pytest.raises(RuntimeError, match=r'Writing .*loss_curves.png failed: no such tag'):
    loss_curves.update()


def test_the_png_has_a_panel_per_group_and_replaces_the_previous_one_whole(tmp_path):
  writer = writers.EventFileWriter(str(tmp_path))
  for step in range(1, 4):
    writer.write_scalars(step, {'d/joint': 1.0 / step, 'd/total': 2.0, 'g/joint': 0.5,
                                'g/total': 1.0, 'steps_per_sec': 10.0})
  writer.flush()
  loss_curves = curves.LossCurves(str(tmp_path))
  loss_curves.update()
  loss_curves.close()
  assert sorted(os.listdir(tmp_path))[-1] == 'loss_curves.png'  # no temporary file left
  image = np.asarray(Image.open(tmp_path / 'loss_curves.png'))
  assert image.shape[:2] == (900, 1400)  # 2 x 2 panels of 7 x 4.5 inches at 100 dpi
