"""The one training loop: data, state, resume, the jitted step on a device mesh, logs, saves."""
import concurrent.futures
import contextlib
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
from mmali_jax import images
from mmali_jax import networks
from mmali_jax import samples
from mmali_jax import train_step as train_step_lib
from mmali_jax.data import pipeline
from mmali_jax.evaluators import evaluator as evaluator_lib

# Fields that may change between runs on one workdir (how long and how verbosely to train, where
# the data lives); any other change would make the checkpoints mean something else.
RESUMABLE_FIELDS = ('num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints', 'num_devices', 'data.tfds_data_dir', 'eval')


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


def make_mesh(config):
  devices = jax.local_devices()
  if config.num_devices is not None:
    if not 1 <= config.num_devices <= len(devices):
      raise ValueError(f'config.num_devices={config.num_devices}, but {len(devices)} local '
                       'devices are available.')
    devices = devices[:config.num_devices]
  if config.batch_size % len(devices):
    raise ValueError(f'config.batch_size={config.batch_size} is not divisible by the '
                     f'{len(devices)} devices the batch is sharded over; pick a multiple of '
                     f'{len(devices)} (or set config.num_devices).')
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def compile_train_step(config, gen, disc, mods, mesh):
  """The train step jitted data-parallel over `mesh`: parameters and optimizer states replicated,
  every batch split along the 'data' axis. The loss is a mean over the global batch, so XLA
  averages the gradients across devices and the result matches a single device up to float
  rounding. -> (step_fn, replicated sharding, batch sharding)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  step_fn = jax.jit(train_step_lib.make_train_step(config, gen, disc, mods),
                    in_shardings=(replicated, data_sharded),
                    out_shardings=(replicated, replicated), donate_argnums=0)
  return step_fn, replicated, data_sharded


def _comparable(config_dict):
  """Flattened config, with discriminator aliases resolved (so 'joint' resumes 'monolithic')."""
  flat = _flatten(config_dict)
  if 'discriminator' in flat:
    flat['discriminator'] = default_config.discriminator_kind(flat['discriminator'])
  return flat


def _check_workdir_config(config, workdir):
  """Writes <workdir>/config.json, or refuses to resume a run made with a different config."""
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
  with open(path + '.tmp', 'w') as f:
    json.dump(current, f, indent=2)
  os.replace(path + '.tmp', path)


class ProgressReport(periodic_actions.ReportProgress):
  """clu's progress report (steps/s, ETA, share of time per part), whose steps/s and ETA leave
  out the time spent in `excluded` blocks (evaluation), which would otherwise distort both."""

  @contextlib.contextmanager
  def excluded(self, name):
    start = time.monotonic()
    with self.timed(name, wait_jax_async_dispatch=False):
      yield
    if self._previous_time is not None:
      # Rates are (step - previous step) / (now - previous time): skip the block's duration.
      self._previous_time += time.monotonic() - start


class _Prefetcher:
  """Gathers the batches of upcoming iterations on a host thread while the device trains."""

  def __init__(self, sampler, start, stop, depth=2):
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._sampler = sampler
    self._stop = stop
    self._queue = [self._pool.submit(sampler, s) for s in range(start, min(start + depth, stop))]
    self._next = start + len(self._queue)

  def get(self):
    batch = self._queue.pop(0).result()
    if self._next < self._stop:
      self._queue.append(self._pool.submit(self._sampler, self._next))
      self._next += 1
    return batch

  def close(self):
    self._pool.shutdown(wait=False, cancel_futures=True)


def train_and_evaluate(config, workdir):
  """Trains (or resumes) the run in `workdir` up to config.num_train_steps; returns the state."""
  check_config(config)
  mesh = make_mesh(config)
  mods, gen, disc = networks.build(config)
  os.makedirs(workdir, exist_ok=True)
  _check_workdir_config(config, workdir)

  dataset = pipeline.load_dataset(config, 'train')
  logging.info('%d training tuples of %s.', dataset.num_pairs, dataset.names)
  sampler = pipeline.BatchSampler(dataset, config.batch_size, config.seed, config.data.unpaired)

  step_fn, replicated, data_sharded = compile_train_step(config, gen, disc, mods, mesh)
  state = train_step_lib.create_train_state(config, gen, disc, mods)
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  restored = checkpointer.restore(state)
  if restored is not None:
    state = restored
    logging.info('Resumed %s from step %d.', workdir, int(state.step))
  state = jax.device_put(state, replicated)
  start = int(state.step)
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
  os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  if start == 0:
    writer.write_hparams(_flatten(json.loads(config.to_json_best_effort())))

  def save(state):
    """Checkpoint, sample grid and loss curves of the current step."""
    step = checkpointer.save(state)
    rows = jax.device_get(sample_fn(state.ema_params, fixed_x, fixed_styles, fixed_content,
                                    jax.random.PRNGKey(config.seed)))
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
  prefetcher = _Prefetcher(sampler, start, config.num_train_steps)
  pending = []
  try:
    for step in range(start, config.num_train_steps):
      batch = jax.device_put(prefetcher.get(), data_sharded)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = step_fn(state, batch)
      pending.append(metrics)
      done = step + 1
      report(done)
      if done % config.log_every_steps == 0 or done == config.num_train_steps:
        averaged = jax.tree.map(lambda *v: float(np.mean(v)), *jax.device_get(pending))
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
        with report.excluded('eval'):
          results = evaluator.run(state.ema_params, done)
        writer.write_scalars(done, {f'eval/{k}': v for k, v in results.items() if k != 'step'})
  finally:
    prefetcher.close()
    checkpointer.close()
    writer.flush()
  return state
