"""MNIST-SVHN (Tables 2 and 3).

Variants: `configs/mnist_svhn.py:percentage=0.2` (the paper's 20% setting),
`configs/mnist_svhn.py:discriminator=joint`.
"""
from mmali_jax import default_config


def get_config(arg=''):
  options = dict(kv.split('=') for kv in arg.split(',') if kv)
  percentage = float(options.pop('percentage', 1.0))
  discriminator = options.pop('discriminator', 'factorized')
  if options:
    raise ValueError(f'Unknown config argument(s) {sorted(options)}; '
                     'expected percentage=<0..1>,discriminator=factorized|joint.')

  config = default_config.base_config()
  config.modalities = [
      default_config.modality('0mnist', 'mnist', 'mnist'),
      default_config.modality('1svhn', 'svhn_cropped', 'svhn'),
  ]
  config.discriminator = discriminator
  config.joint_critic = 'dot'
  config.loss.lambda_unimodal = 0.1
  config.loss.lambda_x_rec = 0.05
  config.loss.lambda_c_rec = 0.05
  config.loss.lambda_s_rec = 0.05
  config.loss.joint_rec = True
  config.data.percentage = percentage
  return config
