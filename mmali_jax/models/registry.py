"""The registry of network families: everything one architecture needs, by name.

A modality's config names its family (`network='mnist'`); a new architecture is one entry here,
with no other code path to touch: the shape and dtype of one example (uint8 images [H, W, C], or
float32 feature vectors [D]), encoder, decoder, the discriminator pieces (the x-z discriminator
used for D0 and D1, and the x branch shared by the joint critic T and the monolithic
discriminator) and the coherence classifier that judges its generations (None for feature
vectors, which have no digit to classify).
"""
import dataclasses
from typing import Optional

from mmali_jax.models import features
from mmali_jax.models import mnist
from mmali_jax.models import svhn


@dataclasses.dataclass(frozen=True)
class NetworkFamily:
  example_shape: tuple  # one example: H, W, C of an image, or D of a feature vector
  encoder: type  # Encoder(latent_dim)(x) -> (mean, log-variance)
  decoder: type  # Decoder(example_shape)(z) -> x (images in [0, 1]; features unbounded)
  xz_discriminator: type  # XZDiscriminator(outputs)(x, z, update_stats) -> logits (D0, D1)
  x_features: type  # XFeatures()(x, update_stats) -> features (T, monolithic D)
  classifier: Optional[type] = None  # Classifier()(x, train) -> 10 logits (coherence)
  dtype: str = 'uint8'  # of the stored examples: uint8 pixels, or float32 features

  @property
  def image_shape(self):
    """The example shape (the name from when every family took images)."""
    return self.example_shape

  @property
  def is_vector(self):
    return len(self.example_shape) == 1


FAMILIES = {
    'mnist': NetworkFamily((28, 28, 1), mnist.Encoder, mnist.Decoder, mnist.XZDiscriminator,
                           mnist.XFeatures, mnist.Classifier),
    'svhn': NetworkFamily((32, 32, 3), svhn.Encoder, svhn.Decoder, svhn.XZDiscriminator,
                          svhn.XFeatures, svhn.Classifier),
    # CUB (paper Section 4.3): char-CNN-RNN caption embeddings and ResNet-101 image features.
    # One module set; every width follows from the feature dimension (docs/algorithm.md §6.5).
    'cub_caption': NetworkFamily((1024,), features.Encoder, features.Decoder,
                                 features.XZDiscriminator, features.XFeatures, dtype='float32'),
    'cub_image': NetworkFamily((2048,), features.Encoder, features.Decoder,
                               features.XZDiscriminator, features.XFeatures, dtype='float32'),
}


def family(name):
  """The NetworkFamily registered as `name`; an unknown name is an error listing the known ones."""
  if name not in FAMILIES:
    raise ValueError(f'Unknown network family {name!r}; registered: {sorted(FAMILIES)} '
                     '(mmali_jax/models/registry.py).')
  return FAMILIES[name]
