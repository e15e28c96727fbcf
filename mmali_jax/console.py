"""Console hygiene shared by the command-line programs."""
import logging
import os
import re
import sys


def _project_or_warning(record):
  """Keeps INFO records of this project and clu; other libraries only from WARNING up."""
  return (record.levelno >= logging.WARNING or '/mmali_jax/' in record.pathname
          or '/clu/' in record.pathname)


def quiet_libraries():
  """Orbax and JAX log every file they touch at INFO; keep the console for losses, progress and
  results."""
  for name in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(name).addFilter(_project_or_warning)


# The exceptions whose message already tells the user what to do, by the module defining them.
_USER_ERRORS = {'mmali_jax.checkpointing': ('CheckpointError', 'WorkdirConfigError'),
                'mmali_jax.config_checks': ('ConfigError',),
                'mmali_jax.data.sources': ('MissingDatasetError',),
                'mmali_jax.distributed': ('DistributedError',),
                'mmali_jax.train': ('NonFiniteError',)}


def user_errors():
  """Exceptions whose message already tells the user what to do: shown without a traceback.

  Only those of modules already imported: an error of a module never imported cannot have been
  raised, and importing one to name its error (the trainer imports TensorFlow) would take longer
  than the command took to fail."""
  return tuple(getattr(sys.modules[module], name) for module, names in _USER_ERRORS.items()
               if module in sys.modules for name in names)


def run(fn, *args):
  """fn(*args), turning user errors into a one-message exit with status 1, and a preemption
  into a message and status preemption.EXIT_PREEMPTED."""
  from mmali_jax import preemption  # pylint: disable=g-import-not-at-top
  try:
    return fn(*args)
  except user_errors() as err:
    raise SystemExit(f'Error: {err}') from None
  except preemption.Preempted as stopped:
    print(stopped, file=sys.stderr)
    raise SystemExit(preemption.EXIT_PREEMPTED) from None


def parse_flags(argv, flag_values=None):
  """absl's flag parsing (into absl's FLAGS by default), where an unknown config field
  (--config.FIELD=...) is one message naming the field and the closest valid one, not a
  traceback, and a classifier_dir override is made absolute."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    remaining = flag_values(argv)
  except flags.Error as err:  # as absl's own parser: the message and how to get help
    raise SystemExit(f'FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull to see '
                     'help on flags.') from None
  except (AttributeError, KeyError) as err:
    message = str(err).replace('\\n', ' ').replace('\n', ' ')
    missing = re.search(r'[A-Za-z_]\w*', message)
    overrides = [a.split('=', 1)[0] for a in argv[1:] if a.startswith('--config.')]
    culprit = next((o for o in overrides if missing and missing.group() in o.split('.')), None)
    if culprit is None:
      raise
    hint = re.search(r'Did you mean "[^"]*"', message)
    hint = (hint.group() + '?') if hint else ('See configs/*.py and mmali_jax/default_config.py '
                                              'for the fields.')
    raise SystemExit(f'Error: {culprit}: there is no such config field. {hint}') from None
  _absolute_classifier_dir(flag_values)
  return remaining


def _absolute_classifier_dir(flag_values):
  """A classifier_dir typed on the command line is relative to where it runs; stored with a run,
  a relative one is relative to the run (the Table 1 sweep's '../classifiers')."""
  if 'config' not in flag_values:
    return
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  value = config_flags.get_override_values(flag_values['config']).get('eval.classifier_dir')
  if value and not os.path.isabs(value):
    flag_values.config.eval.classifier_dir = os.path.abspath(value)
