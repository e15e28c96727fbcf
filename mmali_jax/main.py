"""Trains MMALI: python -m mmali_jax.main --config=configs/mnist_svhn.py --workdir=runs/ms

Re-running the same command on the same workdir resumes from its latest checkpoint. Several
processes (hosts) train together when launched under SLURM with several tasks, on the workers of
a Cloud TPU VM slice, or with --coordinator_address, --num_processes and --process_id (the same
command on every process; see launch/).
"""
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mmali_jax import console
from mmali_jax import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
flags.DEFINE_string('compilation_cache', os.path.join('~', '.cache', 'mmali_jax', 'xla'),
                    'Persistent XLA compilation cache, so that restarts skip recompiling; '
                    "'' turns it off.")
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for a multi-process job without SLURM or Cloud TPU.')
flags.DEFINE_integer('num_processes', None, 'Number of processes of the job.')
flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 .. num_processes - 1.')
flags.DEFINE_bool('auto_distributed', False,
                  'Let JAX find the job\'s processes itself (jax.distributed.initialize() without '
                  'arguments), as on a Cloud TPU VM slice (launch/tpu_vm.sh passes it).')
flags.DEFINE_integer('distributed_timeout', 300,
                     'Seconds to wait for every process to join the job.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:args]).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_libraries()
  console.run(distributed.initialize, FLAGS.coordinator_address, FLAGS.num_processes,
              FLAGS.process_id, FLAGS.distributed_timeout, FLAGS.auto_distributed)
  if FLAGS.compilation_cache:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(FLAGS.compilation_cache))
  logging.info('Config:\n%s', FLAGS.config)
  # Imported here, after the flags and the distributed runtime are checked: the trainer imports
  # TensorFlow (clu's summary writer, TFDS's readers), 10 s on a 2-core machine that a mistyped
  # flag or an unreachable coordinator need not wait.
  from mmali_jax import train  # pylint: disable=g-import-not-at-top
  console.run(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=console.parse_flags)
