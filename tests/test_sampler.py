"""The on-device batch sampler: its distribution, and that it is a pure function of (seed, step)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmali_jax.data import pairing
from mmali_jax.data import sampler


@pytest.mark.parametrize('n', [1, 2, 3, 37, 64, 1000, 4097])
def test_permute_is_a_bijection_of_range_n(n):
  key = jax.random.PRNGKey(n)
  perm = np.asarray(sampler.permute(key, jnp.arange(n, dtype=jnp.uint32), n))
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  if n > 3:
    other = np.asarray(sampler.permute(jax.random.PRNGKey(n + 1), jnp.arange(n, dtype=jnp.uint32),
                                       n))
    assert not np.array_equal(perm, other)  # another key, another order
    assert not np.array_equal(perm, np.arange(n))


def test_permutation_positions_look_uniform():
  """Over many keys, the element landing at a given position is spread evenly over [0, n)."""
  n, keys = 10, 4000
  firsts = np.asarray(jax.vmap(lambda k: sampler.permute(k, jnp.zeros(1, jnp.uint32), n)[0])(
      jax.random.split(jax.random.PRNGKey(0), keys)))
  counts = np.bincount(firsts, minlength=n)
  expected = keys / n
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 30, counts  # 9 degrees of freedom: p < 0.001 beyond ~28


def test_each_pass_visits_every_element_once_and_passes_are_reshuffled():
  n = 50
  key = jax.random.PRNGKey(3)
  # Read the stream in pieces of 7 (steps 0-14), which straddle the pass boundaries.
  stream = np.concatenate([np.asarray(sampler.stream(key, step, 7, n)) for step in range(15)])
  passes = stream[:n], stream[n:2 * n]
  for visited in passes:
    np.testing.assert_array_equal(np.sort(visited), np.arange(n))
  assert not np.array_equal(*passes)
  np.testing.assert_array_equal(stream, np.asarray(sampler.stream(key, 0, 105, n)))


@pytest.mark.parametrize('count,n', [(256, 1_682_040), (16_384, 1_800_000), (7, 50), (256, 24)])
def test_stream_positions_do_not_wrap_at_32_bits(count, n):
  # Step s reads positions [s count, (s + 1) count): beyond 2**32 for long runs of large batches
  # (B = 64: 4 B = 256 per step, wrapping at step 2**24), where a 32-bit product would replay
  # step 0's batch.
  steps = np.array([0, 1, 2**16 + 3, 2**24, 2**24 + 1, 262_144, 2**31 + 5, 2**32 - 1], np.uint64)
  quotient, remainder = jax.vmap(lambda s: sampler._pass_and_offset(s, count, n))(  # pylint: disable=protected-access
      jnp.asarray(steps.astype(np.uint32)))
  exact = [divmod(int(s) * count, n) for s in steps]
  np.testing.assert_array_equal(np.asarray(quotient), [q % 2**32 for q, _ in exact])
  np.testing.assert_array_equal(np.asarray(remainder), [r for _, r in exact])
  key = jax.random.PRNGKey(1)
  far = np.asarray(sampler.stream(key, 2**24, count, n))
  first, within = divmod(2**24 * count, n)
  expected = [int(sampler.permute(jax.random.fold_in(key, first + (within + j) // n),
                                  jnp.asarray([(within + j) % n], jnp.uint32), n)[0])
              for j in (0, count - 1)]
  np.testing.assert_array_equal(far[[0, -1]], expected)


def _data(sizes=(50, 70), multiplication=2, pairs=None, seed=0):
  """Modality m has sizes[m] images; image i is filled with i, so a batch shows its indices."""
  rng = np.random.default_rng(seed)
  images, labels = [], []
  for k, n in enumerate(sizes):
    images.append(np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                                  (n, 2 + k, 2 + k, 1 + 2 * k)).copy())
    labels.append((np.arange(n) % 10).astype(np.int32))
  if pairs is None:
    pairs = pairing.match_by_label(labels, multiplication, 1.0, None, rng)
  return images, pairs.astype(np.int32), labels


def _batches(images, pairs, step, batch_size, seed=0, unpaired=False):
  key = jax.random.PRNGKey(seed)
  indices = sampler.batch_indices(key, step, len(pairs), [len(x) for x in images], batch_size,
                                  unpaired)
  return jax.tree.map(np.asarray, sampler.gather(images, pairs, indices, unpaired))


def _ids(x):
  """The index each image was filled with."""
  return np.asarray(x)[:, 0, 0, 0].astype(np.int64)


@pytest.mark.parametrize('unpaired', [False, True])
def test_batches_are_a_pure_function_of_seed_and_step(unpaired):
  images, pairs, _ = _data()
  fn = jax.jit(lambda step: sampler.gather(images, pairs, sampler.batch_indices(
      jax.random.PRNGKey(5), step, len(pairs), [len(x) for x in images], 8, unpaired), unpaired))
  in_order = [jax.tree.map(np.asarray, fn(step)) for step in range(6)]
  for step in [5, 3, 0, 4, 4]:
    eager = _batches(images, pairs, step, 8, seed=5, unpaired=unpaired)
    jax.tree.map(np.testing.assert_array_equal, eager, in_order[step])
  assert set(in_order[0]) == {'a', 'b', 'b_marginals', 'c', 'd'}
  for batch in in_order[0].values():
    assert batch[0].shape == (8, 2, 2, 1) and batch[1].shape == (8, 3, 3, 3)
    assert batch[0].dtype == np.uint8
  other_seed = _batches(images, pairs, 0, 8, seed=6, unpaired=unpaired)
  assert not np.array_equal(other_seed['b'][0], in_order[0]['b'][0])


@pytest.mark.parametrize('unpaired', [False, True])
def test_the_batches_of_several_steps_drawn_together_are_each_steps_own(unpaired):
  # n = 1,700 rows in a Feistel domain of 4,096: more than half of the lanes walk at least once,
  # and the lanes drawn together need different numbers of trips.
  sizes, num_pairs, key = [1700, 900], 1700, jax.random.PRNGKey(7)
  together = jax.jit(lambda first: sampler.batch_indices_of_steps(
      key, first, 5, num_pairs, sizes, 32, unpaired))(jnp.int32(3))
  for k in range(5):
    alone = sampler.batch_indices(key, 3 + k, num_pairs, sizes, 32, unpaired)
    assert set(alone) == set(together)
    for name, value in alone.items():
      np.testing.assert_array_equal(together[name][k], value, err_msg=f'step {3 + k}, {name}')


def test_paired_batches_are_pairs_and_a_pass_visits_every_pair_once():
  # One pair per image of modality 0: its index identifies the pair.
  images, pairs, _ = _data(sizes=(40, 40), multiplication=1)
  np.testing.assert_array_equal(np.sort(pairs[:, 0]), np.arange(40))
  valid = {tuple(row) for row in pairs}
  stream = []
  for step in range(5):  # 5 steps x 4 batches x 4 = 80 positions: two passes
    batches = _batches(images, pairs, step, 4)
    for key in 'abcd':
      rows = list(zip(_ids(batches[key][0]), _ids(batches[key][1])))
      assert all(row in valid for row in rows)
      stream += [r[0] for r in rows]
  for visited in (stream[:40], stream[40:]):
    np.testing.assert_array_equal(np.sort(visited), np.arange(40))
  assert stream[:40] != stream[40:]


def test_marginals_permute_each_modality_of_b():
  images, pairs, labels = _data(sizes=(200, 200))
  for step in range(3):
    batches = _batches(images, pairs, step, 64)
    for m in range(2):
      np.testing.assert_array_equal(np.sort(_ids(batches['b_marginals'][m])),
                                    np.sort(_ids(batches['b'][m])))
    label = lambda key, m: labels[m][_ids(batches[key][m])]
    np.testing.assert_array_equal(label('b', 0), label('b', 1))
    # 64 rows of 10 classes: the independent permutations break the label pairing.
    assert np.mean(label('b_marginals', 0) == label('b_marginals', 1)) < 0.5


def test_unpaired_mode_draws_unimodal_batches_from_whole_datasets():
  # Only 20 pairs, (i, i + 10) for i < 20, out of 100 and 70 images.
  images, pairs, _ = _data(sizes=(100, 70), pairs=np.stack([np.arange(20), np.arange(10, 30)],
                                                            axis=1))
  steps = [_batches(images, pairs, step, 5, unpaired=True) for step in range(10)]
  for m, n in enumerate((100, 70)):
    # A and C read one per-modality stream, in order a(0), c(0), a(1), ...: its first pass covers
    # all n images once.
    unimodal = np.concatenate([_ids(s[key][m]) for s in steps for key in 'ac'])
    np.testing.assert_array_equal(np.sort(unimodal[:n]), np.arange(n))
    marginals = np.concatenate([_ids(s['b_marginals'][m]) for s in steps])
    assert len(set(marginals.tolist())) == 50  # a pass without repeats, over the whole set
    assert marginals.max() >= 30
  # B and D stay paired and share the paired stream: 2 steps x 2 batches x 5 = one pass of 20.
  valid = {tuple(row) for row in pairs}
  paired = [tuple(r) for s in steps[:2] for key in 'bd'
            for r in zip(_ids(s[key][0]), _ids(s[key][1]))]
  assert sorted(paired) == sorted(valid) and len(paired) == 20
