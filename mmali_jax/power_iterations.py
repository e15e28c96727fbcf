"""A phase's spectral-norm power iterations computed before its discriminator calls, batched.

In a D step or G step every discriminator call runs one power iteration on each of its layers
(docs/algorithm.md §5.4): a layer called K times in the phase goes through the chain
u_0 -> (u_1, sigma_1) -> ... -> (u_K, sigma_K), its k-th call dividing by sigma_k. The chain
depends on the weights only, never on the data, so it can run before the calls; and the chains
of layers whose kernels have one shape (each modality's D0, D1 and critic branch where the
modalities share an architecture, the image branches of D0, D1 and T), or nearby shapes padded
with zeros to the largest (`buckets`), can run as one batched chain. The calls then divide by
the sigma they are given. Same arithmetic, one power iteration per call as before (float
rounding aside: a batched or padded product may sum in another order); on a GPU the phase
launches a chain's few kernels per batch instead of per layer and call.

Which layers a call runs is found by tracing the phase once abstractly (`record_calls`): the
layers that note a power iteration in the call (a layer run twice in one call is an error). The
real trace must make the same calls in the same order, each running the layers given estimates,
and all of them before the phase's final estimates are read; anything else is an error.
"""
import collections
import functools

import jax
import jax.numpy as jnp
from flax import traverse_util

from mmali_jax.models import spectral

_U, _SIGMA = '/u', '/sigma'


def record_calls(loss_fn, *args):
  """The discriminator calls of `loss_fn(*args, calls=[])` (which passes `calls` to its
  `networks.Bound`), traced abstractly: a tuple of (call, the layers that ran a power iteration
  in it)."""
  calls = []
  jax.eval_shape(lambda *a: loss_fn(*a, calls=calls), *args)
  return tuple(calls)


def layers_run(call, iterations):
  """The layers (stats paths without the '/u' or '/sigma' ending) that ran a power iteration in
  `call`, from the collection its layers sowed them in (`spectral.ITERATIONS`)."""
  layers = []
  for layer, runs in traverse_util.flatten_dict(iterations).items():
    if len(runs) != 1:
      raise RuntimeError(
          f'The spectral-norm layer {"/".join(layer)} ran {len(runs)} power iterations in the '
          f'discriminator call {call}; run before the calls, the iterations give each call one '
          'estimate per layer. Use --config.power_iterations_up_front=false for such networks.')
    layers.append(layer)
  return tuple(layers)


def _kernel_path(layer):
  # (..., 'SpectralNorm_3', 'Dense_1/kernel') -> (..., 'Dense_1', 'kernel'): the layer's
  # parameters live in the module that created it (models/spectral.py).
  return layer[:-2] + tuple(layer[-1].split('/'))


# A layer's chain runs padded with zeros to a larger layer's shape, in that layer's batch, when
# this adds at most as many entries as it has, or at most this many: on a GPU a batch's chain is a
# few kernels per iteration whatever its size, and reading 2**18 floats more costs well under a
# kernel's launch.
_PADDING = 2**18


def buckets(shapes):
  """{layer: (rows, columns)} -> {bucket shape: [layers]}: the batches whose chains run together.

  Largest first, a layer joins the smallest batch whose shape covers its own if padding it
  to that shape adds at most max(its size, _PADDING) entries; otherwise it starts a batch of
  its shape."""
  out = {}
  for layer in sorted(shapes, key=lambda l: (-shapes[l][0] * shapes[l][1], l)):
    rows, cols = shapes[layer]
    fits = [s for s in out if s[0] >= rows and s[1] >= cols
            and s[0] * s[1] - rows * cols <= max(rows * cols, _PADDING)]
    out.setdefault(min(fits, key=lambda s: (s[0] * s[1], s)) if fits else (rows, cols),
                   []).append(layer)
  return out


def _pad(x, shape):
  return jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, shape)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _chains(matrices, us, shape, steps):
  """The power iterations of each matrix [r, c] from its u [c], all padded with zeros to
  `shape` and run as one batch for as many steps as the most any of them needs: -> (sigmas
  [steps, G], us [steps, G, shape[1]]). steps: the steps each matrix needs."""
  return _chains_fwd(matrices, us, shape, steps)[0]


def _chains_fwd(matrices, us, shape, steps):
  # Zero rows and columns leave a power iteration's u, v and sigma as they are.
  batch = jnp.stack([_pad(m, shape) for m in matrices])
  u = jnp.stack([_pad(x, shape[1:]) for x in us])
  chain = []
  for _ in range(max(steps)):
    u, sigma, v = jax.vmap(spectral.chain_step)(batch, u)
    chain.append((sigma, u, v))
  sigmas, new_us, vs = (jnp.stack(x) for x in zip(*chain))
  return (sigmas, new_us), (matrices, new_us, vs)


def _chains_bwd(shape, steps, residuals, grads):
  # Each sigma's gradient v u^T (spectral.power_iteration), summed over a matrix's steps, in the
  # matrix's own shape: an elementwise sum that fuses into the rest of the kernel's gradient,
  # instead of the batch's padded [G, rows, columns] per step, sliced and added per layer.
  del shape
  matrices, new_us, vs = residuals
  sigma_grads, _ = grads
  return (tuple(sum(sigma_grads[k, i] * jnp.outer(vs[k, i, :m.shape[0]], new_us[k, i, :m.shape[1]])
                    for k in range(n)) for i, (m, n) in enumerate(zip(matrices, steps))),
          None)


_chains.defvjp(_chains_fwd, _chains_bwd)


@jax.custom_vjp
def _unstack(x):
  """The entries of the vector x. Its gradient is one stack of theirs: differentiating x[i]
  for every i instead pads each entry's gradient to x's size and adds the pads, on a GPU a
  kernel per entry and step of every chain."""
  return tuple(x[i] for i in range(x.shape[0]))


def _unstack_fwd(x):
  return _unstack(x), None


def _unstack_bwd(_, grads):
  return (jnp.stack(grads),)


_unstack.defvjp(_unstack_fwd, _unstack_bwd)


class Plan:
  """The estimates of every call of a phase, computed when the plan is made.

  calls: `record_calls`'s result for the phase. per_phase: every call sees the estimate one
  iteration on from the phase's (spectral_norm_estimates='per_phase') instead of one iteration
  on from the previous call's."""

  def __init__(self, calls, disc_params, disc_stats, per_phase=False):
    self._calls = calls
    flat_params = traverse_util.flatten_dict(disc_params)
    flat_stats = traverse_util.flatten_dict(disc_stats)
    counts = collections.Counter(layer for _, layers in calls for layer in layers)
    if per_phase:
      counts = {layer: 1 for layer in counts}
    shapes = {}
    for layer in counts:
      kernel = flat_params[_kernel_path(layer)]
      shapes[layer] = (kernel.size // kernel.shape[-1], kernel.shape[-1])
    self._sigmas = {}  # layer -> [sigma_1 .. sigma_K]
    for shape, layers in buckets(shapes).items():
      with jax.named_scope('power_iteration'):  # named in profiles and kernel counts
        sigmas, us = _chains(
            tuple(flat_params[_kernel_path(l)].reshape(shapes[l]) for l in layers),
            tuple(flat_stats[l[:-1] + (l[-1] + _U,)][0] for l in layers), shape,
            tuple(counts[l] for l in layers))
      each = _unstack(sigmas.reshape(-1))  # step k, layer i at k * len(layers) + i
      for i, layer in enumerate(layers):
        self._sigmas[layer] = [each[k * len(layers) + i] for k in range(counts[layer])]
        u, sigma = us[counts[layer] - 1, i, :shapes[layer][1]], sigmas[counts[layer] - 1, i]
        flat_stats[layer[:-1] + (layer[-1] + _U,)] = u[None]
        flat_stats[layer[:-1] + (layer[-1] + _SIGMA,)] = sigma
    self.final_stats = traverse_util.unflatten_dict(flat_stats)
    self._per_phase = per_phase
    self._seen = collections.Counter()
    self._next = 0

  def estimates(self, call):
    """The {'spectral_estimates': ...} variables of the phase's next call, `call` as recorded."""
    if self._next >= len(self._calls) or self._calls[self._next][0] != call:
      expected = self._calls[self._next][0] if self._next < len(self._calls) else 'no more calls'
      raise RuntimeError(f'Discriminator call {self._next} of the phase is {call}, but the '
                         f'traced phase made {expected}: the objective must make the same calls '
                         'in the same order every time it is traced (or run with '
                         '--config.power_iterations_up_front=false).')
    layers = self._calls[self._next][1]
    self._next += 1
    flat = {}
    for layer in layers:
      k = 0 if self._per_phase else self._seen[layer]
      self._seen[layer] += 1
      flat[layer[:-1] + (layer[-1] + _SIGMA,)] = self._sigmas[layer][k]
    return {spectral.ESTIMATES: traverse_util.unflatten_dict(flat)}

  def check_done(self):
    """RuntimeError unless the phase has made all the calls it was traced with: the final
    estimates were computed for all of them."""
    if self._next != len(self._calls):
      raise RuntimeError(f'The phase made {self._next} discriminator calls, but was traced with '
                         f'{len(self._calls)}: the objective must make the same calls every time '
                         'it is traced (or run with --config.power_iterations_up_front=false).')
