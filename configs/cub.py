"""CUB image-caption features (paper Section 4.3, Table 4).

Caption: the 10 char-CNN-RNN embeddings (1024-d) of every image; image: ResNet-101 features
(2048-d); every image paired with each of its captions. Data recipe: README "CUB (Table 4)".
"""
from mmali_jax import default_config


def get_config(arg=''):
  args = default_config.parse_arguments(arg, dict(discriminator='factorized'))

  config = default_config.base_config()
  # Named as the reference's keys, so that the sorted order (caption, image) is the same.
  config.modalities = [
      default_config.modality('0cap', 'cub_features', 'cub_caption', rec_weight=1000.0,
                              feature='caption_embeddings'),
      default_config.modality('1img', 'cub_features', 'cub_image', rec_weight=1.0,
                              feature='image_features'),
  ]
  config.data.pairing = 'aligned'
  config.discriminator = default_config.discriminator_kind(args['discriminator'])
  config.joint_critic = 'concat'
  config.joint_critic_width = 512
  config.latent_dim = 64
  config.style_dim = 32
  config.loss.lambda_unimodal = 1.0
  config.loss.lambda_x_rec = 1.0
  config.loss.lambda_c_rec = 0.0
  config.loss.lambda_s_rec = 0.0
  config.loss.joint_rec = False
  config.eval.evaluators = ('correlation', 'retrieval')
  return config
