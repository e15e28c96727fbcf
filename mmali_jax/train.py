"""The one training loop: data, state, resume, the jitted step on a device mesh, logs, saves."""
import contextlib
import dataclasses
import json
import os
import time

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import numpy as np

from mmali_jax import checkpointing
from mmali_jax import curves
from mmali_jax import default_config
from mmali_jax import distributed
from mmali_jax import images
from mmali_jax import networks
from mmali_jax import samples
from mmali_jax import train_step as train_step_lib
from mmali_jax.data import pipeline
from mmali_jax.evaluators import evaluator as evaluator_lib

# Fields that may change between runs on one workdir (how long and how verbosely to train, where
# the data lives); any other change would make the checkpoints mean something else.
RESUMABLE_FIELDS = ('num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints', 'num_devices', 'steps_per_dispatch', 'data.tfds_data_dir',
                    'eval')
# matmul_precision is not among them: it changes the numbers a run computes.
MATMUL_PRECISIONS = ('highest', 'float32', 'high', 'tensorfloat32', 'bfloat16_3x', 'default',
                     'bfloat16')


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_config(config):
  for field in ('num_train_steps', 'batch_size', 'log_every_steps', 'checkpoint_every_steps',
                'keep_checkpoints'):
    if int(config[field]) < 1:
      raise ValueError(f'config.{field}={config[field]} must be a positive integer.')
  if not 0.0 < config.data.percentage <= 1.0:
    raise ValueError(f'config.data.percentage={config.data.percentage} must be in (0, 1].')
  if not 0.0 <= config.ema.decay < 1.0:
    raise ValueError(f'config.ema.decay={config.ema.decay} must be in [0, 1).')
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise ValueError(f'config.matmul_precision={config.matmul_precision!r}; choose one of '
                     f'{MATMUL_PRECISIONS}.')
  if int(config.steps_per_dispatch) < 0:
    raise ValueError(f'config.steps_per_dispatch={config.steps_per_dispatch} must be >= 0 '
                     '(0 = automatic).')


def make_mesh(config):
  """A 'data' mesh over every device of the job (of every process in a multi-process job)."""
  devices = jax.devices()
  if config.num_devices is not None:
    if jax.process_count() > 1:
      raise ValueError('config.num_devices limits the devices of a single-process run; a '
                       'multi-process job uses all of them (leave it unset).')
    if not 1 <= config.num_devices <= len(devices):
      raise ValueError(f'config.num_devices={config.num_devices}, but {len(devices)} '
                       'devices are available.')
    devices = devices[:config.num_devices]
  if config.batch_size % len(devices):
    where = f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible by the '
                     f'{len(devices)} devices{where} the batch is sharded over; pick a multiple '
                     f'of {len(devices)}' + ('.' if where else ' (or set config.num_devices).'))
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


@dataclasses.dataclass(frozen=True)
class Shardings:
  replicated: jax.sharding.NamedSharding  # parameters, optimizer states, the dataset
  images: jax.sharding.NamedSharding  # a batch of images, split along the 'data' axis
  indices: jax.sharding.NamedSharding  # the [M, B] batch indices, split along B


def make_shardings(mesh):
  spec = jax.sharding.PartitionSpec
  return Shardings(jax.sharding.NamedSharding(mesh, spec()),
                   jax.sharding.NamedSharding(mesh, spec('data')),
                   jax.sharding.NamedSharding(mesh, spec(None, 'data')))


def compile_train_steps(config, gen, disc, mods, mesh):
  """The train steps jitted data-parallel over `mesh`: parameters, optimizer states and the
  dataset replicated, every batch split along the 'data' axis. The loss is a mean over the
  global batch, so XLA averages the gradients across devices and the result matches a single
  device up to float rounding. -> (fn(state, data, num_steps), shardings); the state is donated.
  """
  shardings = make_shardings(mesh)
  fn = jax.jit(train_step_lib.make_train_steps(config, gen, disc, mods, shardings),
               static_argnums=2, in_shardings=(shardings.replicated, shardings.replicated),
               out_shardings=(shardings.replicated, shardings.replicated), donate_argnums=0)
  return fn, shardings


def dispatch_sizes(start, stop, steps_per_dispatch, boundaries):
  """[(first step, number of steps)] covering [start, stop) in calls of at most
  `steps_per_dispatch` steps that never cross a multiple of any of `boundaries` (logging,
  checkpoints, evaluation), so that those happen exactly at their steps."""
  out, step = [], start
  while step < stop:
    end = min(stop, step + steps_per_dispatch)
    for every in boundaries:
      if every:
        end = min(end, (step // every + 1) * every)
    out.append((step, end - step))
    step = end
  return out


def steps_per_dispatch(config):
  """config.steps_per_dispatch, or automatically 1 on CPU and 100 on accelerators."""
  if config.steps_per_dispatch:
    return int(config.steps_per_dispatch)
  return 1 if jax.default_backend() == 'cpu' else 100


def _comparable(config_dict):
  """Flattened config, with discriminator aliases resolved (so 'joint' resumes 'monolithic')."""
  flat = _flatten(config_dict)
  if 'discriminator' in flat:
    flat['discriminator'] = default_config.discriminator_kind(flat['discriminator'])
  return flat


def _check_workdir_config(config, workdir, write=True):
  """Writes <workdir>/config.json (if `write`), or refuses to resume a run made with a different
  config."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    ignore = lambda k: any(k == f or k.startswith(f + '.') for f in RESUMABLE_FIELDS)
    a, b = _comparable(saved), _comparable(current)
    changed = sorted(k for k in set(a) | set(b) if not ignore(k) and a.get(k) != b.get(k))
    if changed:
      details = ', '.join(f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in changed)
      raise checkpointing.WorkdirConfigError(
          f'{workdir} holds a run with a different config ({details}). Its checkpoints were '
          'left untouched; use a new --workdir, or the original config to resume.')
  if write:
    with open(path + '.tmp', 'w') as f:
      json.dump(current, f, indent=2)
    os.replace(path + '.tmp', path)


class ProgressReport(periodic_actions.ReportProgress):
  """clu's progress report (steps/s, ETA, share of time per part), whose steps/s and ETA leave
  out the time spent in `excluded` blocks (evaluation), which would otherwise distort both."""

  def _init_and_check(self, step, t):
    # Accept several steps per call (one call per dispatch of several iterations).
    if self._previous_step is None:
      self._previous_step, self._previous_time = step, t
    self._last_step = step

  @contextlib.contextmanager
  def excluded(self, name):
    start = time.monotonic()
    with self.timed(name, wait_jax_async_dispatch=False):
      yield
    if self._previous_time is not None:
      # Rates are (step - previous step) / (now - previous time): skip the block's duration.
      self._previous_time += time.monotonic() - start


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the run in `workdir` up to config.num_train_steps; returns the state.

  In a multi-process job every process calls it with the same config: each holds the training set
  and a replica of the state on its devices, the batch is split over all devices of the job,
  checkpoints are written and read by all processes together (orbax), and only process 0 writes
  logs, images, evaluations and config.json.
  """
  check_config(config)
  distributed.check_same_config(config.to_json_best_effort(sort_keys=True))
  mesh = make_mesh(config)
  mods, gen, disc = networks.build(config)
  main_process = distributed.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  _check_workdir_config(config, workdir, write=main_process)

  dataset = pipeline.load_dataset(config, 'train')
  logging.info('%d training tuples of %s.', dataset.num_pairs, dataset.names)
  train_steps, shardings = compile_train_steps(config, gen, disc, mods, mesh)
  data = distributed.replicate(train_step_lib.device_data(dataset, config.seed),
                               shardings.replicated)
  state = distributed.replicate(train_step_lib.create_train_state(config, gen, disc, mods),
                                shardings.replicated)
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  restored = checkpointer.restore(state)
  if restored is not None:
    state = restored
    logging.info('Resumed %s from step %d.', workdir, int(distributed.local(state.step)))
  start = int(distributed.local(state.step))
  if start >= config.num_train_steps:
    logging.info('%s has already trained %d >= %d steps; nothing to do.', workdir, start,
                 config.num_train_steps)
    checkpointer.close()
    return state

  # Fixed inputs and noise for the sample grids, the same at every checkpoint and on resume.
  rng = np.random.default_rng([config.seed, 7])
  num_images = min(config.num_sample_images, dataset.num_pairs)
  fixed_x = [images.to_float(x) for x in
             dataset.batch(rng.choice(dataset.num_pairs, num_images, replace=False)).values()]
  content_dim = config.latent_dim - config.style_dim
  fixed_styles = [rng.standard_normal((num_images, config.style_dim), np.float32) for _ in mods]
  fixed_content = rng.standard_normal((num_images, content_dim), np.float32)
  sample_names, sample_fn = samples.make_sample_fn(gen, mods, config.style_dim)
  if main_process:
    os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)

  writer = metric_writers.create_default_writer(workdir, just_logging=not main_process,
                                                asynchronous=True)
  if start == 0:
    writer.write_hparams(_flatten(json.loads(config.to_json_best_effort())))

  def save(state):
    """Checkpoint (all processes), sample grid and loss curves (process 0) of the current step."""
    step = checkpointer.save(state)
    if not main_process:
      return
    # On this process's copy of the EMA weights: no other process takes part.
    rows = jax.device_get(sample_fn(distributed.local(state.ema_params), fixed_x, fixed_styles,
                                    fixed_content, jax.random.PRNGKey(config.seed)))
    grid = samples.write_grid(sample_names, rows,
                              os.path.join(workdir, 'samples', f'step_{step:07d}.png'))
    writer.write_images(step, {'samples': grid})
    writer.flush()
    curves.write_loss_curves(workdir, os.path.join(workdir, 'loss_curves.png'))

  report = ProgressReport(num_train_steps=config.num_train_steps, writer=writer,
                          every_steps=config.log_every_steps)
  # The reference evaluates every 50,000 iterations and after the last one; 0 turns it off.
  eval_every = default_config.eval_config(config).every_steps
  evaluator = evaluator_lib.Evaluator(config, workdir)  # built on its first run
  pending = []  # (number of steps, their mean metrics on the device)
  boundaries = (config.log_every_steps, config.checkpoint_every_steps, eval_every)
  try:
    for step, num_steps in dispatch_sizes(start, config.num_train_steps,
                                          steps_per_dispatch(config), boundaries):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_steps(state, data, num_steps)
      pending.append((num_steps, metrics))
      done = step + num_steps
      report(done)
      if done % config.log_every_steps == 0 or done == config.num_train_steps:
        counts, values = zip(*pending)
        averaged = jax.tree.map(lambda *v: float(np.average(v, weights=counts)),
                                *distributed.local(values))
        pending = []
        if not all(np.isfinite(v) for v in averaged.values()):
          raise FloatingPointError(f'Non-finite loss at step {done}: {averaged}. The last good '
                                   f'checkpoint in {workdir} is kept.')
        writer.write_scalars(done, averaged)
      if done % config.checkpoint_every_steps == 0 or done == config.num_train_steps:
        save(state)
      if eval_every and (done % eval_every == 0 or done == config.num_train_steps):
        if done % config.checkpoint_every_steps and done != config.num_train_steps:
          save(state)  # every evaluated step has its checkpoint, to evaluate again later
        if main_process:  # once, on this process's copy of the EMA weights
          with report.excluded('eval'):
            results = evaluator.run(distributed.local(state.ema_params), done)
          writer.write_scalars(done, {f'eval/{k}': v for k, v in results.items() if k != 'step'})
  finally:
    checkpointer.close()
    writer.flush()
  return state
