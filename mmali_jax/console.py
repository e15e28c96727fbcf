"""Console hygiene shared by the command-line programs."""
import logging


def _project_or_warning(record):
  """Keeps INFO records of this project and clu; other libraries only from WARNING up."""
  return (record.levelno >= logging.WARNING or '/mmali_jax/' in record.pathname
          or '/clu/' in record.pathname)


def quiet_libraries():
  """Orbax and JAX log every file they touch at INFO; keep the console for losses, progress and
  results."""
  for name in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(name).addFilter(_project_or_warning)


def user_errors():
  """Exceptions whose message already tells the user what to do: shown without a traceback."""
  from mmali_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from mmali_jax import distributed  # pylint: disable=g-import-not-at-top
  from mmali_jax.data import sources  # pylint: disable=g-import-not-at-top
  return (sources.MissingDatasetError, checkpointing.CheckpointError,
          checkpointing.WorkdirConfigError, distributed.DistributedError)


def run(fn, *args):
  """fn(*args), turning user errors into a one-message exit with status 1."""
  try:
    return fn(*args)
  except user_errors() as err:
    raise SystemExit(f'Error: {err}') from None
