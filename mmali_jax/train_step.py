"""The training state and one iteration: discriminator step, then generator step, then EMA.

The order and the optimisers follow docs/algorithm.md §5.
"""
import copy
import functools

import flax
import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from mmali_jax import batched_calls
from mmali_jax import images
from mmali_jax import networks
from mmali_jax import objectives
from mmali_jax import power_iterations
from mmali_jax import precision
from mmali_jax import programs
from mmali_jax.data import sampler
from mmali_jax.models import layers


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # iterations completed
  rng: jax.Array  # base key; iteration n uses fold_in(rng, n), so resuming replays the same draws
  gen_params: dict  # encoders and decoders
  disc_params: dict
  disc_stats: dict  # spectral-norm power-iteration vectors
  gen_opt_state: optax.OptState
  disc_opt_state: optax.OptState
  ema_params: dict  # EMA of gen_params, used for samples and evaluation


def make_optimizer(config):
  return optax.adam(config.optim.learning_rate, b1=config.optim.b1, b2=config.optim.b2)


def create_train_state(config, gen, disc, mods):
  """The initial state of `config.seed`, built as one compiled program: run op by op, Flax's
  initialisation of the MNIST-SVHN networks compiles hundreds of small programs and takes twice
  as long. The seed is an argument, so every seed of a config shares the program (kept for the
  process, `programs`)."""
  init = programs.kept(
      'initial_state', (programs.config_key(config), programs.networks_key(gen, disc, mods)),
      lambda: jax.jit(functools.partial(_initial_state, copy.deepcopy(config), gen, disc, mods)))
  return init(jax.random.PRNGKey(config.seed))


def _initial_state(config, gen, disc, mods, rng):
  rng, gen_rng, disc_rng, redraw_rng = jax.random.split(rng, 4)
  xs, zs, disc_inputs = networks.dummy_inputs(mods, config)
  gen_params = gen.init(gen_rng, xs, zs)['params']
  disc_vars = disc.init(disc_rng, *disc_inputs, update_stats=False)
  disc_params = layers.reference_init(disc_vars['params'], redraw_rng)
  opt = make_optimizer(config)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      rng=rng,
      gen_params=gen_params,
      disc_params=disc_params,
      disc_stats=disc_vars['batch_stats'],
      gen_opt_state=opt.init(gen_params),
      disc_opt_state=opt.init(disc_params),
      # A real copy: the EMA tree is donated separately from gen_params.
      ema_params=jax.tree.map(jnp.copy, gen_params),
  )


def ema_update(ema_params, params, step, decay, start_step):
  """theta_ema <- decay * theta_ema + (1 - decay) * theta after iteration `step` > start_step;
  before that an exact copy (the reference's warm-up)."""
  step_size = jnp.where(step > start_step, 1.0 - decay, 1.0)
  return optax.incremental_update(params, ema_params, step_size)


def power_iterations_up_front(config, platform=None):
  """config.power_iterations_up_front, or automatically: on accelerators, not on CPU, and
  wherever the discriminator calls are batched (which needs them). platform: where the step runs
  ('cpu', 'gpu', ...; default JAX's default backend)."""
  if config.power_iterations_up_front is not None:
    return bool(config.power_iterations_up_front)
  return bool(config.batch_discriminator_calls) or (platform or jax.default_backend()) != 'cpu'


def batch_discriminator_calls(config, platform=None):
  """config.batch_discriminator_calls, or automatically: wherever the power iterations run up
  front (config_checks rejects asking for it without them)."""
  if config.batch_discriminator_calls is not None:
    return bool(config.batch_discriminator_calls)
  return power_iterations_up_front(config, platform)


def make_train_step(config, gen, disc, mods, platform=None, data_shards=1):
  """-> train_step(state, batch) -> (state, metrics), one iteration on the given batches.

  `batch` maps 'a', 'b', 'b_marginals', 'c', 'd' to a list of uint8 images [B, H, W, C], one per
  modality in sorted order. data_shards: the devices the batch is split over.
  """
  objective = objectives.OBJECTIVES[networks.discriminator_kind(config.discriminator)]
  opt = make_optimizer(config)
  up_front = power_iterations_up_front(config, platform)
  batched = batch_discriminator_calls(config, platform)

  def planned(loss_fn, params):
    """loss_fn with the phase's power iterations run before its calls and its calls of each
    discriminator run as one, where configured."""
    if not up_front:
      return loss_fn
    calls = power_iterations.record_calls(loss_fn, params)
    if batched:
      return batched_calls.batched(loss_fn, calls, data_shards)
    return functools.partial(loss_fn, calls=calls)

  def train_step(state, batch):
    rng_d, rng_g = jax.random.split(jax.random.fold_in(state.rng, state.step))
    xs = {key: [images.to_float(x) for x in per_modality] for key, per_modality in batch.items()}

    def d_loss_fn(disc_params, calls=None):
      nets = networks.Bound(gen, disc, state.gen_params, disc_params, state.disc_stats,
                            config.style_dim, config.spectral_norm_estimates, calls)
      loss, metrics = objective.discriminator_loss(nets, xs, rng_d, config, mods)
      return loss, (metrics, nets.disc_stats)

    (d_loss, (d_metrics, disc_stats)), d_grads = jax.value_and_grad(
        planned(d_loss_fn, state.disc_params), has_aux=True)(state.disc_params)
    d_updates, disc_opt_state = opt.update(d_grads, state.disc_opt_state, state.disc_params)
    disc_params = optax.apply_updates(state.disc_params, d_updates)

    def g_loss_fn(gen_params, calls=None):
      nets = networks.Bound(gen, disc, gen_params, disc_params, disc_stats, config.style_dim,
                            config.spectral_norm_estimates, calls)
      loss, metrics = objective.generator_loss(nets, xs, rng_g, config, mods)
      return loss, (metrics, nets.disc_stats)

    (g_loss, (g_metrics, disc_stats)), g_grads = jax.value_and_grad(
        planned(g_loss_fn, state.gen_params), has_aux=True)(state.gen_params)
    g_updates, gen_opt_state = opt.update(g_grads, state.gen_opt_state, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, g_updates)

    new_state = state.replace(
        step=state.step + 1,
        gen_params=gen_params,
        disc_params=disc_params,
        disc_stats=disc_stats,
        gen_opt_state=gen_opt_state,
        disc_opt_state=disc_opt_state,
        ema_params=ema_update(state.ema_params, gen_params, state.step, config.ema.decay,
                              config.ema.start_step),
    )
    metrics = {'d/total': d_loss, 'g/total': g_loss, **d_metrics, **g_metrics}
    return new_state, metrics

  return train_step


def make_train_steps(config, gen, disc, mods, batch_sharding=None, platform=None):
  """-> train_steps(state, data, num_steps) -> (state, metrics): `num_steps` iterations in one
  call (`num_steps` is static), their batches drawn on the device from (seed, step).

  data: {'images': (uint8 [N_m, H, W, C] per modality), 'pairs': int32 [P, M], 'key': the data
  key}, resident on the devices (`device_data`). The returned metrics are the means over the
  `num_steps` iterations, reduced on the device. batch_sharding: where the batch of an
  iteration lives (split over the 'data' mesh axis), or None. platform: where the steps run
  (default JAX's default backend).
  """
  train_step = make_train_step(
      config, gen, disc, mods, platform,
      1 if batch_sharding is None else batch_sharding.images.mesh.shape['data'])
  unpaired = bool(config.data.unpaired)

  def one_step(state, data, indices):
    if batch_sharding is not None:
      indices = jax.lax.with_sharding_constraint(indices, batch_sharding.indices)
    batch = sampler.gather(data['images'], data['pairs'], indices, unpaired)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding.images)
    return train_step(state, batch)

  step = one_step
  if config.matmul_precision == precision.EMULATED_TF32:
    step = precision.emulate_tf32(one_step)

  def train_steps(state, data, num_steps):
    # The batches of all the call's iterations are drawn before its loop: they depend on
    # (seed, step) alone, and the sampler's loops of data-dependent length (cycle walking, one
    # per stream), each trip of which waits on the device on a GPU, then run once per call, not
    # once per iteration.
    indices = sampler.batch_indices_of_steps(
        data['key'], state.step, num_steps, data['pairs'].shape[0],
        [x.shape[0] for x in data['images']], config.batch_size, unpaired)
    with jax.default_matmul_precision(precision.jax_precision(config.matmul_precision)):
      if num_steps == 1:
        return step(state, data, jax.tree.map(lambda i: i[0], indices))
      # Each iteration's metrics leave the loop as one vector: stacked one by one, every
      # metric is a kernel of its own in every iteration on a GPU.
      unravel = []

      def body(state, i):
        state, metrics = step(state, data, i)
        flat, restore = flatten_util.ravel_pytree(metrics)
        unravel.append(restore)
        return state, flat

      state, metrics = jax.lax.scan(body, state, indices)
      return state, unravel[0](jnp.mean(metrics, axis=0))

  return train_steps


def data_key(seed):
  """The key of the training batch streams (independent of the parameter and noise keys)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED)


def device_data(dataset, seed):
  """The arrays `train_steps` samples from (host numpy; put them on the devices)."""
  return {'images': tuple(m.images for m in dataset.modalities),
          'pairs': dataset.pairs.astype(np.int32),
          'key': data_key(seed)}
