"""The loss-curve PNG: drawn from what training logs, on a thread of its own."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from mmali_jax import curves
from mmali_jax import writers


class _BlockingDraws:
  """Stands in for draw_loss_curves: records what each call draws, holds it until released."""

  def __init__(self, fail=False):
    self.drawn, self.release, self.fail = [], threading.Event(), fail

  def __call__(self, series, path):
    del path
    self.drawn.append(series)
    self.release.wait(timeout=60)
    if self.fail:
      raise ValueError('no such tag')


def test_updates_never_wait_for_a_redraw_and_close_draws_the_last_scalars(monkeypatch, tmp_path):
  draws = _BlockingDraws()
  monkeypatch.setattr(curves, 'draw_loss_curves', draws)
  loss_curves = curves.LossCurves(str(tmp_path), min_interval_s=0)
  loss_curves.update()  # nothing logged yet: nothing to draw
  loss_curves.write_scalars(1, {'d/total': 1.0})
  loss_curves.update()
  loss_curves.write_scalars(2, {'d/total': 0.5})
  loss_curves.update()  # the first redraw is still drawing: returns at once, starts none
  assert len(draws.drawn) == 1
  draws.release.set()
  loss_curves.close()  # scalars came after the first redraw started: drawn once more
  assert draws.drawn == [{'d/total': [(1, 1.0)]}, {'d/total': [(1, 1.0), (2, 0.5)]}]
  loss_curves.close()  # nothing new
  assert len(draws.drawn) == 2


def test_redraws_start_at_most_once_per_interval(monkeypatch, tmp_path):
  draws = _BlockingDraws()
  draws.release.set()
  monkeypatch.setattr(curves, 'draw_loss_curves', draws)
  loss_curves = curves.LossCurves(str(tmp_path), min_interval_s=3600)
  for step in range(1, 6):
    loss_curves.write_scalars(step, {'g/total': float(step)})
    loss_curves.update()
    loss_curves._thread.join()  # pylint: disable=protected-access
  assert len(draws.drawn) == 1
  loss_curves.close()
  assert len(draws.drawn) == 2 and len(draws.drawn[-1]['g/total']) == 5


def test_a_failed_redraw_is_raised_by_the_next_call(monkeypatch, tmp_path):
  draws = _BlockingDraws(fail=True)
  draws.release.set()
  monkeypatch.setattr(curves, 'draw_loss_curves', draws)
  loss_curves = curves.LossCurves(str(tmp_path), min_interval_s=0)
  loss_curves.write_scalars(1, {'d/total': 1.0})
  loss_curves.update()
  loss_curves._thread.join()  # pylint: disable=protected-access
  with pytest.raises(RuntimeError, match=r'Writing .*loss_curves.png failed: no such tag'):
    loss_curves.update()


def test_a_resumed_run_draws_its_logged_steps_then_the_new_ones(monkeypatch, tmp_path):
  writer = writers.EventFileWriter(str(tmp_path))
  for step in (1, 2, 3):  # the first run logged 1-3, stopped, and resumes from 2
    writer.write_scalars(step, {'d/joint': 1.0 / step, 'd/total': 2.0, 'g/joint': 0.5,
                                'g/total': 1.0, 'steps_per_sec': 10.0})
  writer.flush()
  draws = _BlockingDraws()
  draws.release.set()
  real_draw = curves.draw_loss_curves
  monkeypatch.setattr(curves, 'draw_loss_curves',
                      lambda series, path: draws(series, path) or real_draw(series, path))
  loss_curves = curves.LossCurves(str(tmp_path))
  loss_curves.write_scalars(3, {'d/joint': 7.0, 'd/total': 2.0})
  loss_curves.close()
  assert draws.drawn[0]['d/joint'] == [(1, 1.0), (2, 0.5), (3, 7.0)]
  assert draws.drawn[0]['g/joint'] == [(1, 0.5), (2, 0.5), (3, 0.5)]
  assert sorted(os.listdir(tmp_path))[-1] == 'loss_curves.png'  # no temporary file left
  image = np.asarray(Image.open(tmp_path / 'loss_curves.png'))
  assert image.shape[:2] == (900, 1400)  # 2 x 2 panels of 7 x 4.5 inches at 100 dpi
