"""The CUB experiment end to end on tiny generated files: data, training, Table 4's report."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from mmali_jax import config_checks
from mmali_jax import modalities
from mmali_jax import train
from mmali_jax.data import pipeline
from mmali_jax.data import sources
from tests.conftest import small_config
from tests.cub_files import write_cub_files


@pytest.fixture(scope='module')
def cub_dir(tmp_path_factory):
  """A TFDS data dir whose manual folder holds tiny CUB files (prepared by the first test)."""
  root = tmp_path_factory.mktemp('tfds')
  files = write_cub_files(str(root / 'downloads' / 'manual'), marked=True)
  return str(root), files


@pytest.fixture(scope='module')
def correlated_dir(tmp_path_factory):
  """Enough generated images for CCA to generalise from the training to the test images."""
  root = tmp_path_factory.mktemp('tfds_correlated')
  files = write_cub_files(str(root / 'downloads' / 'manual'), sizes={'train': 40, 'test': 10},
                          seed=1)
  rng = np.random.default_rng(0)
  for filenames, *_ in files.values():  # stand-ins for CUB_200_2011/images/<filename>.jpg
    for name in filenames:
      path = root / 'images' / f'{name}.jpg'
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
  return str(root)


def _config(data_dir, **overrides):
  config = small_config('cub', **overrides)
  config.data.tfds_data_dir = data_dir
  return config


def test_pairs_are_every_image_with_each_of_its_captions(cub_dir):
  data_dir, files = cub_dir
  for split, (filenames, classes, captions, images) in files.items():
    data = pipeline.load_dataset(_config(data_dir), split)
    n = len(filenames)
    caption, image = data.modalities
    assert data.names == ['0cap', '1img']
    assert data.num_pairs == 10 * n  # 88,550 / 29,330 on the standard 8,855 / 2,933 images
    assert caption.images.shape == (10 * n, 1024) and image.images.shape == (n, 2048)
    assert caption.images.dtype == image.images.dtype == np.float32
    # Row 10 i + j: caption j of image i, with image i (the generated files mark i and j).
    i, j = np.divmod(np.arange(10 * n), 10)
    np.testing.assert_array_equal(data.pairs, np.stack([10 * i + j, i], axis=1))
    np.testing.assert_array_equal(caption.images[data.pairs[:, 0], 0], i)
    np.testing.assert_array_equal(caption.images[data.pairs[:, 0], 1], j)
    np.testing.assert_array_equal(image.images[data.pairs[:, 1], 0], i)
    np.testing.assert_array_equal(caption.images[data.pairs[:, 0]], captions.reshape(-1, 1024))
    np.testing.assert_array_equal(image.images[data.pairs[:, 1]], images[i])
    np.testing.assert_array_equal(data.labels, classes[i] - 1)  # class_info holds 1..200
    stored, _ = sources.load_split('cub_features', split, data_dir, 'filename')
    assert [f.decode() for f in stored] == filenames  # filenames.pickle order


def test_a_feature_the_family_cannot_take_is_named(cub_dir):
  data_dir, _ = cub_dir
  config = _config(data_dir)
  config.modalities[1].feature = 'caption_embeddings'  # 1024-d captions for the image network
  mods = modalities.from_config(config)
  with pytest.raises(config_checks.ConfigError,
                     match=r"'1img': dataset 'cub_features' \(feature 'caption_embeddings'\) has "
                           r'feature vectors of shape \(10, 1024\) .* takes float32 feature vectors '
                           r'of shape \(2048,\)'):
    config_checks.check_images(mods, pipeline.load_dataset(config, 'train'))
  config = _config(data_dir)
  config.modalities[0].feature = 'captions'
  with pytest.raises(ValueError, match=r"has no feature 'captions'.*caption_embeddings"):
    pipeline.load_dataset(config, 'train')


def test_missing_files_are_named_with_their_source_and_folder(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  write_cub_files(str(manual), skip=('image_features_resnet101.npy',))
  with pytest.raises(sources.MissingDatasetError) as err:
    sources.ensure_prepared([('cub_features', 'image_features')], str(tmp_path))
  message = str(err.value)
  assert f'Missing in {manual}/:' in message
  for split in ('train', 'test'):
    assert f'cub/{split}/image_features_resnet101.npy  <- python -m mmali_jax.cub_features' in (
        message)
    assert f'cub/{split}/filenames.pickle' not in message.split('\n\n')[0]
  assert '(6 of the 8 files are there.)' in message
  empty = tmp_path / 'empty'
  with pytest.raises(sources.MissingDatasetError,
                     match=r'(?s)cub/train/char-CNN-RNN-embeddings.pickle  <- the StackGAN '
                           r'"birds" preprocessed data'):
    sources.ensure_prepared([('cub_features', 'image_features')], str(empty))


def test_a_file_of_the_wrong_shape_is_named(tmp_path):
  manual = tmp_path / 'downloads' / 'manual'
  write_cub_files(str(manual))
  np.save(manual / 'cub' / 'test' / 'image_features_resnet101.npy', np.zeros((4, 100), np.float32))
  with pytest.raises(sources.MissingDatasetError,
                     match=r'(?s)could not be prepared: .*test/image_features_resnet101.npy has '
                           r'shape \(4, 100\); expected \(4, 2048\)'):
    sources.ensure_prepared([('cub_features', 'image_features')], str(tmp_path))


def test_aligned_pairing_refuses_label_subsampling(cub_dir):
  config = _config(cub_dir[0])
  config.data.percentage = 0.2
  with pytest.raises(config_checks.ConfigError, match="pairing='aligned'"):
    config_checks.check(config)
  config = _config(cub_dir[0])
  config.eval.evaluators = ('correlation', 'coherence')
  with pytest.raises(config_checks.ConfigError, match="'coherence'.*hold feature vectors"):
    config_checks.check(config)


def test_training_and_evaluation_write_the_correlation_report(correlated_dir, tmp_path):
  data_dir = correlated_dir
  config = _config(data_dir, num_train_steps=2, checkpoint_every_steps=2)
  config.eval.every_steps = 2
  config.eval.cca_components = 4  # 400 training pairs of 40 images
  config.eval.num_joint_samples = 64
  config.eval.batch_size = 32
  config.eval.num_retrieval_examples = 3
  config.eval.retrieval_neighbours = 2
  config.eval.images_dir = os.path.join(data_dir, 'images')
  workdir = str(tmp_path / 'run')
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  metrics = json.loads((tmp_path / 'run' / 'eval' / 'metrics.json').read_text())
  quantities = ('ground_truth', 'joint', 'cross/0cap_to_1img', 'cross/1img_to_0cap')
  for prefix in ('correlation', 'correlation_canonical'):
    for quantity in quantities:
      assert -1.0 <= metrics[f'{prefix}/{quantity}'] <= 1.0
  # The generated views share a latent per image: real test pairs correlate.
  assert metrics['correlation/ground_truth'] > 0.5
  assert not any(k.startswith(('latent/', 'coherence/')) for k in metrics)
  report = (tmp_path / 'run' / 'eval' / 'report.md').read_text()
  assert 'Experiment: cub' in report
  for quantity, paper in zip(quantities, ('0.406', '0.502', '0.545', '0.488')):
    assert f'| correlation/{quantity} | {metrics["correlation/" + quantity]:.3f} | {paper} |' in (
        report)
  retrieval = json.loads((tmp_path / 'run' / 'eval' / 'retrieval.json').read_text())
  assert len(retrieval['joint']) == 3
  first = retrieval['0cap_to_1img'][0]
  assert len(first['neighbours']['indices']) == 2
  assert all(0 <= i < 40 for i in first['neighbours']['indices'])  # training images
  assert first['neighbours']['filenames'][0].startswith(('001.', '002.', '003.'))
  assert first['source_filename'].startswith(('004.', '005.', '006.'))  # a test image
  assert all(i < 400 for r in retrieval['1img_to_0cap'] for i in r['neighbours']['indices'])
  for direction in ('0cap_to_1img', '1img_to_0cap'):  # source image, then 2 neighbours
    grid = Image.open(tmp_path / 'run' / 'eval' / f'retrieval_{direction}.png')
    assert round(grid.height / 66) == 3  # 3 test pairs: rows of 64-pixel images, 2-pixel lines
    assert grid.width > 3 * 66  # the source and 2 neighbours, after the row labels
  # The report names this step's own grid (also copied to retrieval_<direction>.png, above).
  assert 'retrieval_0cap_to_1img_step_2.png' in report
  assert ((tmp_path / 'run' / 'eval' / 'retrieval_0cap_to_1img_step_2.png').read_bytes() ==
          (tmp_path / 'run' / 'eval' / 'retrieval_0cap_to_1img.png').read_bytes())
  assert os.path.getsize(tmp_path / 'run' / 'samples' / 'step_0000002.png') > 0
