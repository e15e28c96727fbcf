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
