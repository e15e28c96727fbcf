"""Reproduces a table of the paper with one command:

  python -m mmali_jax.reproduce --table=1 --root=runs/table1 [--seeds=3] [--modalities=2,3,4] \\
      [--config.num_train_steps=20000] [--config.data.tfds_data_dir=DIR]

Table 1: MultiMNIST with M = 2, 3, 4 modalities, factorized and monolithic ("Joint")
discriminators, each for every seed; the coherence classifiers are trained once and shared; every
run is evaluated after its last step; then <root>/table1.md and table1.png are written. Every run
is an ordinary workdir (<root>/mm<M>_<kind>_seed<s>). Re-running the command skips finished runs
and resumes interrupted ones, so an interrupted sweep picks up where it stopped. --config.FIELD
overrides apply to every run. On a cluster (launch/sweep.sh): one job with --classifiers_only,
then one job per run with --runs=NAME, then one with --aggregate_only, which writes the table
from what is there.
"""
import importlib.util
import os
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mmali_jax import console
from mmali_jax import default_config
from mmali_jax import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_integer('table', None, 'The paper\'s table to reproduce (1).')
flags.DEFINE_string('root', None, 'Directory of the sweep: one workdir per run, the table.')
flags.DEFINE_integer('seeds', 3, 'Runs per cell, with seeds 0 .. seeds - 1.')
flags.DEFINE_list('modalities', ['2', '3', '4'], 'Numbers of modalities M (Table 1).')
flags.DEFINE_list('runs', [], 'Train only these runs (e.g. mm2_factorized_seed0); default all.')
flags.DEFINE_bool('aggregate_only', False, 'Write the table from the finished runs only.')
flags.DEFINE_bool('classifiers_only', False, 'Train the shared coherence classifiers only.')
config_flags.DEFINE_config_dict('config', default_config.base_config(),
                                'Overrides applied to every run: --config.FIELD=VALUE.')
flags.mark_flags_as_required(['table', 'root'])


def _multimnist_config(arg):
  spec = importlib.util.spec_from_file_location(
      'multimnist_config', os.path.join(ROOT, 'configs', 'multimnist.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.table not in tables.TABLES:
    raise app.UsageError(f'--table={FLAGS.table}: only Table {tables.TABLES} can be reproduced '
                         'so far.')
  console.quiet_libraries()
  start = time.time()
  overrides = config_flags.get_override_values(FLAGS['config'])
  runs = tables.table1_runs(_multimnist_config, FLAGS.seeds,
                            tuple(int(m) for m in FLAGS.modalities), overrides)
  unknown = sorted(set(FLAGS.runs) - set(runs))
  if unknown:
    raise app.UsageError(f'Unknown runs {unknown}; this sweep has {sorted(runs)}.')
  os.makedirs(FLAGS.root, exist_ok=True)
  if not FLAGS.aggregate_only:
    console.run(tables.train_classifiers, runs, FLAGS.root)
    if FLAGS.classifiers_only:
      return
    selected = {k: v for k, v in runs.items() if not FLAGS.runs or k in FLAGS.runs}
    from mmali_jax import train  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    started = console.run(tables.train_and_evaluate_runs, selected, FLAGS.root,
                          train.train_and_evaluate)
    logging.info('Trained or resumed %d of %d runs.', len(started), len(selected))
  try:
    print(console.run(tables.aggregate, runs, FLAGS.root))
  except FileNotFoundError as err:
    raise SystemExit(f'Error: {err}') from None
  print(f'Wrote {os.path.join(FLAGS.root, "table1.md")} and table1.png in '
        f'{time.time() - start:.0f} s.')


if __name__ == '__main__':
  app.run(main, flags_parser=console.parse_flags)
