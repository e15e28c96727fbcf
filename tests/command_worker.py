"""`python -m mmali_jax.main ARGS` on generated data, for tests that signal the real command.

  python tests/command_worker.py --config=configs/multimnist.py --workdir=DIR [...]

Runs the program mmali_jax.main, with its own flags, exit statuses and signal handling, inside
tfds.testing.mock_data (the same generated images in every run).
"""
import os
import runpy
import sys

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sys.argv = ['mmali_jax.main'] + sys.argv[1:]
  with tfds.testing.mock_data(num_examples=24):
    runpy.run_module('mmali_jax.main', run_name='__main__', alter_sys=True)
