"""Evaluates a trained run: python -m mmali_jax.evaluate --workdir=runs/ms [--step=N]

The config is the one stored in <workdir>/config.json; any of its fields can be overridden on
the command line, e.g. --config.data.tfds_data_dir=/data/tfds or --config.eval.probe_epochs=10.
Restores the EMA encoders/decoders of the latest (or given) checkpoint and runs the same
`Evaluator` as training does; writes <workdir>/eval/ and prints the report.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mmali_jax import checkpointing
from mmali_jax import console
from mmali_jax import default_config
from mmali_jax.evaluators import evaluator as evaluator_lib

FLAGS = flags.FLAGS


def evaluate(config, workdir, step=None):
  """Evaluates the checkpoint at `step` (default: the latest) of `workdir`; returns the metrics."""
  ema_params, step = checkpointing.restore_ema(workdir, step)
  return evaluator_lib.Evaluator(config, workdir).run(ema_params, step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_libraries()
  console.run(evaluate, FLAGS.config, FLAGS.workdir, FLAGS.step)
  with open(os.path.join(FLAGS.workdir, 'eval', 'report.md')) as f:
    print(f.read())


def _define_flags(argv):
  """--workdir, --step, and --config holding <workdir>/config.json, so that --config.FIELD=VALUE
  overrides the stored config (the workdir must be known before the config flag is defined)."""
  flags.DEFINE_string('workdir', None, 'The training run to evaluate.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.mark_flag_as_required('workdir')
  try:
    FLAGS(argv, known_only=True)
  except flags.Error:
    pass  # app.run reports flag errors with its usage message
  config = None
  if FLAGS.workdir is not None:
    config = console.run(checkpointing.load_config, FLAGS.workdir)
  config_flags.DEFINE_config_dict('config', config or default_config.base_config(),
                                  'Overrides of the stored config: --config.FIELD=VALUE.')


if __name__ == '__main__':
  _define_flags(sys.argv)
  app.run(main, flags_parser=console.parse_flags)
