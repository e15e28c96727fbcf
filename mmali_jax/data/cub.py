"""The TFDS dataset `cub_features`: CUB-200-2011 caption and image features, built offline.

One example per bird image, in the order of the StackGAN "birds" split's filenames.pickle:
  caption_embeddings  float32 [10, 1024]  the image's 10 char-CNN-RNN caption embeddings
  image_features      float32 [2048]      ResNet-101 global-average-pool features of the image
  label               the CUB class (0-199; class_info.pickle holds 1-200)
  filename            '<class folder>/<image name>', the image under CUB_200_2011/images/
Splits: train (8,855 images, 150 classes) and test (2,933 images, 50 other classes).

The files are not downloadable by TFDS; they go in `<data_dir>/downloads/manual/cub/`
(docs/algorithm.md §8.5, README "CUB (Table 4)"). Importing this module registers the builder;
`mmali_jax.data.sources` does that whenever it loads a dataset.
"""
import os
import pickle

import numpy as np
import tensorflow_datasets as tfds

MANUAL_SUBDIR = 'cub'
SPLITS = ('train', 'test')
CAPTIONS_PER_IMAGE = 10
CAPTION_DIM = 1024
IMAGE_DIM = 2048
NUM_CLASSES = 200
IMAGE_FEATURES_FILE = 'image_features_resnet101.npy'
# Per split: file -> where it comes from.
SPLIT_FILES = {
    'filenames.pickle': 'the StackGAN "birds" preprocessed data (birds/<split>/)',
    'class_info.pickle': 'the StackGAN "birds" preprocessed data (birds/<split>/)',
    'char-CNN-RNN-embeddings.pickle': 'the StackGAN "birds" preprocessed data (birds/<split>/)',
    IMAGE_FEATURES_FILE: ('python -m mmali_jax.cub_features --images_dir=<CUB_200_2011/images> '
                          '--split_dir=<birds/<split>> (ResNet-101 features of the CUB images), '
                          'or precomputed features [N, 2048] in filenames.pickle order'),
}
MANUAL_FILES = tuple(f'{MANUAL_SUBDIR}/{split}/{name}' for split in SPLITS for name in SPLIT_FILES)


def source_of(path):
  """Where the manual file `path` (relative to the manual folder) comes from."""
  return SPLIT_FILES[os.path.basename(path)]


def read_pickle(path):
  """A pickle of the StackGAN data, written by Python 2 (latin1 keeps its byte strings)."""
  with open(path, 'rb') as f:
    return pickle.load(f, encoding='latin1')


def read_split(folder):
  """{name: array} of one split folder, checked for consistent lengths and shapes."""
  filenames = [f.decode() if isinstance(f, bytes) else str(f)
               for f in read_pickle(os.path.join(folder, 'filenames.pickle'))]
  classes = np.asarray(read_pickle(os.path.join(folder, 'class_info.pickle')), np.int64)
  captions = np.asarray(read_pickle(os.path.join(folder, 'char-CNN-RNN-embeddings.pickle')),
                        np.float32)
  images = np.load(os.path.join(folder, IMAGE_FEATURES_FILE)).astype(np.float32)
  n = len(filenames)
  expected = {'class_info.pickle': (classes.shape, (n,)),
              'char-CNN-RNN-embeddings.pickle': (captions.shape,
                                                 (n, CAPTIONS_PER_IMAGE, CAPTION_DIM)),
              IMAGE_FEATURES_FILE: (images.shape, (n, IMAGE_DIM))}
  for name, (shape, want) in expected.items():
    if tuple(shape) != want:
      raise ValueError(f'{os.path.join(folder, name)} has shape {tuple(shape)}; expected {want} '
                       f'for the {n} images of filenames.pickle.')
  if n and (classes.min() < 1 or classes.max() > NUM_CLASSES):
    raise ValueError(f'{folder}/class_info.pickle holds classes outside 1..{NUM_CLASSES}.')
  return dict(filename=filenames, label=classes - 1, caption_embeddings=captions,
              image_features=images)


class CubFeatures(tfds.core.GeneratorBasedBuilder):
  """CUB-200-2011 char-CNN-RNN caption embeddings and ResNet-101 image features."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_FILES = MANUAL_FILES  # relative to the manual folder; sources.py checks them first
  source_of = staticmethod(source_of)
  RELEASE_NOTES = {'1.0.0': 'StackGAN birds split; 10 captions and one image feature per image.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put, for each split (train, test), in <manual_dir>/{MANUAL_SUBDIR}/<split>/:
  filenames.pickle, class_info.pickle, char-CNN-RNN-embeddings.pickle
    from the StackGAN "birds" preprocessed data (folders birds/train, birds/test);
  {IMAGE_FEATURES_FILE}
    float32 [N, 2048], one row per entry of filenames.pickle, made by
    python -m mmali_jax.cub_features --images_dir=CUB_200_2011/images \\
      --split_dir=<manual_dir>/{MANUAL_SUBDIR}/<split>
"""

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'caption_embeddings': tfds.features.Tensor(
                shape=(CAPTIONS_PER_IMAGE, CAPTION_DIM), dtype=np.float32),
            'image_features': tfds.features.Tensor(shape=(IMAGE_DIM,), dtype=np.float32),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'filename': tfds.features.Text(),
        }),
        supervised_keys=None,
        # Stored in filenames.pickle order, so that example indices are positions in it.
        disable_shuffling=True,
        homepage='https://www.vision.caltech.edu/datasets/cub_200_2011/',
    )

  def _split_generators(self, dl_manager):
    root = os.path.join(os.fspath(dl_manager.manual_dir), MANUAL_SUBDIR)
    missing = [f for f in MANUAL_FILES
               if not os.path.isfile(os.path.join(os.fspath(dl_manager.manual_dir), f))]
    if missing:
      raise FileNotFoundError(
          f'cub_features is built from files in {os.fspath(dl_manager.manual_dir)}; missing: '
          + ', '.join(missing) + '.\n' + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {split: self._generate_examples(os.path.join(root, split)) for split in SPLITS}

  def _generate_examples(self, folder):
    data = read_split(folder)
    for i, filename in enumerate(data['filename']):
      yield i, {'caption_embeddings': data['caption_embeddings'][i],
                'image_features': data['image_features'][i],
                'label': int(data['label'][i]), 'filename': filename}
