"""A phase's discriminator calls run as one call per network, on their inputs concatenated.

With the power iterations up front (mmali_jax/power_iterations.py) every call of a D step or G
step is given its spectral-norm estimates before it runs, and a call's output depends only on
its inputs, the weights and those estimates: the calls of one network (D0_m, D1_m, the critic T,
the monolithic D) no longer depend on each other. So they can run as one call on the rows of all
of them, each row divided by its own call's sigma. Same arithmetic, row by row (float rounding
aside: a product over more rows may sum in another order); on a GPU a network's layers launch
their kernels once per phase instead of once per call, and a phase makes up to 20 calls
(MultiMNIST M=2's G step: 12 of the D0s, 6 of the D1s, 2 of T).

The objective stays as written, calling the networks one at a time; it is traced twice:

1. The first pass runs the generators and notes every discriminator call's inputs; the calls
   return zeros of their output's shape, and this pass's losses are discarded (nothing uses
   them: XLA removes them).
2. The calls of each network run as one (`Bound` does this at the second pass's first call).
3. The second pass computes the losses from the slices of those outputs. Each of its generator
   calls returns the first pass's result, so every network runs once per input and the gradient
   reaches it through one graph, not one per pass.

The second pass must make the same calls in the same order as the first; anything else is an
error.
"""
import jax
import jax.numpy as jnp
import numpy as np

RECORD, REPLAY = 'record', 'replay'


class Session:
  """The two passes' shared record: the generator calls' results and the discriminator calls.

  calls: `power_iterations.record_calls`'s result for the phase (the layers each call runs).
  shards: the blocks each call's batch is split into over the devices (the 'data' mesh axis)."""

  def __init__(self, calls, shards=1):
    self.calls, self.shards = calls, shards
    self.mode = RECORD
    self._generated = []  # [(key, output)]
    self._discriminated = []  # [(call, args)]
    self._outputs = None
    self._next_generated = self._next_discriminated = 0

  def replay(self):
    self.mode = REPLAY

  # Generators.
  def generate(self, key, run):
    """run() recorded in the first pass; its recorded result in the second, `key` checked."""
    if self.mode == RECORD:
      out = run()
      self._generated.append((key, out))
      return out
    i = self._next_generated
    self._next_generated += 1
    _check_same('Generator', i, key, self._generated)
    return self._generated[i][1]

  # Discriminators.
  def note(self, call, args, out_shape):
    """First pass: the call's inputs noted, zeros of its output's shape returned."""
    self._discriminated.append((call, args))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

  @property
  def ran(self):
    return self._outputs is not None

  def groups(self):
    """[(call, [indices of its calls])], the networks in the order of their first calls."""
    out = {}
    for i, (call, _) in enumerate(self._discriminated):
      out.setdefault(call, []).append(i)
    return list(out.items())

  def args(self, i):
    return self._discriminated[i][1]

  @property
  def discriminator_calls(self):
    return [call for call, _ in self._discriminated]

  def set_outputs(self, outputs):
    self._outputs = outputs

  def output(self, call):
    """Second pass: the next call's output, `call` checked against the first pass's."""
    i = self._next_discriminated
    self._next_discriminated += 1
    _check_same('Discriminator', i, call, self._discriminated)
    return self._outputs[i]

  def check_done(self):
    made = (self._next_generated, self._next_discriminated)
    expected = (len(self._generated), len(self._discriminated))
    if made != expected:
      raise RuntimeError(f'The phase\'s second pass made {made[0]} generator and {made[1]} '
                         f'discriminator calls, the first {expected[0]} and {expected[1]}: with '
                         'its discriminator calls batched the objective must make the same calls '
                         'every time it is traced (or run with '
                         '--config.batch_discriminator_calls=false).')


def _check_same(kind, i, key, first_pass):
  recorded = first_pass[i][0] if i < len(first_pass) else 'no more calls'
  if recorded != key:
    raise RuntimeError(f'{kind} call {i} of the phase\'s second pass is {key}, but the first made '
                       f'{recorded}: with its discriminator calls batched the objective must make '
                       'the same calls in the same order every time it is traced (or run with '
                       '--config.batch_discriminator_calls=false).')


def batched(loss_fn, calls, shards=1):
  """loss_fn(params, calls=...) -> (loss, aux) with the phase's discriminator calls batched per
  network: the two passes above. calls: `power_iterations.record_calls(loss_fn, params)`;
  shards: the devices a batch is split over."""

  def fn(params):
    session = Session(calls, shards)
    loss_fn(params, calls=session)  # the generators, and the calls' inputs
    session.replay()
    out = loss_fn(params, calls=session)
    session.check_done()
    return out

  return fn


def batch_size(args):
  return next(x for x in jax.tree.leaves(args) if not isinstance(x, int)).shape[0]


# The layout of a batched call's rows. Data-parallel, every call's batch is split over the
# devices in `shards` blocks; the batched call's rows are laid out block by block, each block
# holding every call's rows of one device ([a_0, b_0, ..., a_1, b_1, ...]), so that each device
# concatenates, divides and splits its own rows. Concatenating whole batches ([a, b]) would move
# rows between devices at every batched call (XLA's partitioner inserts collectives: for
# MultiMNIST M=2 on 8 devices, 77 all-gathers and 266 collective permutes per iteration).
# One device: one block, the plain concatenation.

def _blocks(x, shards):
  return x.reshape((shards, x.shape[0] // shards) + x.shape[1:])


def _rows(x):
  return x.reshape((-1,) + x.shape[2:])


def _join(pieces, shards):
  """Arrays [rows_k, ...] -> one [sum rows_k, ...] laid out block by block."""
  if shards == 1:  # the plain concatenation: as one block it takes a few GPU kernels more
    return jnp.concatenate(pieces, axis=0)
  return _rows(jnp.concatenate([_blocks(p, shards) for p in pieces], axis=1))


def _part(x, sizes, shards):
  """`_join`'s inverse."""
  if shards == 1:
    return jnp.split(x, np.cumsum(sizes)[:-1], axis=0)
  ends = np.cumsum([n // shards for n in sizes])[:-1]
  return [_rows(p) for p in jnp.split(_blocks(x, shards), ends, axis=1)]


def shards_for(sizes, shards):
  """`shards` where every call's batch splits evenly into them, else 1 (correct, but then the
  rows move between devices)."""
  return shards if all(n % shards == 0 for n in sizes) else 1


def concatenate(args_of_calls, shards=1):
  """The calls' arguments, each [rows, ...], as one batch laid out block by block (above);
  integers, the call's own, kept."""
  return tuple(a[0] if isinstance(a[0], int) else
               jax.tree.map(lambda *xs: _join(xs, shards), *a)
               for a in zip(*args_of_calls))


def per_row(values, sizes, shards=1):
  """Scalars, one per call -> [rows]: each call's value at its rows of the batched layout."""
  return _join([jnp.broadcast_to(v, (n,)) for v, n in zip(values, sizes)], shards)


def split(out, sizes, shards=1):
  """A batched call's output -> one per call."""
  pieces = [_part(x, sizes, shards) for x in jax.tree.leaves(out)]
  treedef = jax.tree.structure(out)
  return [jax.tree.unflatten(treedef, [p[k] for p in pieces]) for k in range(len(sizes))]
