"""Trains the coherence classifiers of an experiment, once per experiment directory:

  python -m mmali_jax.classifiers --config=configs/mnist_svhn.py --workdir=runs/ms

One classifier per distinct (dataset, rotation) of the config's modalities, into
<workdir>/classifiers/ (or --classifier_dir); existing ones are kept unless --overwrite.
The library code is `mmali_jax.evaluators.classifiers`.
"""
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from mmali_jax import console
from mmali_jax.evaluators import classifiers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=False)
flags.DEFINE_string('workdir', None, 'Experiment directory.')
flags.DEFINE_string('classifier_dir', None,
                    'Where the classifiers go; default <workdir>/classifiers.')
flags.DEFINE_integer('epochs', None, 'Default: config.eval.classifier_epochs.')
flags.DEFINE_bool('overwrite', False, 'Retrain classifiers that already exist.')
flags.mark_flag_as_required('config')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.workdir is None and FLAGS.classifier_dir is None:
    raise app.UsageError('Pass --workdir (or --classifier_dir).')
  console.quiet_libraries()
  classifier_dir = FLAGS.classifier_dir or os.path.join(FLAGS.workdir, 'classifiers')
  summary = console.run(lambda: classifiers.train_all(FLAGS.config, classifier_dir,
                                                      epochs=FLAGS.epochs,
                                                      overwrite=FLAGS.overwrite))
  for key, metrics in summary.items():
    print(f'{key}: test accuracy {100 * metrics["selected_test_accuracy"]:.2f}% (held-out '
          f'selection, epoch {metrics["selected_epoch"]}); final epoch '
          f'{100 * metrics["final_test_accuracy"]:.2f}%; best test accuracy over epochs '
          f'(reference-style) {100 * metrics["best_test_accuracy_over_epochs"]:.2f}%')


if __name__ == '__main__':
  app.run(main, flags_parser=console.parse_flags)
