"""TFDS builders of generated labelled images, for tests that prepare a dataset themselves."""
import numpy as np


def digits_builder(class_name, version, shape, split_sizes, register=True):
  """A tfds GeneratorBasedBuilder class named `class_name` (TFDS's dataset name is its snake_case
  form) whose `image` feature has `shape`, `label` has 10 classes, supervised keys (image, label).
  Split `s` holds `split_sizes[s]` examples: uint8 noise drawn with the split's position in
  `split_sizes` as seed, labels i % 10. register=False leaves TFDS's registry alone, so a class
  named as a registered dataset (Mnist, version 3.0.1) writes files that dataset's own builder
  then reads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=shape),
            'label': tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(n, seed)
            for seed, (split, n) in enumerate(split_sizes.items())}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {'image': rng.integers(0, 256, shape, dtype=np.uint8), 'label': i % 10}

  return type(class_name, (tfds.core.GeneratorBasedBuilder,),
              {'VERSION': tfds.core.Version(version), '_info': _info,
               '_split_generators': _split_generators, '_generate_examples': _generate_examples,
               '__module__': __name__},
              skip_registration=not register)
