"""The one training loop: data, state, resume, the jitted step on a device mesh, logs, saves."""
import contextlib
import copy
import dataclasses
import functools
import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mmali_jax import checkpointing
from mmali_jax import config_checks
from mmali_jax import console
from mmali_jax import curves
from mmali_jax import default_config
from mmali_jax import distributed
from mmali_jax import images
from mmali_jax import networks
from mmali_jax import preemption
from mmali_jax import programs
from mmali_jax import samples
from mmali_jax import train_step as train_step_lib
from mmali_jax import writers
from mmali_jax.data import pipeline
from mmali_jax.data import sources
from mmali_jax.evaluators import evaluator as evaluator_lib

# Fields that may change between runs on one workdir (how long and how verbosely to train, where
# the data lives, how the same numbers are computed); any other change would make the checkpoints
# mean something else.
RESUMABLE_FIELDS = ('num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                    'keep_checkpoints', 'num_devices', 'steps_per_dispatch',
                    'power_iterations_up_front', 'batch_discriminator_calls',
                    'data.tfds_data_dir', 'eval')
# matmul_precision is not among them: it changes the numbers a run computes.
TRAIN_DATA_FILE = 'train_data.json'  # the fingerprint of the data a run trains on
# How long the other processes of a multi-process job wait for process 0's evaluation: its probes
# and classifiers take minutes on a GPU, and can take hours on a CPU.
EVALUATION_TIMEOUT_S = 24 * 3600


def _flatten(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def check_workdir(workdir):
  """The workdir is a directory this process can write, or can be created: checked before
  anything is loaded or written (nothing is created here)."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise config_checks.ConfigError(f'--workdir={workdir} is a file, not a directory; pass a '
                                    'directory (it is created if missing).')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise config_checks.ConfigError(f'--workdir={workdir} cannot be written ({existing} is not a '
                                    'writable directory); pass a directory you can write to.')


def make_mesh(config):
  """A 'data' mesh over every device of the job (of every process in a multi-process job)."""
  devices = jax.devices()
  if config.num_devices is not None:
    if jax.process_count() > 1:
      raise config_checks.ConfigError('config.num_devices limits the devices of a single-process '
                                      'run; a multi-process job uses all of them (leave it unset).')
    if not 1 <= config.num_devices <= len(devices):
      raise config_checks.ConfigError(f'config.num_devices={config.num_devices}, but '
                                      f'{len(devices)} devices are available.')
    devices = devices[:config.num_devices]
  if config.batch_size % len(devices):
    where = f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''
    raise config_checks.ConfigError(
        f'config.batch_size={config.batch_size} is not divisible by the {len(devices)} '
        f'devices{where} the batch is sharded over; pick a multiple of {len(devices)}'
        + ('.' if where else ' (or set config.num_devices).'))
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
  device up to float rounding. -> (fn(state, data, num_steps), shardings); except on CPU the
  state is donated and, unless the config says otherwise, the power iterations run up front
  and the calls of each discriminator run as one (`train_step.power_iterations_up_front`,
  `train_step.batch_discriminator_calls`). Kept for the process (`programs`): a later run of
  a config that differs only in what the step never reads gets the same function, already traced
  and compiled.
  """
  donate = donates_state(mesh)

  def build():
    shardings = make_shardings(mesh)
    # A copy: a later change to the caller's config must not reach a retrace (another num_steps).
    fn = jax.jit(train_step_lib.make_train_steps(copy.deepcopy(config), gen, disc, mods,
                                                 shardings, mesh.devices.flat[0].platform),
                 static_argnums=2, in_shardings=(shardings.replicated, shardings.replicated),
                 out_shardings=(shardings.replicated, shardings.replicated),
                 donate_argnums=0 if donate else ())
    return fn, shardings

  return programs.kept('train_steps', (programs.config_key(config),
                                       programs.networks_key(gen, disc, mods), mesh, donate), build)


def donates_state(mesh):
  """Whether the step updates the state in place (donating it), which saves a second copy of it
  in device memory. Not on CPU: there the in-place updates order the step's operations (each
  parameter may be overwritten only after its last read, and XLA copies those it cannot order),
  so fewer of them run side by side on the cores: without donation the MultiMNIST step took
  12-19% less time on a 2-core Xeon (docs/performance.md); memory is no constraint there."""
  return mesh.devices.flat[0].platform != 'cpu'


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


def check_workdir_config(config, workdir, write=True):
  """Writes <workdir>/config.json (if `write`), or refuses to resume a run made with a different
  config."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    try:  # Fields added to the code since the run was stored count with their defaults.
      saved = json.loads(default_config.from_dict(saved).to_json_best_effort())
    except (TypeError, ValueError, KeyError, AttributeError):
      pass
    ignore = lambda k: any(k == f or k.startswith(f + '.') for f in RESUMABLE_FIELDS)
    details = _changes(_comparable(saved), _comparable(current), ignore, ', ', repr)
    if details:
      raise checkpointing.WorkdirConfigError(
          f'{workdir} holds a run with a different config ({details}). Nothing in it was '
          'changed; use a new --workdir, or the original config to resume.')
  if write:
    writers.write_atomically(path, json.dumps(current, indent=2))


def _changes(saved, current, ignore, sep, show):
  """'key: saved -> current' for every key whose values differ (and not `ignore(key)`)."""
  changed = sorted(k for k in set(saved) | set(current)
                   if not ignore(k) and saved.get(k) != current.get(k))
  return sep.join(f'{k}: {show(saved.get(k))} -> {show(current.get(k))}' for k in changed)


def check_workdir_data(fingerprint, workdir, resuming):
  """Refuses to resume a run on other training data than it started with (another TFDS version,
  data.tfds_data_dir pointing at other files, another pairing): the (seed, step) sampler would
  draw other batches than the uninterrupted run."""
  path = os.path.join(workdir, TRAIN_DATA_FILE)
  if resuming and not os.path.exists(path):
    logging.warning('%s was started before runs recorded their training data (train_data.json): '
                    'whether this command loads the same data cannot be checked; from now on it '
                    'is checked against the data loaded now.', workdir)
  elif resuming:
    with open(path) as f:
      details = _changes(json.load(f), fingerprint, lambda k: False, '; ', str)
    if details:
      raise checkpointing.WorkdirConfigError(
          f'{workdir} holds a run trained on other data than this command loads ({details}; '
          'shape, dtype, sha256). Nothing in it was changed; point data.tfds_data_dir at the data '
          'the run started with, or use a new --workdir.')


def _checked_average(pending, workdir, saved_step):
  """The mean of the pending dispatches' metrics, weighted by their numbers of steps; a
  non-finite term stops the run, naming the steps and the terms."""
  for first, num_steps, metrics in pending:
    values = distributed.local(metrics)
    bad = sorted(k for k, v in values.items() if not np.isfinite(v))
    if bad:
      steps = f'step {first + 1}' if num_steps == 1 else f'steps {first + 1}-{first + num_steps}'
      raise NonFiniteError(
          f'Non-finite loss at {steps}: {", ".join(f"{k}={values[k]}" for k in bad)}. Nothing '
          f'after step {saved_step} was written; the last checkpoint in {workdir} is kept. Try a '
          'smaller learning rate or another seed.')
  counts = [n for _, n, _ in pending]
  return jax.tree.map(lambda *v: float(np.average(v, weights=counts)),
                      *distributed.local([m for _, _, m in pending]))


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite_state(state, step, workdir, saved_step):
  trained = {'generators': state.gen_params, 'discriminators': state.disc_params,
             'ema': state.ema_params}
  bad = [k for k, v in trained.items() if not bool(distributed.local(_all_finite(v)))]
  if bad:
    raise NonFiniteError(f'Non-finite parameters ({", ".join(bad)}) after step {step}. Nothing '
                         f'after step {saved_step} was written; the last checkpoint in {workdir} '
                         'is kept.')


class NonFiniteError(FloatingPointError):
  """A loss term or a parameter became NaN or infinite; nothing after the last checkpoint is
  written."""


class ProgressReport(writers.periodic_actions.ReportProgress):
  """clu's progress report (steps/s, ETA, share of time per part), whose steps/s and ETA leave
  out the time spent in `excluded` blocks (compiling, evaluation), which would otherwise distort
  both."""

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
  # The same config everywhere first: then a config error stops every process alike.
  distributed.check_same(config.to_json_best_effort(sort_keys=True), 'configs',
                         'Start every process with the same command and flags.')
  config_checks.check(config)
  # A block that may fail on some processes only (data missing on one host, a file process 0
  # alone writes) stops them all with its message, rather than leaving the others waiting.
  together = functools.partial(distributed.stopping_together,
                               user_errors=console.user_errors())
  with together('before training'):
    mesh = make_mesh(config)
    mods, gen, disc = networks.build(config)
    check_workdir(workdir)
    check_workdir_config(config, workdir, write=False)
    # Every missing dataset of the experiment at once, before the first one is loaded.
    sources.ensure_prepared([(m.dataset, m.feature) for m in mods], config.data.tfds_data_dir)
    dataset = pipeline.load_dataset(config, 'train')
    config_checks.check_images(mods, dataset)
    config_checks.check_training_data(config, dataset)
  main_process = distributed.is_main_process()
  logging.info('%d training tuples of %s.', dataset.num_pairs, dataset.names)
  fingerprint = dataset.fingerprint()
  distributed.check_same(json.dumps(fingerprint, sort_keys=True), 'training data',
                         'Give every process the same data (data.tfds_data_dir, TFDS version).')
  os.makedirs(workdir, exist_ok=True)
  eval_every = default_config.eval_config(config).every_steps
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints, keep_every=eval_every)
  try:
    with together('while checking the workdir'):
      check_workdir_data(fingerprint, workdir, resuming=checkpointer.latest_step() is not None)
  except Exception:
    checkpointer.close()
    raise
  train_steps, shardings = compile_train_steps(config, gen, disc, mods, mesh)
  data = distributed.replicate(train_step_lib.device_data(dataset, config.seed),
                               shardings.replicated)
  state = distributed.replicate(train_step_lib.create_train_state(config, gen, disc, mods),
                                shardings.replicated)
  pending = []  # (first step, number of steps, their mean metrics) not yet logged
  restored = checkpointer.restore(state)
  if restored is not None:
    state, pending = restored  # the losses of a run stopped between two logging steps
    logging.info('Resumed %s from step %d.', workdir, int(distributed.local(state.step)))
  start = int(distributed.local(state.step))
  if start >= config.num_train_steps:
    logging.info('%s has already trained %d >= %d steps; nothing to do.', workdir, start,
                 config.num_train_steps)
    if pending:  # Stopped between two logging steps, and now asked to end there: log them.
      writer = writers.create(workdir, main_process)
      writer.write_scalars(start, _checked_average(pending, workdir, start))
      writer.close()
    checkpointer.close()
    return state
  # Written once training is certain to go on: a rerun with nothing to do leaves the stored config
  # (and the number of steps it names) as the run made it. Process 0 writes; the others wait.
  with together("while writing the run's files"):
    check_workdir_config(config, workdir, write=main_process)
    if main_process:
      writers.write_atomically(os.path.join(workdir, TRAIN_DATA_FILE),
                               json.dumps(fingerprint, indent=2))
      os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)

  # Fixed inputs and noise for the sample grids, the same at every checkpoint and on resume.
  rng = np.random.default_rng([config.seed, 7])
  num_images = min(config.num_sample_images, dataset.num_pairs)
  fixed_x = [images.to_float(x) for x in
             dataset.batch(rng.choice(dataset.num_pairs, num_images, replace=False)).values()]
  content_dim = config.latent_dim - config.style_dim
  fixed_styles = [rng.standard_normal((num_images, config.style_dim), np.float32) for _ in mods]
  fixed_content = rng.standard_normal((num_images, content_dim), np.float32)
  sample_names, sample_fn = samples.make_sample_fn(gen, mods, config.style_dim)

  writer = writers.create(workdir, main_process)
  loss_curves = None
  if main_process:  # drawn from what is logged, in the background (training never waits for it)
    loss_curves = curves.LossCurves(workdir)
    writer = writers.metric_writers.MultiWriter([writer, loss_curves])
  # With several processes, an error writing the logs stops them all at the next checkpoint.
  writer = writers.DeferringWriter(writer, defer=jax.process_count() > 1)
  if start == 0:
    writer.write_hparams(_flatten(json.loads(config.to_json_best_effort())))

  def save(state, pending):
    """Checkpoint (all processes) with the metrics not yet logged, sample grid and loss curves
    (process 0, the curves in the background) of the current step."""
    step = checkpointer.save(state, [(first, n, {k: float(v) for k, v in
                                                 distributed.local(m).items()})
                                     for first, n, m in pending])
    with together(f'while writing the logs and samples of step {step}'):
      writer.raise_deferred()  # a log that failed since the last checkpoint
      if main_process:  # on its copy of the EMA weights: no other process takes part
        rows = jax.device_get(sample_fn(distributed.local(state.ema_params), fixed_x,
                                        fixed_styles, fixed_content,
                                        jax.random.PRNGKey(config.seed)))
        grid = samples.write_grid(sample_names, rows,
                                  os.path.join(workdir, 'samples', f'step_{step:07d}.png'))
        writer.write_images(step, {'samples': grid})
        loss_curves.update()
      writer.flush()  # what failed in the background (clu writes there) comes up here
      writer.raise_deferred()

  report = ProgressReport(num_train_steps=config.num_train_steps, writer=writer,
                          every_steps=config.log_every_steps)
  # The reference evaluates every 50,000 iterations and after the last one; 0 turns it off.
  evaluator = evaluator_lib.Evaluator(config, workdir)  # built on its first run
  boundaries = (config.log_every_steps, config.checkpoint_every_steps, eval_every)
  saved_step = start
  stop = preemption.StopRequest()
  compiled = {}  # num_steps -> the compiled program
  try:
    for dispatch, (step, num_steps) in enumerate(dispatch_sizes(
        start, config.num_train_steps, steps_per_dispatch(config), boundaries)):
      if num_steps not in compiled:
        # Not training time: a dispatch size first met later (the last, shorter dispatch; a
        # resume off the log grid) would otherwise show as a drop in steps/s and stretch the ETA.
        with report.excluded('compile'):
          compiled[num_steps] = train_steps.lower(state, data, num_steps).compile()
          # A program's first run sets up its collectives between processes, and on CPU (gloo)
          # that waits only 30 s for the other processes: after compiling (whose time differs
          # between processes), they start it together.
          distributed.barrier(f'mmali_train_steps_{num_steps}_from_step_{step}')
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = compiled[num_steps](state, data)
      if dispatch == 0 and pending and set(pending[-1][2]) != set(metrics):
        # Carried over from a checkpoint of code with other loss terms: they cannot be averaged
        # with this code's, so they are logged on their own, at the step they end.
        ended = pending[-1][0] + pending[-1][1]
        logging.warning('The losses of steps %d-%d, stored in the checkpoint, name other terms '
                        'than this code computes; they are logged at step %d on their own.',
                        pending[0][0] + 1, ended, ended)
        writer.write_scalars(ended, _checked_average(pending, workdir, saved_step))
        pending = []
      pending.append((step, num_steps, metrics))
      done = step + num_steps
      report(done)
      last = done == config.num_train_steps
      log_now = done % config.log_every_steps == 0 or last
      save_now = done % config.checkpoint_every_steps == 0 or last
      eval_now = eval_every and (done % eval_every == 0 or last)
      preempted = stop.requested(dispatch)
      if log_now or save_now or eval_now or preempted:
        # Nothing non-finite reaches a log, a checkpoint or an evaluation.
        averaged = _checked_average(pending, workdir, saved_step)
        _check_finite_state(state, done, workdir, saved_step)
        if log_now or save_now or eval_now:
          writer.write_scalars(done, averaged)
          pending = []
        else:  # Stopped between two logging steps: the checkpoint carries them to the next.
          logging.info('Losses of steps %d-%d: %s (logged with the next logging step once '
                       'resumed).', pending[0][0] + 1, done, averaged)
      if save_now or eval_now or preempted:
        save(state, pending)  # every evaluated step has its checkpoint, to evaluate again later
        saved_step = done
      if eval_now:
        with report.excluded('eval'):
          # The evaluated step's checkpoint is on disk before its results are (every process
          # waits, as every process saves): a run stopped during an evaluation leaves no
          # results of a checkpoint it never wrote.
          checkpointer.wait()
          # Once, on process 0's copy of the EMA weights. The others wait for it here rather
          # than in the next step, so that an evaluation that fails stops them too.
          with together(f'while evaluating step {done}', timeout_s=EVALUATION_TIMEOUT_S):
            if main_process:
              results = evaluator.run(distributed.local(state.ema_params), done)
        if main_process:
          writer.write_scalars(done, {f'eval/{k}': v for k, v in results.items() if k != 'step'})
      if preempted and not last:
        checkpointer.wait()
        raise preemption.Preempted(
            f'Stopped by {stop.reason} at step {done} of {config.num_train_steps}, after '
            f'writing the checkpoint of step {done} to {checkpointing.checkpoint_dir(workdir)}. '
            'Run the same command again to go on from there.')
    with together('while writing the logs'):  # the last evaluation's, or an error kept
      writer.flush()
      writer.raise_deferred()
      if loss_curves:
        loss_curves.close()
    if stop.reason == preemption.CTRL_C and jax.process_count() == 1:
      # Ctrl-C after the last step's check (during the last evaluation, say): the run is
      # complete, but a sweep must not go on. (Several processes stop at a sync point or not at
      # all, alike.)
      checkpointer.wait()
      raise preemption.Preempted(
          f'Stopped by {stop.reason} at the end of the run (step {config.num_train_steps}, its '
          f'checkpoint in {checkpointing.checkpoint_dir(workdir)}). Run the same command again '
          'to go on with what is left (the other runs of a sweep; nothing of a single run).')
  finally:
    try:
      checkpointer.close()  # waits for the last save, still under the SIGTERM handler
    finally:
      stop.close()
    writer.flush()
    if loss_curves:
      loss_curves.close()
  return state
