"""Builds the Flax modules for a config and binds them to parameters for the objectives."""
import jax
import jax.numpy as jnp
from flax import traverse_util

from mmali_jax import batched_calls
from mmali_jax import config_checks
from mmali_jax import default_config
from mmali_jax import modalities as modalities_lib
from mmali_jax import posterior
from mmali_jax import power_iterations
from mmali_jax.models import discriminators
from mmali_jax.models import generators
from mmali_jax.models import spectral

discriminator_kind = default_config.discriminator_kind


def build(config):
  """-> (modalities, generator module, discriminator module) for the config (checked first)."""
  config_checks.check(config)
  mods = modalities_lib.from_config(config)
  gen = generators.Generators(mods, config.latent_dim)
  if discriminator_kind(config.discriminator) == 'factorized':
    disc = discriminators.FactorizedDiscriminators(mods, config.joint_critic,
                                                   config.joint_critic_width)
  else:
    disc = discriminators.MonolithicDiscriminator(mods)
  return mods, gen, disc


def dummy_inputs(mods, config, batch_size=1):
  """Inputs with the right shapes, for initialisation."""
  xs = [jnp.zeros((batch_size,) + m.example_shape, jnp.float32) for m in mods]
  zs = [jnp.zeros((batch_size, config.latent_dim), jnp.float32) for _ in mods]
  if discriminator_kind(config.discriminator) == 'monolithic':
    content_dim = config.latent_dim - config.style_dim
    monolithic_z = jnp.zeros((batch_size, len(mods) * config.style_dim + content_dim),
                             jnp.float32)
    return xs, zs, (xs, monolithic_z)
  return xs, zs, (xs, zs)


class Bound:
  """The networks bound to parameters, called like functions inside a loss (one phase: the D step
  or the G step).

  Discriminators run in train mode. With `spectral_norm_estimates='per_call'` each call does one
  spectral-norm power iteration and the updated `disc_stats` are carried to the next call, as
  PyTorch's spectral_norm does. With 'per_phase' every call starts from the phase's stats, so all
  calls of a network compute the same power iteration (XLA computes it once, and the image
  branch of calls that score the same images once too) and see the same estimate; `disc_stats`
  ends one iteration on from the phase's.

  calls: None, each call runs its own power iterations; a list, the same, and each call is
  appended to it (`power_iterations.record_calls`); the tuple `record_calls` returns, the
  phase's power iterations run before its calls, batched over the layers whose kernels have one
  shape or nearby shapes (`power_iterations.Plan`): the same estimates; a
  `batched_calls.Session`, as the tuple, and the calls of each discriminator run as one (one pass
  of `batched_calls.batched`).
  """

  def __init__(self, gen, disc, gen_params, disc_params, disc_stats, style_dim,
               spectral_norm_estimates='per_call', calls=None):
    self.gen, self.disc = gen, disc
    self.gen_params, self.disc_params, self.disc_stats = gen_params, disc_params, disc_stats
    self.style_dim = style_dim
    if spectral_norm_estimates not in ('per_call', 'per_phase'):
      raise ValueError(f'spectral_norm_estimates={spectral_norm_estimates!r}')
    self._phase_stats = disc_stats if spectral_norm_estimates == 'per_phase' else None
    self._plan, self._record, self._session = None, None, None
    if isinstance(calls, batched_calls.Session):
      self._session = calls
      calls = calls.calls if calls.mode == batched_calls.REPLAY else None
    if isinstance(calls, tuple):
      self._plan = power_iterations.Plan(calls, disc_params, disc_stats,
                                         per_phase=spectral_norm_estimates == 'per_phase')
    elif calls is not None:
      self._record = calls

  @property
  def disc_stats(self):
    """The estimates as the calls so far have left them; with the power iterations run before
    the calls, the phase's final ones, to be read once all its calls are made."""
    if self._plan is not None:
      self._plan.check_done()
      return self._plan.final_stats
    return self._disc_stats

  @disc_stats.setter
  def disc_stats(self, value):
    self._disc_stats = value

  def _generate(self, method, m, x):
    run = lambda: self.gen.apply({'params': self.gen_params}, m, x, method=method)
    if self._session is None:
      return run()
    return self._session.generate((method, m, x.shape), run)

  def encode(self, m, x):
    """(mean, log-variance) of q(z | x_m)."""
    return self._generate('encode', m, x)

  def sample_posterior(self, rng, m, x):
    """A fresh sample z ~ q(z | x_m), and its (mean, log-variance)."""
    mean, logvar = self.encode(m, x)
    return posterior.sample(rng, mean, logvar), (mean, logvar)

  def decode(self, m, z):
    return self._generate('decode', m, z)

  def _given(self, call, args, estimates):
    """The call run with its layers' estimates given (power iterations up front)."""
    out, updates = self.disc.apply(
        {'params': self.disc_params, 'batch_stats': self._disc_stats, **estimates},
        *args, update_stats=True, method=call[0], mutable=['batch_stats'])
    given = traverse_util.flatten_dict(self._disc_stats)
    ran = [k for k, v in traverse_util.flatten_dict(updates['batch_stats']).items()
           if v is not given[k]]
    if ran:  # a layer not given an estimate ran its own power iteration
      raise RuntimeError(f'The discriminator call {call} ran power iterations of layers the '
                         f'traced phase did not: {sorted("/".join(k) for k in ran)}. Run with '
                         '--config.power_iterations_up_front=false.')
    return out

  def _output_shape(self, method, args):
    arrays = [a for a in args if not isinstance(a, int)]

    def apply(params, stats, arrays):
      it = iter(arrays)
      return self.disc.apply({'params': params, 'batch_stats': stats},
                             *[a if isinstance(a, int) else next(it) for a in args],
                             update_stats=False, method=method)

    return jax.eval_shape(apply, self.disc_params, self._disc_stats, arrays)

  def _run_batched(self):
    """Every call the first pass noted, one call per network, each row divided by its own
    call's estimates (batched_calls.py)."""
    session = self._session
    estimates = [self._plan.estimates(call) for call in session.discriminator_calls]
    outputs = [None] * len(estimates)
    for call, indices in session.groups():
      layers = {session.calls[i][1] for i in indices}
      if len(layers) != 1:
        raise RuntimeError(f'The calls {call} of the phase run different spectral-norm layers; '
                           'they cannot run as one. Run with '
                           '--config.batch_discriminator_calls=false.')
      args = [session.args(i) for i in indices]
      sizes = [batched_calls.batch_size(a) for a in args]
      shards = batched_calls.shards_for(sizes, session.shards)
      given = jax.tree.map(lambda *s: batched_calls.per_row(s, sizes, shards),  # pylint: disable=cell-var-from-loop
                           *[estimates[i] for i in indices])
      out = self._given(call, batched_calls.concatenate(args, shards), given)
      for i, piece in zip(indices, batched_calls.split(out, sizes, shards)):
        outputs[i] = piece
    session.set_outputs(outputs)

  def _discriminate(self, method, *args):
    call = (method,) + tuple(a for a in args if isinstance(a, int))  # e.g. ('unimodal', 1)
    if self._session is not None:
      if self._session.mode == batched_calls.RECORD:
        return self._session.note(call, args, self._output_shape(method, args))
      if not self._session.ran:
        self._run_batched()
      return self._session.output(call)
    if self._plan is not None:
      return self._given(call, args, self._plan.estimates(call))
    start = self._disc_stats if self._phase_stats is None else self._phase_stats
    mutable = ['batch_stats'] + ([spectral.ITERATIONS] if self._record is not None else [])
    out, updates = self.disc.apply(
        {'params': self.disc_params, 'batch_stats': start}, *args,
        update_stats=True, method=method, mutable=mutable)
    if self._phase_stats is None:
      self.disc_stats = updates['batch_stats']
    else:
      # The call returns every network's stats: its own one iteration on, the others' as the
      # very arrays it was given (Flax passes untouched variables through; tests/test_objectives
      # checks the result). Keep what it changed, the rest as earlier calls left it: chosen while
      # tracing, so it costs no operations.
      self.disc_stats = jax.tree.map(lambda new, old, cur: cur if new is old else new,
                                     updates['batch_stats'], start, self._disc_stats)
    if self._record is not None:
      self._record.append(
          (call, power_iterations.layers_run(call, updates.get(spectral.ITERATIONS, {}))))
    return out

  def d0(self, m, x, z):
    return self._discriminate('unimodal', m, x, z)

  def d1(self, m, x, z):
    return self._discriminate('content', m, x, z)

  def joint_critic(self, xs):
    return self._discriminate('joint_critic', xs)

  def monolithic(self, xs, z):
    return self._discriminate('__call__', xs, z)

  def style(self, z):
    return posterior.split_latent(z, self.style_dim)[0]

  def content(self, z):
    return posterior.split_latent(z, self.style_dim)[1]
