"""A machine with JAX alone (a GPU image, say): the training command on a dataset prepared as
ArrayRecord, in a process where TensorFlow cannot be imported."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mmali_jax import curves
from tests import digit_datasets
from tests.conftest import ROOT
from tests.conftest import SMALL_COMMAND_FLAGS

# Runs `python -m mmali_jax.main ARGS` where TensorFlow is not found, as where it is not installed:
# `import tensorflow` fails and importlib.util.find_spec('tensorflow') is None.
_WITHOUT_TENSORFLOW = '''
import importlib.machinery, runpy, sys
_find = importlib.machinery.PathFinder.find_spec
def _find_all_but_tensorflow(cls, name, path=None, target=None):
  if name == 'tensorflow' or name.startswith('tensorflow.'):
    return None
  return _find(name, path, target)
importlib.machinery.PathFinder.find_spec = classmethod(_find_all_but_tensorflow)
sys.argv = ['mmali_jax.main'] + sys.argv[1:]
try:
  runpy.run_module('mmali_jax.main', run_name='__main__', alter_sys=True)
finally:
  assert 'tensorflow' not in sys.modules
'''


def _train_without_tensorflow(workdir, data_dir, cache):
  return subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW, '--config=configs/multimnist.py',
       f'--workdir={workdir}', f'--compilation_cache={cache}',
       f'--config.data.tfds_data_dir={data_dir}', *SMALL_COMMAND_FLAGS,
       '--config.num_train_steps=2'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The stand-in MNIST prepared in both formats: {format: data_dir}."""
  # Written where TFDS's `mnist` looks (same name, version and features), so its builder reads
  # them as MNIST. 24 training images, as the other tests' generated MNIST: the step's program is
  # theirs (its data are inputs), already in the suite's compilation cache.
  builder_cls = digit_datasets.digits_builder('Mnist', '3.0.1', (28, 28, 1),
                                              {'train': 24, 'test': 20}, register=False)
  dirs = {}
  for file_format in ('array_record', 'tfrecord'):
    dirs[file_format] = str(tmp_path_factory.mktemp(file_format))
    builder_cls(data_dir=dirs[file_format]).download_and_prepare(file_format=file_format)
  return dirs


def test_training_reads_array_record_and_writes_its_logs_without_tensorflow(tmp_path, cache,
                                                                             prepared):
  workdir = tmp_path / 'run'
  result = _train_without_tensorflow(workdir, prepared['array_record'], cache)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']
  assert os.listdir(workdir / 'samples') == ['step_0000002.png']
  # TensorBoard event files (TensorBoard's own writer) hold every step's losses, and the loss
  # curves were drawn from them.
  scalars = curves.read_scalars(str(workdir))
  assert [step for step, _ in scalars['d/total']] == [1, 2]
  assert all(np.isfinite(v) for _, v in scalars['g/total'])
  assert os.path.getsize(workdir / 'loss_curves.png') > 10_000


def test_a_tfrecord_folder_without_tensorflow_is_a_clear_error(tmp_path, cache, prepared):
  workdir = tmp_path / 'run'
  result = _train_without_tensorflow(workdir, prepared['tfrecord'], cache)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert (f"Dataset 'mnist' in {prepared['tfrecord']} is prepared as tfrecord, which only "
          'TensorFlow reads, and TensorFlow is not installed.') in ' '.join(result.stderr.split())
  assert not os.path.exists(workdir)
