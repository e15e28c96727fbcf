"""Checkpoints with orbax: the full training state, and the EMA generators as their own item.

Layout: <workdir>/checkpoints/<step>/{train,ema}. `train` holds everything needed to resume
(parameters, optimizer states, spectral-norm vectors, step, RNG); `ema` holds the EMA encoder and
decoder parameters alone, so evaluation restores them without building optimizers.
"""
import json
import os

from etils import epath
import flax
import jax
import orbax.checkpoint as ocp

from mmali_jax import default_config
from mmali_jax import distributed


class CheckpointError(RuntimeError):
  pass


class WorkdirConfigError(ValueError):
  """The workdir holds a run made with a different config."""


def checkpoint_dir(workdir):
  # Orbax's tensorstore backend refuses relative paths.
  return epath.Path(os.path.abspath(workdir)) / 'checkpoints'


def _manager(workdir, keep=None, create=False):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=('train', 'ema'))


def _split(state):
  train = flax.serialization.to_state_dict(state)
  ema = train.pop('ema_params')
  return train, ema


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _corrupt_message(workdir, step, err, steps):
  folder = checkpoint_dir(workdir) / str(step)
  earlier = [s for s in steps if s != step]
  return (f'Could not restore the checkpoint at step {step} ({folder}): {type(err).__name__}: '
          f'{err}\nIt is corrupt or was written by a different config. Nothing was changed. '
          f'To go on from an earlier checkpoint (available: {earlier or "none"}), move {folder} '
          'out of the way; to start afresh, pass a new --workdir.')


class Checkpointer:
  """Saves every `checkpoint_every_steps` and restores the latest for resuming."""

  def __init__(self, workdir, keep):
    self.workdir = workdir
    self.manager = _manager(workdir, keep=keep, create=True)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, state):
    """Saves the state's arrays as they are sharded (every process of a job takes part; orbax
    copies them off the devices before returning and writes in the background)."""
    train, ema = _split(state)
    step = int(distributed.local(train['step']))
    self.manager.save(step, args=ocp.args.Composite(
        train=ocp.args.StandardSave(train), ema=ocp.args.StandardSave(ema)))
    return step

  def restore(self, template):
    """Restores the latest checkpoint into the structure and shardings of `template` (None if
    there is none); the number of processes and devices may differ from the saving run's."""
    step = self.manager.latest_step()
    if step is None:
      return None
    train, ema = _split(template)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          train=ocp.args.StandardRestore(_abstract(train)),
          ema=ocp.args.StandardRestore(_abstract(ema))))
    except Exception as err:  # orbax raises many kinds; all mean the same to the user
      raise CheckpointError(_corrupt_message(self.workdir, step, err,
                                             self.manager.all_steps())) from err
    tree = dict(restored['train'], ema_params=restored['ema'])
    return flax.serialization.from_state_dict(template, tree)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def restore_ema(workdir, step=None):
  """-> (EMA generator parameters, step) of the latest (or given) checkpoint of a run."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise CheckpointError(f'No checkpoints in {checkpoint_dir(workdir)}: train first with '
                          f'`python -m mmali_jax.main --config=... --workdir={workdir}`.')
  manager = _manager(workdir)
  steps = manager.all_steps()
  if step is None:
    step = manager.latest_step()
  if step is None or step not in steps:
    raise CheckpointError(f'No checkpoint at step {step} in {checkpoint_dir(workdir)}; '
                          f'available steps: {list(steps)}.')
  try:
    restored = manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore()))
  except Exception as err:
    raise CheckpointError(_corrupt_message(workdir, step, err, steps)) from err
  finally:
    manager.close()
  return restored['ema'], step


def load_config(workdir):
  """The config a run was trained with (<workdir>/config.json, written by the training loop)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise CheckpointError(f'{path} does not exist: {workdir} is not a training workdir '
                          '(or pass --config explicitly).')
  with open(path) as f:
    return default_config.from_dict(json.load(f))
