"""Tests of mmali_jax.data: pairing, rotations, the batch sampler and the TFDS loader.

Everything runs on generated data (tfds.testing.mock_data for the loader).
"""
import glob
import importlib.util
import os

import numpy as np
import pytest

from configs import mnist_svhn
from configs import multimnist
from mmali_jax.data import pairing
from mmali_jax.data import pipeline
from mmali_jax.data import sources
from tests import digit_datasets

MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')


def _labels(counts, seed):
  """A shuffled label array with counts[c] examples of class c."""
  labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
  return np.random.default_rng(seed).permutation(labels)


# Class counts: class 3 exists only in B, class 4 only in C.
COUNTS_A = {0: 10, 1: 7, 2: 5}
COUNTS_B = {0: 4, 1: 9, 2: 5, 3: 6}
COUNTS_C = {0: 12, 1: 8, 2: 6, 4: 3}


# ------------------------------------------------------------------------------------- pairing


@pytest.mark.parametrize('percentage, max_per_class, expected_per_round', [
    (1.0, None, 4 + 7 + 5),
    (0.2, None, 0 + 1 + 1),  # floor(0.2 * counts): class 0 -> min(2, 0, 2), 1 -> 1, 2 -> 1.
    (1.0, 3, 3 + 3 + 3),
    (0.5, 3, 2 + 3 + 2),  # class 0: min(5, 2, 6); 1: min(3, 4, 4) -> 3; 2: min(2, 2, 3).
    (0.0, None, 0),
])
def test_pair_counts_follow_formula(percentage, max_per_class, expected_per_round):
  labels = [_labels(COUNTS_A, 0), _labels(COUNTS_B, 1), _labels(COUNTS_C, 2)]
  pairs = pairing.match_by_label(labels, 3, percentage, max_per_class,
                                 np.random.default_rng(0))
  assert pairs.shape == (3 * expected_per_round, 3)
  assert pairs.dtype == np.int64
  assert pairing.count_pairs(labels, 3, percentage, max_per_class) == 3 * expected_per_round


def test_pairs_share_labels_use_first_indices_and_each_round_is_a_permutation():
  labels = [_labels(COUNTS_A, 0), _labels(COUNTS_B, 1), _labels(COUNTS_C, 2)]
  multiplication = 4
  pairs = pairing.match_by_label(labels, multiplication, 0.7, None, np.random.default_rng(3))
  pair_labels = labels[0][pairs[:, 0]]
  for m in range(3):
    np.testing.assert_array_equal(labels[m][pairs[:, m]], pair_labels)
  for c in (0, 1, 2):
    n = min(int(0.7 * counts[c]) for counts in (COUNTS_A, COUNTS_B, COUNTS_C))
    rows = pairs[pair_labels == c]
    assert len(rows) == multiplication * n
    for m in range(3):
      first = np.flatnonzero(labels[m] == c)[:n]
      rounds = rows[:, m].reshape(multiplication, n)
      for r in rounds:  # Every round is a permutation of the same first-n index set.
        np.testing.assert_array_equal(np.sort(r), first)
      # ... and not the same permutation every time.
      assert len({tuple(r) for r in rounds}) > 1
  assert set(pair_labels.tolist()) == {0, 1, 2}  # Classes 3, 4 are not in every modality.


def test_pairing_is_deterministic_given_rng():
  labels = [_labels(COUNTS_A, 0), _labels(COUNTS_B, 1)]
  draw = lambda seed: pairing.match_by_label(labels, 5, 1.0, None, np.random.default_rng(seed))
  np.testing.assert_array_equal(draw(7), draw(7))
  assert not np.array_equal(draw(7), draw(8))


def test_pairing_with_nothing_to_pair():
  pairs = pairing.match_by_label([np.zeros(5, int), np.ones(5, int)], 3, 1.0, None,
                                 np.random.default_rng(0))
  assert pairs.shape == (0, 2)


# ------------------------------------------------------------------------------------ rotation


def test_rotation_is_counter_clockwise():
  image = np.zeros((1, 4, 4, 2), np.uint8)
  image[0, 0, 3] = (7, 9)  # Top-right pixel, two channels.
  corners = {1: (0, 0), 2: (3, 0), 3: (3, 3)}  # top-left, bottom-left, bottom-right.
  for k, (row, col) in corners.items():
    rotated = pipeline.rotate(image, k)
    assert rotated.shape == image.shape
    np.testing.assert_array_equal(rotated[0, row, col], (7, 9))
    assert rotated.sum() == 16
  # One turn maps out[i, j] = in[j, W - 1 - i] on a non-symmetric image.
  image = np.arange(2 * 3 * 3).reshape(2, 3, 3, 1).astype(np.uint8)
  rotated = pipeline.rotate(image, 1)
  for i in range(3):
    for j in range(3):
      np.testing.assert_array_equal(rotated[:, i, j], image[:, j, 2 - i])
  np.testing.assert_array_equal(pipeline.rotate(image, 4), image)
  np.testing.assert_array_equal(pipeline.rotate(image, 0), image)
  np.testing.assert_array_equal(pipeline.rotate(pipeline.rotate(image, 3), 1), image)


# ------------------------------------------------------------------------------------- sampler


def _dataset(sizes=(50, 70), multiplication=2, pairs=None, seed=0):
  """Modality m has sizes[m] images; image i is filled with i, so a batch shows its indices.

  Image i has label i % 10; pairs match on label unless given.
  """
  rng = np.random.default_rng(seed)
  modalities = []
  for k, n in enumerate(sizes):
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, 2 + k, 2 + k, 1 + 2 * k)).copy()
    labels = (np.arange(n) % 10).astype(np.int32)
    modalities.append(pipeline.ModalityData(f'{k}mod', images, labels))
  if pairs is None:
    pairs = pairing.match_by_label([m.labels for m in modalities], multiplication, 1.0, None, rng)
  return pipeline.MultimodalDataset(modalities, pairs, modalities[0].labels[pairs[:, 0]])


def _ids(images):
  """The index each image was filled with."""
  return images[:, 0, 0, 0].astype(np.int64)


# -------------------------------------------------------------------------------------- loader


@pytest.fixture
def fresh_cache():
  sources.clear_cache()
  yield
  sources.clear_cache()


def _small(config):
  config.data.multiplication = 2
  return config


@pytest.mark.usefixtures('fresh_cache')
def test_load_mnist_svhn_with_mock_data():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _small(mnist_svhn.get_config('percentage=0.5'))
  with tfds.testing.mock_data(num_examples=60):
    train = pipeline.load_dataset(config, 'train')
    test = pipeline.load_dataset(config, 'test')
  assert train.names == ['0mnist', '1svhn']
  shapes = {'0mnist': (60, 28, 28, 1), '1svhn': (60, 32, 32, 3)}
  for ds in (train, test):
    for k, m in enumerate(ds.modalities):
      assert m.images.shape == shapes[m.name] and m.images.dtype == np.uint8
      assert m.labels.min() >= 0 and m.labels.max() <= 9
      np.testing.assert_array_equal(m.labels[ds.pairs[:, k]], ds.labels)
  labels = [m.labels for m in train.modalities]
  assert train.num_pairs == pairing.count_pairs(labels, 2, 0.5, None) > 0
  assert test.num_pairs == pairing.count_pairs(labels, 2, 1.0, None) > train.num_pairs
  # The training subset's cap leaves the test pairs whole, as the percentage does.
  config.data.max_per_class = 2
  with tfds.testing.mock_data(num_examples=60):
    capped = pipeline.load_dataset(config, 'train')
    np.testing.assert_array_equal(pipeline.load_dataset(config, 'test').pairs, test.pairs)
  assert capped.num_pairs == pairing.count_pairs(labels, 2, 0.5, 2) < train.num_pairs


@pytest.mark.usefixtures('fresh_cache')
def test_load_multimnist_with_mock_data():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = _small(multimnist.get_config('modalities=3'))
  with tfds.testing.mock_data(num_examples=40):
    ds = pipeline.load_dataset(config, 'train')
  assert ds.names == ['0mnist', '1mnist', '2mnist']
  base = ds.modalities[0].images
  assert base.shape == (40, 28, 28, 1) and base.dtype == np.uint8
  for k, m in enumerate(ds.modalities):
    np.testing.assert_array_equal(m.images, np.rot90(base, k, axes=(1, 2)))
    np.testing.assert_array_equal(m.labels[ds.pairs[:, k]], ds.labels)
  assert ds.num_pairs == 2 * 40  # Same labels in every modality: every example is paired.


@pytest.mark.usefixtures('fresh_cache')
def test_an_empty_split_says_how_to_prepare_it_again(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=0):
    with pytest.raises(sources.MissingDatasetError) as info:
      sources.load_split('mnist', 'train', str(tmp_path))
  where = os.path.join(str(tmp_path), 'mnist')
  assert str(info.value) == (
      f"Split 'train' of 'mnist' in {where} holds no examples: its prepared files are "
      f'incomplete. Delete {where} and run again to prepare it afresh, or point '
      '--config.data.tfds_data_dir at a complete copy.')


def _missing_error(tmp_path, dataset='mnist'):
  with pytest.raises(sources.MissingDatasetError) as info:
    sources.load_split(dataset, 'train', str(tmp_path))
  return str(info.value)


@pytest.mark.usefixtures('fresh_cache')
def test_missing_dataset_names_files_folder_and_flag(tmp_path):
  message = _missing_error(tmp_path)
  manual = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert manual in message and '--config.data.tfds_data_dir' in message and 'mnist' in message
  assert all(f in message for f in MNIST_FILES)
  svhn = _missing_error(tmp_path, 'svhn_cropped')
  assert all(f in svhn for f in ('train_32x32.mat', 'test_32x32.mat', 'extra_32x32.mat'))


@pytest.mark.usefixtures('fresh_cache')
def test_partially_present_raw_files_are_named(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  for name in MNIST_FILES[:2]:
    (manual / name).write_bytes(b'not really mnist')
  lines = _missing_error(tmp_path).splitlines()
  for name in MNIST_FILES:
    line, = [l for l in lines if name in l]
    assert ('missing' in line) == (name not in MNIST_FILES[:2])


def _write_fake_raw_mnist(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  manual.mkdir(parents=True)
  for name in MNIST_FILES:
    (manual / name).write_bytes(b'tiny fake file')


_HAS_IMPORTLIB_RESOURCES = importlib.util.find_spec('importlib_resources') is not None


@pytest.mark.skipif(not _HAS_IMPORTLIB_RESOURCES, reason='TFDS cannot prepare without it')
@pytest.mark.usefixtures('fresh_cache')
def test_raw_files_with_wrong_checksums_are_rejected(tmp_path):
  # TFDS checks manual files against the registered checksums, so tiny generated idx files
  # cannot be prepared; this checks the offline path reaches that check (no download attempt).
  _write_fake_raw_mnist(tmp_path)
  assert 'checksum' in _missing_error(tmp_path)


@pytest.mark.skipif(_HAS_IMPORTLIB_RESOURCES, reason='only without importlib_resources')
@pytest.mark.usefixtures('fresh_cache')
def test_preparing_without_importlib_resources_says_what_to_install(tmp_path):
  _write_fake_raw_mnist(tmp_path)
  assert 'pip install importlib_resources' in _missing_error(tmp_path)


@pytest.mark.usefixtures('fresh_cache')
def test_a_dataset_prepared_as_array_record_reads_as_one_prepared_as_tfrecord(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder_cls = digit_datasets.digits_builder('TinyDigits', '1.0.0', (6, 5, 1), {'train': 100})
  read = {}
  for file_format in ('tfrecord', 'array_record'):
    data_dir = str(tmp_path / file_format)
    # Two shards, as SVHN's training split has: TFDS would interleave them by blocks of 16.
    builder_cls(data_dir=data_dir).download_and_prepare(
        file_format=file_format, download_config=tfds.download.DownloadConfig(num_shards=2))
    assert len(glob.glob(os.path.join(data_dir, 'tiny_digits', '1.0.0', '*train*-of-00002'))) == 2
    read[file_format] = (sources.load_split('tiny_digits', 'train', data_dir),
                         sources.load_split('tiny_digits', 'train', data_dir, 'image'))
  (images, labels), (feature, feature_labels) = read['tfrecord']
  assert images.shape == (100, 6, 5, 1) and images.dtype == np.uint8 and len(set(labels)) == 10
  np.testing.assert_array_equal(feature, images)
  # Both formats give the same examples in the same order (shard after shard), so the pairs, the
  # held-out examples and the batches do not depend on how the data was stored.
  for got, want in zip(read['array_record'], read['tfrecord']):
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)
