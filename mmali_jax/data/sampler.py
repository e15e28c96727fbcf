"""The training batches of an iteration, drawn on the device from (seed, step) alone.

Every iteration reads four batches A, B, C, D of `batch_size` tuples (docs/algorithm.md §5.1).
They are positions of an infinite stream over the training tuples in which every pass visits
each tuple exactly once, in the order of a fresh pseudo-random permutation per pass (sampling
without replacement within a pass, as the reference's infinite shuffling sampler). Iteration n
reads stream positions [4nB, 4nB + 4B) (computed without overflow for any n < 2**32).
'b_marginals' permutes each modality's column of B independently (in-batch product-of-marginals
negatives).

The permutation of pass e is a keyed bijection of [0, N) evaluated at the positions needed (a
4-round Feistel network on the next even power of two, with cycle walking), so a batch costs
O(B) work inside the jitted step and no permutation of N elements is ever materialised. Batches
are therefore a pure function of (seed, step): resuming replays exactly the batches of an
uninterrupted run, and the loop never waits on the host.

Unpaired mode (the paper's unimodal path): B and D stay paired and read positions
[2nB, 2nB + 2B) of the paired stream; A and C draw each modality from its whole training split,
and 'b_marginals' each modality independently, through their own per-modality streams.
"""
import math

import jax
import jax.numpy as jnp

# fold_in constants separating the streams of one data key.
_PAIRED, _MARGINALS_PERM, _UNIMODAL, _MARGINALS = 0, 1, 2, 3
_ROUNDS = 4


def _mix(x):
  """A 32-bit integer hash (lowbias32): every input bit affects every output bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _feistel(x, round_keys, half_bits):
  """A bijection of [0, 4**half_bits): balanced Feistel rounds on the two halves of x."""
  mask = jnp.uint32((1 << half_bits) - 1)
  left, right = x >> half_bits, x & mask
  for k in range(_ROUNDS):
    left, right = right, left ^ (_mix(right ^ round_keys[k]) & mask)
  return (left << half_bits) | right


def permute(key, indices, n):
  """pi(indices) for a pseudo-random permutation pi of [0, n) chosen by `key`.

  indices: uint32 array with values in [0, n). The Feistel bijection of the smallest domain
  4**h >= n is applied repeatedly until the value falls in [0, n) (cycle walking), which
  restricts it to a bijection of [0, n); the domain is at most 4n, so few rounds are needed.
  """
  if n < 1:
    raise ValueError(f'Cannot sample from an empty set (n={n}).')
  half_bits = max(1, math.ceil(math.log2(n) / 2)) if n > 1 else 1
  round_keys = jax.random.bits(key, (_ROUNDS,), jnp.uint32)
  n = jnp.uint32(n)
  x = _feistel(indices.astype(jnp.uint32), round_keys, half_bits)
  x = jax.lax.while_loop(lambda x: jnp.any(x >= n),
                         lambda x: jnp.where(x >= n, _feistel(x, round_keys, half_bits), x), x)
  return x


def _pass_and_offset(step, count, n):
  """(step * count) // n (mod 2**32) and (step * count) % n, without forming step * count,
  which leaves 32 bits for large batches and long runs (4 B steps >= 2**32: B = 64 at 16.7M
  steps, B = 4096 at 262,144): the sum over the bytes v_k of `step` of v_k * count * 256**k,
  whose quotients and remainders by n are constant tables (four lookups, few operations to
  compile).

  Requires n < 2**31 (one remainder added to another stays below 2**32)."""
  step = jnp.asarray(step, jnp.uint32)
  quotient, remainder = jnp.uint32(0), jnp.uint32(0)
  for k in range(4):
    table = [divmod(v * count << (8 * k), n) for v in range(256)]
    byte = (step >> (8 * k)) & jnp.uint32(0xFF)
    remainder = remainder + jnp.asarray([r for _, r in table], jnp.uint32)[byte]
    carry = remainder >= jnp.uint32(n)
    remainder = jnp.where(carry, remainder - jnp.uint32(n), remainder)
    quotient = (quotient + jnp.asarray([q % 2**32 for q, _ in table], jnp.uint32)[byte]
                + carry.astype(jnp.uint32))
  return quotient, remainder


def stream(key, step, count, n):
  """Elements at positions [step * count, (step + 1) * count) of the infinite stream over
  [0, n): pass e (positions [e n, (e + 1) n)) visits [0, n) in the order of permutation
  fold_in(key, e mod 2**32)."""
  if n >= 2**31:
    raise ValueError(f'Cannot sample from {n} elements: at most 2**31 - 1.')
  first_pass, offset = _pass_and_offset(step, count, n)
  position = offset + jnp.arange(count, dtype=jnp.uint32)  # < n + count
  epoch = first_pass + position // jnp.uint32(n)
  within = position % jnp.uint32(n)
  # A batch spans at most two passes (count <= n is not required: vmap over the pass).
  keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(epoch)
  return jax.vmap(lambda k, i: permute(k, i[None], n)[0])(keys, within).astype(jnp.int32)


def batch_indices(key, step, num_pairs, modality_sizes, batch_size, unpaired=False):
  """{'a'|'b'|'b_marginals'|'c'|'d': int32 [M, B]} for iteration `step`.

  Row m of a paired batch indexes the training tuples (rows of the pairs array); in unpaired
  mode rows of 'a', 'c' and 'b_marginals' index modality m's own examples instead (see
  `gather`). modality_sizes: the number of examples of each modality (for unpaired mode).
  """
  num = len(modality_sizes)
  b = batch_size
  step = jnp.asarray(step, jnp.uint32)
  paired_key = jax.random.fold_in(key, _PAIRED)
  out = {}
  if not unpaired:
    rows = stream(paired_key, step, 4 * b, num_pairs).reshape(4, b)
    for name, r in zip('abcd', rows):
      out[name] = jnp.broadcast_to(r, (num, b))
    perm_key = jax.random.fold_in(jax.random.fold_in(key, _MARGINALS_PERM), step)
    perms = jax.vmap(lambda k: jax.random.permutation(k, b))(jax.random.split(perm_key, num))
    out['b_marginals'] = jnp.take_along_axis(out['b'], perms, axis=1)
    return out
  rows = stream(paired_key, step, 2 * b, num_pairs).reshape(2, b)
  out['b'], out['d'] = (jnp.broadcast_to(r, (num, b)) for r in rows)
  unimodal, marginals = [], []
  for m, size in enumerate(modality_sizes):
    unimodal.append(stream(jax.random.fold_in(jax.random.fold_in(key, _UNIMODAL), m),
                           step, 2 * b, size).reshape(2, b))
    marginals.append(stream(jax.random.fold_in(jax.random.fold_in(key, _MARGINALS), m),
                            step, b, size))
  out['a'] = jnp.stack([u[0] for u in unimodal])
  out['c'] = jnp.stack([u[1] for u in unimodal])
  out['b_marginals'] = jnp.stack(marginals)
  return out


def batch_indices_of_steps(key, first_step, num_steps, num_pairs, modality_sizes, batch_size,
                           unpaired=False):
  """`batch_indices` of iterations first_step .. first_step + num_steps - 1, stacked: each
  [num_steps, M, B]. The same indices as each iteration's own call, drawn together: cycle walking
  (`permute`) then runs one loop per stream for all of them, whose trip count is the largest any
  lane needs, instead of one per stream and iteration (one stream in paired mode)."""
  steps = jnp.asarray(first_step, jnp.uint32) + jnp.arange(num_steps, dtype=jnp.uint32)
  return jax.vmap(lambda step: batch_indices(key, step, num_pairs, modality_sizes, batch_size,
                                             unpaired))(steps)


# Which batches hold rows of the pairs array; the others (unpaired mode) index examples directly.
PAIRED_BATCHES = {False: ('a', 'b', 'b_marginals', 'c', 'd'), True: ('b', 'd')}


def gather(images, pairs, indices, unpaired=False):
  """{'a'|...|'d': [uint8 images of modality m]} of `batch_indices` output.

  images: per modality, all its examples [N_m, H, W, C]; pairs: int32 [P, M].
  """
  paired = PAIRED_BATCHES[bool(unpaired)]
  images, pairs = [jnp.asarray(x) for x in images], jnp.asarray(pairs)
  out = {}
  for name, idx in indices.items():
    if name in paired:
      out[name] = [x[pairs[idx[m], m]] for m, x in enumerate(images)]
    else:
      out[name] = [x[idx[m]] for m, x in enumerate(images)]
  return out
