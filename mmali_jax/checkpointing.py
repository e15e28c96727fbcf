"""Checkpoints with orbax: the full training state, and the EMA generators as their own item.

Layout: <workdir>/checkpoints/<step>/{train,ema,unlogged}. `train` holds everything needed to
resume (parameters, optimizer states, spectral-norm vectors, step, RNG); `ema` holds the EMA
encoder and decoder parameters alone, so evaluation restores them without building optimizers;
`unlogged` holds the losses of the steps since the last logged step (empty unless the run was
stopped between two logging steps), so that a resumed run logs the same averages as an
uninterrupted one. Checkpoints written before `unlogged` existed restore without it. (Not named
`metrics`: orbax's manager reads an item of that name from every checkpoint when it starts.)
"""
import json
import os
import shutil
import time

from absl import logging
from etils import epath
import flax
import jax
import numpy as np
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


def _manager(workdir, keep=None, create=False, keep_every=None):
  """keep: the newest checkpoints kept (None: all); keep_every: also every checkpoint whose
  step is a multiple of it (the evaluated ones)."""
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_every:
    policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_every))
  options = ocp.CheckpointManagerOptions(
      create=create, preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
  # Handlers named up front (not inferred from the first save or restore), so that a checkpoint's
  # metadata can be read before restoring it.
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers={'train': ocp.StandardCheckpointHandler(),
                                              'ema': ocp.StandardCheckpointHandler(),
                                              'unlogged': ocp.JsonCheckpointHandler()})


def _split(state):
  train = flax.serialization.to_state_dict(state)
  ema = train.pop('ema_params')
  return train, ema


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def unreadable_dir(workdir):
  """Where checkpoints that cannot be restored are moved, for inspection."""
  return os.path.join(os.path.abspath(workdir), 'checkpoints_unreadable')


def _set_aside(workdir, step, err):
  """Moves checkpoints/<step> into checkpoints_unreadable/ (process 0; every process waits)."""
  target = os.path.join(unreadable_dir(workdir), f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  if distributed.is_main_process():
    os.makedirs(unreadable_dir(workdir), exist_ok=True)
    shutil.move(os.fspath(checkpoint_dir(workdir) / str(step)), target)
  distributed.barrier(f'set_aside_{step}')
  logging.warning('The checkpoint at step %d of %s cannot be restored (%s: %s); it was moved to '
                  '%s for inspection, and the previous checkpoint is tried.', step, workdir,
                  type(err).__name__, str(err).splitlines()[0] if str(err) else '', target)
  return target


def _restore_newest_readable(manager, workdir, restore_fn):
  """restore_fn(step) on the newest checkpoint that restores; unreadable ones (truncated files,
  missing items, a folder without its commit) are set aside. -> (restored, step) or None."""
  set_aside = []
  while True:
    step = manager.latest_step()
    if step is None:
      if set_aside:
        raise CheckpointError(
            f'None of the checkpoints of {workdir} could be restored; they were moved to '
            f'{unreadable_dir(workdir)} ({", ".join(set_aside)}). Nothing was deleted. Re-run '
            'the same command to start this run afresh, or move them back to resume.')
      return None
    try:
      return restore_fn(step), step
    except Exception as err:  # pylint: disable=broad-except  (orbax raises many kinds)
      set_aside.append(_set_aside(workdir, step, err))
      manager.reload()


class Checkpointer:
  """Saves every `checkpoint_every_steps` and restores the latest for resuming; keeps the newest
  `keep` and every multiple of `keep_every` (the evaluated steps, to evaluate again later)."""

  def __init__(self, workdir, keep, keep_every=None):
    self.workdir = workdir
    self.manager = _manager(workdir, keep=keep, create=True, keep_every=keep_every)

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, state, unlogged=()):
    """Saves the state's arrays as they are sharded (every process of a job takes part; orbax
    copies them off the devices before returning and writes in the background), and `unlogged`:
    [(first step, number of steps, {name: float})] not yet logged."""
    train, ema = _split(state)
    step = int(distributed.local(train['step']))
    previous = self.manager.latest_step()
    try:
      self.manager.save(step, args=ocp.args.Composite(
          train=ocp.args.StandardSave(train), ema=ocp.args.StandardSave(ema),
          unlogged=ocp.args.JsonSave([list(m) for m in unlogged])))
    except OSError as err:
      raise CheckpointError(self._write_failure(step, previous, err)) from None
    return step

  def _write_failure(self, step, previous, err):
    kept = (f'the checkpoint of step {previous} is intact' if previous is not None else
            'no earlier checkpoint exists')
    return (f'Could not write the checkpoint of step {step} to {checkpoint_dir(self.workdir)} '
            f'({err.strerror or err}); {kept}. Free some space (or fix the permissions) and run '
            'the same command again: it goes on from there.')

  def restore(self, template):
    """Restores the newest readable checkpoint into the structure and shardings of `template`
    -> (state, the unlogged metrics saved with it), or None if there is none; the number of
    processes and devices may differ from the saving run's. Unreadable checkpoints are set aside
    (`unreadable_dir`) with a warning."""
    train, ema = _split(template)
    items = dict(train=ocp.args.StandardRestore(_abstract(train)),
                 ema=ocp.args.StandardRestore(_abstract(ema)))

    def restore(step):
      # Decided by the items the checkpoint was saved with, not by the folders there: one saved
      # with `unlogged` that lost it is unreadable, as one that lost `ema` is.
      saved = self.manager.metadata(step).item_handlers or {}
      args = dict(items, unlogged=ocp.args.JsonRestore()) if 'unlogged' in saved else items
      return self.manager.restore(step, args=ocp.args.Composite(**args))

    found = _restore_newest_readable(self.manager, self.workdir, restore)
    if found is None:
      return None
    restored, _ = found
    tree = dict(restored['train'], ema_params=restored['ema'])
    unlogged = [(int(first), int(n), dict(values))
                for first, n, values in (restored.get('unlogged') or [])]
    return flax.serialization.from_state_dict(template, tree), unlogged

  def wait(self):
    """Returns once every started save is on disk (a failed background write is an error)."""
    previous = self.manager.latest_step()
    try:
      self.manager.wait_until_finished()
    except OSError as err:
      raise CheckpointError(self._write_failure('in progress', previous, err)) from None

  def close(self):
    try:
      self.wait()
    finally:
      self.manager.close()


def host_target(tree):
  """A restore target of numpy arrays shaped as `tree`'s leaves (arrays, shape-dtype structs or
  a checkpoint's metadata): orbax restores into host memory, on any devices. Restoring into the
  saved shardings needs the saving run's devices (cuda:0, or 8 of them)."""
  return jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), tree)


def _restore_ema_to_host(manager, step):
  """The EMA parameters of checkpoint `step` as host numpy arrays, as training hands them to the
  evaluators (a run trained on 8 GPUs is evaluated on a 1-device machine)."""
  target = host_target(manager.item_metadata(step)['ema'].tree)
  return manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(target)))


def restore_ema(workdir, step=None):
  """-> (EMA generator parameters as numpy arrays, step) of the given checkpoint of a run, or of
  its newest readable one (unreadable newer ones are set aside, as when training resumes), on
  any number of devices."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise CheckpointError(f'No checkpoints in {checkpoint_dir(workdir)}: train first with '
                          f'`python -m mmali_jax.main --config=... --workdir={workdir}`.')
  manager = _manager(workdir)
  try:
    if step is None:
      found = _restore_newest_readable(manager, workdir,
                                       lambda s: _restore_ema_to_host(manager, s))
      if found is None:
        raise CheckpointError(f'No checkpoint in {checkpoint_dir(workdir)}: train first with '
                              f'`python -m mmali_jax.main --config=... --workdir={workdir}`.')
      restored, step = found
    else:
      steps = manager.all_steps()
      if step not in steps:
        raise CheckpointError(f'No checkpoint at step {step} in {checkpoint_dir(workdir)}; '
                              f'available steps: {list(steps)}.')
      try:
        restored = _restore_ema_to_host(manager, step)
      except Exception as err:  # pylint: disable=broad-except
        raise CheckpointError(
            f'The checkpoint at step {step} ({checkpoint_dir(workdir) / str(step)}) cannot be '
            f'restored: {type(err).__name__}: {err}. Nothing was changed; evaluate another step '
            f'(available: {list(steps)}), or leave --step out to use the newest readable one.'
        ) from err
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
