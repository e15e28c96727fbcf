"""MNIST-SVHN (Tables 2 and 3).

Variants: `configs/mnist_svhn.py:percentage=0.2` (the paper's 20% setting),
`configs/mnist_svhn.py:discriminator=monolithic` (the baseline Table 1 calls
"Joint"; `discriminator=joint` is accepted too).
"""
from mmali_jax import default_config


def get_config(arg=''):
  args = default_config.parse_arguments(arg, dict(percentage=1.0, discriminator='factorized'))
  percentage, discriminator = args['percentage'], args['discriminator']

  config = default_config.base_config()
  config.modalities = [
      default_config.modality('0mnist', 'mnist', 'mnist'),
      default_config.modality('1svhn', 'svhn_cropped', 'svhn'),
  ]
  config.discriminator = default_config.discriminator_kind(discriminator)
  config.joint_critic = 'dot'
  config.loss.lambda_unimodal = 0.1
  config.loss.lambda_x_rec = 0.05
  config.loss.lambda_c_rec = 0.05
  config.loss.lambda_s_rec = 0.05
  config.loss.joint_rec = True
  config.data.percentage = percentage
  return config
