"""Whole TFDS splits as in-memory numpy arrays: (image, label) datasets, or one named feature
of a dataset with several (CUB's caption embeddings and image features).

The training sets used here are small (MNIST 47 MB, SVHN 225 MB as uint8), and pairs are index
arrays into them (pairing.py), so every split is read once into memory and never streamed.

A dataset that is not prepared yet is prepared on first use: from the raw files in
`<data_dir>/downloads/manual/` when they are all there (TFDS's download manager takes a file found
there instead of downloading it, and still verifies its checksum), else by TFDS's own download
when this machine can reach the internet. Otherwise, or when the download fails, `load_split`
raises `MissingDatasetError` within seconds, saying which files to put where;
`ensure_prepared` does so for every dataset of an experiment at once. A preparation that stopped
half-way is detected, and the message says which folders to delete.

TensorFlow is optional for reading: a dataset prepared as ArrayRecord (README "Data", "Without
TensorFlow") is read through TFDS's random-access data source, which needs no
TensorFlow, so a machine with JAX alone (a GPU image, say) can train on a copy of that folder.
TFRecord folders, and preparing datasets, need TensorFlow.
"""
import functools
import importlib.util
import os
import re
import socket

from absl import logging
import numpy as np

from mmali_jax import config_checks

# Files TFDS's builders download, i.e. the names expected in `<data_dir>/downloads/manual/`.
# svhn_cropped's builder generates all three splits, so it needs `extra` too (1.3 GB).
RAW_FILES = {
    'mnist': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
              't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
    'svhn_cropped': ('train_32x32.mat', 'test_32x32.mat', 'extra_32x32.mat'),
}

_CONFIG_FLAG = '--config.data.tfds_data_dir'
# A host TFDS downloads from, asked before downloading so that offline machines fail in seconds.
_DOWNLOAD_PROBE = ('storage.googleapis.com', 443)
_READ_CHUNK = 8192
# File formats TFDS reads without TensorFlow (tfds.data_source).
_RANDOM_ACCESS_FORMATS = ('array_record', 'parquet')
_WITHOUT_TENSORFLOW_FIX = ('Install it (pip install tensorflow-cpu, requirements.txt), or prepare '
                           'the dataset as ArrayRecord where TensorFlow is installed (README '
                           '"Data", "Without TensorFlow")')


class MissingDatasetError(RuntimeError):
  """A dataset is neither prepared nor preparable offline from files in the manual folder."""


def load_split(dataset, split, data_dir=None, feature=None):
  """(examples [N, ...], labels int32 [N]) of one split, cached per process.

  feature None: the (image, label) pair of the dataset's supervised keys, images uint8
  [N, H, W, C]. Otherwise the named feature of every example, as stored (e.g. float32
  [N, 10, 1024] for 'caption_embeddings'), with the 'label' feature.
  The arrays are shared between callers (MultiMNIST loads MNIST train once per modality), so they
  are returned read-only. An empty data_dir is TFDS's default, as None (so that
  `--config.data.tfds_data_dir=` undoes a folder stored with a run made on another machine).
  """
  return _load_split_cached(dataset, split, os.fspath(data_dir) if data_dir else None, feature)


def clear_cache():
  """Forgets every split loaded so far (tests use it around `tfds.testing.mock_data`)."""
  _load_split_cached.cache_clear()


def data_dir_root(data_dir):
  """The directory TFDS uses for `data_dir` (its default when None or empty)."""
  if not data_dir:
    data_dir = os.environ.get('TFDS_DATA_DIR') or os.path.join('~', 'tensorflow_datasets')
  return os.path.expanduser(os.fspath(data_dir))


def manual_dir(data_dir):
  """The folder whose files TFDS's download manager takes instead of downloading them."""
  return os.path.join(data_dir_root(data_dir), 'downloads', 'manual')


def ensure_prepared(datasets, data_dir=None):
  """Prepares every dataset of an experiment that is not yet (raw files in the manual folder
  first, else TFDS's download when this machine is online). One MissingDatasetError names all
  that cannot be prepared, with what to do for each."""
  problems = []
  # Items are dataset names or (dataset, feature) pairs; one try per dataset.
  first_feature = {}
  for item in datasets:
    dataset, feature = item if isinstance(item, tuple) else (item, None)
    first_feature.setdefault(dataset, feature)
  for dataset, feature in first_feature.items():
    try:
      load_split(dataset, 'train', data_dir, feature)
    except MissingDatasetError as err:
      problems.append(str(err))
  if problems:
    raise MissingDatasetError('\n\n'.join(problems))


@functools.lru_cache(maxsize=16)
def _load_split_cached(dataset, split, data_dir, feature=None):
  tfds = _import_tfds()
  try:
    images, labels = _read(tfds, dataset, split, data_dir, feature)
  except AssertionError:
    # tfds.load(download=False) asserts when the dataset is not prepared in data_dir.
    if tfds.builder(dataset, data_dir=data_dir).is_prepared():
      raise
    images = None
  if images is None:  # Outside the except block, so TFDS's assertion is not chained.
    _prepare(tfds, dataset, data_dir)
    images, labels = _read(tfds, dataset, split, data_dir, feature)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _incomplete_folders(dataset, data_dir):
  """Folders a preparation left behind when it stopped half-way (TFDS's incomplete.* ones, or a
  version folder without dataset_info.json)."""
  root = os.path.join(data_dir_root(data_dir), dataset)
  if not os.path.isdir(root):
    return []
  found = []
  for base, dirs, files in os.walk(root):
    for d in dirs:
      if d.startswith('incomplete.'):
        found.append(os.path.join(base, d))
    depth = os.path.relpath(base, root).count(os.sep) + (os.path.relpath(base, root) != '.')
    if (depth >= 1 and not os.path.basename(base).startswith('incomplete.') and
        re.fullmatch(r'\d+\.\d+\.\d+', os.path.basename(base)) and
        'dataset_info.json' not in files):
      found.append(base)
  return sorted(set(found))


def _online(timeout_s=3.0):
  """Whether TFDS's download hosts answer within a few seconds (offline machines fail fast)."""
  try:
    with socket.create_connection(_DOWNLOAD_PROBE, timeout=timeout_s):
      return True
  except OSError:
    return False


def _prepare(tfds, dataset, data_dir):
  """Builds `dataset`: from the raw files in the manual folder when they are all there, else by
  TFDS's own download when online; otherwise MissingDatasetError saying what to do."""
  incomplete = _incomplete_folders(dataset, data_dir)
  if incomplete:
    raise MissingDatasetError(
        f'Dataset {dataset!r} was only partly prepared in {data_dir_root(data_dir)} (a '
        'preparation stopped half-way). Delete ' + ', '.join(incomplete) + ' and run the same '
        'command again.')
  if not tensorflow_installed():
    where = data_dir_root(data_dir) + (' (the TFDS default)' if data_dir is None else '')
    raise MissingDatasetError(
        f'Dataset {dataset!r} is not prepared in {where}, and preparing it needs TensorFlow '
        '(TFDS extracts and encodes with it), which is not installed. ' + _WITHOUT_TENSORFLOW_FIX
        + f' and point {_CONFIG_FLAG} at a copy of that folder.')
  folder = manual_dir(data_dir)
  needed = _raw_files(tfds, dataset)
  missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
  if needed and not missing:
    _prepare_offline(tfds, dataset, data_dir)
    return
  if _manual_only(tfds, dataset):
    raise MissingDatasetError(_missing_manual_message(tfds, dataset, data_dir, folder, needed,
                                                      missing))
  if not _online():
    raise MissingDatasetError(_missing_message(dataset, data_dir, folder, needed, missing,
                                               'this machine cannot reach the internet'))
  logging.info('Downloading and preparing %s with TFDS into %s.', dataset,
               data_dir_root(data_dir))
  try:
    tfds.builder(dataset, data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=folder))
  except Exception as err:  # pylint: disable=broad-except
    reason = f'the download failed ({type(err).__name__}: {str(err).splitlines()[0][:300]})'
    raise MissingDatasetError(_missing_message(dataset, data_dir, folder, needed, missing,
                                               reason)) from None


def _read(tfds, dataset, split, data_dir, feature=None):
  if not tensorflow_installed():
    chunks = _read_data_source(tfds, dataset, split, data_dir, feature)
  else:
    # Read in chunks, not with batch_size=-1: under tfds.testing.mock_data (which patches this
    # call, so tests run without real data) the split size is unknown and TFDS then batches by
    # sys.maxsize, which aborts TensorFlow 2.21.
    try:
      chunks = list(tfds.as_numpy(tfds.load(
          dataset, split=split, data_dir=data_dir, batch_size=_READ_CHUNK,
          as_supervised=feature is None, download=False,
          # Shard after shard, as tfds.data_source reads: by default TFDS interleaves the
          # shards of a split, and the pairs ("the first n_l of each class"), the held-out
          # examples and so the batches would depend on the format the data is stored in.
          read_config=tfds.ReadConfig(interleave_cycle_length=1))))
    except NotImplementedError:
      # Prepared as ArrayRecord (`download_and_prepare(file_format='array_record')`), which
      # tf.data cannot read; TFDS's random-access data source can.
      chunks = _read_data_source(tfds, dataset, split, data_dir, feature)
  if not chunks:
    where = os.path.join(data_dir_root(data_dir), dataset)
    raise MissingDatasetError(
        f'Split {split!r} of {dataset!r} in {where} holds no examples: its prepared files are '
        f'incomplete. Delete {where} and run again to prepare it afresh, or point '
        '--config.data.tfds_data_dir at a complete copy.')
  if feature is not None:
    if feature not in chunks[0]:
      raise config_checks.ConfigError(
          f'Dataset {dataset!r} has no feature {feature!r}; it has {sorted(chunks[0])}. Fix the '
          'modality\'s feature in the config.')
    examples = np.concatenate([c[feature] for c in chunks])
    labels = np.concatenate([c['label'] for c in chunks]).astype(np.int32)
    return examples, labels
  if isinstance(chunks[0], dict):  # read without TensorFlow: no supervised keys to read
    raise config_checks.ConfigError(
        f'Dataset {dataset!r} has no (image, label) supervised keys; name the feature to read in '
        f'the modality\'s config (feature=...; it has {sorted(chunks[0])}).')
  images = np.concatenate([c[0] for c in chunks])  # config_checks.check_images checks the dtype
  labels = np.concatenate([c[1] for c in chunks]).astype(np.int32)
  if images.ndim == 3:
    images = images[..., None]
  return images, labels


def _read_data_source(tfds, dataset, split, data_dir, feature):
  """The chunks `tfds.load` would give, read through `tfds.data_source`."""
  builder = tfds.builder(dataset, data_dir=data_dir)
  if not tensorflow_installed():
    if not builder.is_prepared():
      raise AssertionError(f'{dataset} is not prepared')  # as tfds.load(download=False) does
    file_format = getattr(builder.info.file_format, 'value', builder.info.file_format)
    if file_format not in _RANDOM_ACCESS_FORMATS:
      raise MissingDatasetError(
          f'Dataset {dataset!r} in {data_dir_root(data_dir)} is prepared as {file_format}, which '
          'only TensorFlow reads, and TensorFlow is not installed. ' + _WITHOUT_TENSORFLOW_FIX
          + ' and use that folder here.')
  source = tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
  supervised = None
  if feature is None:
    supervised = builder.info.supervised_keys
  chunks = []
  for start in range(0, len(source), _READ_CHUNK):
    records = source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source)))))
    if supervised:
      chunks.append(tuple(np.stack([r[key] for r in records]) for key in supervised))
    else:
      chunks.append({key: np.stack([r[key] for r in records]) for key in records[0]})
  return chunks


def _prepare_offline(tfds, dataset, data_dir):
  """Builds `dataset` from the raw files in the manual folder."""
  folder = manual_dir(data_dir)

  logging.info('Preparing %s offline from the raw files in %s.', dataset, folder)
  builder = tfds.builder(dataset, data_dir=data_dir)
  config = tfds.download.DownloadConfig(manual_dir=folder, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except ModuleNotFoundError as e:
    if e.name != 'importlib_resources':
      raise
    # tensorflow-datasets 4.9.10 imports it on every Python but declares it only for < 3.9
    # (github.com/tensorflow/datasets/issues/11212); reading a prepared dataset does not need it.
    raise MissingDatasetError(
        f'Found the raw files of {dataset} in {folder}, but preparing them needs the package '
        'importlib_resources, which this tensorflow-datasets imports without declaring it '
        '(tensorflow/datasets#11212). Install it: pip install importlib_resources') from e
  except Exception as e:  # pylint: disable=broad-except
    if _manual_only(tfds, dataset) and isinstance(e, (ValueError, OSError, EOFError)):
      # A user's file that is not what the builder expects (shape, truncation, format).
      raise MissingDatasetError(
          f'The files of {dataset} in {folder} could not be prepared: {e}') from None
    if type(e).__name__ != 'NonMatchingChecksumError':
      raise
    raise MissingDatasetError(
        f'A raw file of {dataset} in {folder} does not have the checksum TFDS expects (a corrupt '
        f'or different file); replace it with the original.\n{e}') from e


def _manual_only(tfds, dataset):
  """Whether the dataset is built only from files the user downloads (no TFDS download)."""
  try:
    return bool(getattr(tfds.builder_cls(dataset), 'MANUAL_FILES', None))
  except Exception:  # pylint: disable=broad-except
    return False


def _raw_files(tfds, dataset):
  if dataset in RAW_FILES:
    return list(RAW_FILES[dataset])
  try:  # A dataset built from manual files declares them.
    manual = getattr(tfds.builder_cls(dataset), 'MANUAL_FILES', None)
  except Exception:  # pylint: disable=broad-except
    manual = None
  if manual:
    return list(manual)
  try:  # Other datasets: the file names registered with the builder's checksums.
    return sorted({info.filename for info in tfds.builder(dataset).url_infos.values()
                   if info.filename})
  except Exception:  # pylint: disable=broad-except
    return []


def _missing_message(dataset, data_dir, folder, needed, missing, reason):
  where = data_dir_root(data_dir) + (' (the TFDS default)' if data_dir is None else '')
  lines = [f'Dataset {dataset!r} is not prepared in {where}, and {reason}.']
  if needed:
    present = len(needed) - len(missing)
    lines.append(
        f'To prepare it offline, put these files, as published (TFDS verifies their checksums), '
        f'in {folder}/:')
    lines += [f'  {f}' + ('  (missing)' if f in missing and present else '') for f in needed]
  else:
    lines.append(f'Put the raw files TFDS downloads for {dataset!r} in {folder}/.')
  lines.append(f'Or point {_CONFIG_FLAG}=<dir> at a directory where {dataset!r} is prepared '
               '(or whose downloads/manual/ holds those files). With internet access, the same '
               'command downloads and prepares it.')
  return '\n'.join(lines)


def _missing_manual_message(tfds, dataset, data_dir, folder, needed, missing):
  """Which files of a manually built dataset are missing, where each comes from, and where it
  goes."""
  where = data_dir_root(data_dir) + (' (the TFDS default)' if data_dir is None else '')
  builder_cls = tfds.builder_cls(dataset)
  source_of = getattr(builder_cls, 'source_of', None)
  lines = [f'Dataset {dataset!r} is not prepared in {where}, and it can only be built from '
           f'files you download yourself. Missing in {folder}/:']
  for f in missing:
    lines.append(f'  {f}' + (f'  <- {source_of(f)}' if source_of else ''))
  if len(missing) < len(needed):
    lines.append(f'({len(needed) - len(missing)} of the {len(needed)} files are there.)')
  instructions = getattr(builder_cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')
  if instructions:
    lines += ['', instructions.replace('<manual_dir>', folder).rstrip()]
  lines.append(f'Or point {_CONFIG_FLAG}=<dir> at a directory where {dataset!r} is prepared '
               '(or whose downloads/manual/ holds those files). See README "CUB (Table 4)".')
  return '\n'.join(lines)


@functools.cache
def tensorflow_installed():
  return importlib.util.find_spec('tensorflow') is not None


def _import_tfds():
  """Imports TFDS lazily and keeps TensorFlow, where installed, off the GPUs, which JAX is going
  to use."""
  if tensorflow_installed():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      tf.config.set_visible_devices([], 'GPU')
    except (RuntimeError, ValueError):  # TF already initialised its devices; nothing to do.
      pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Registers this project's own TFDS builders (those built from manually downloaded files).
  from mmali_jax.data import cub  # pylint: disable=g-import-not-at-top
  del cub
  return tfds
