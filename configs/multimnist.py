"""MultiMNIST (Table 1): M copies of MNIST, modality k rotated 90*k degrees counter-clockwise.

Variants: `configs/multimnist.py:modalities=4,discriminator=monolithic` (the baseline Table 1 calls
"Joint"; `discriminator=joint` is accepted too).
"""
from mmali_jax import default_config


def get_config(arg='modalities=2,discriminator=factorized'):
  args = default_config.parse_arguments(arg, dict(modalities=2, discriminator='factorized'))
  num_modalities, discriminator = args['modalities'], args['discriminator']

  config = default_config.base_config()
  config.modalities = [
      default_config.modality(f'{k}mnist', 'mnist', 'mnist', rotation=k)
      for k in range(num_modalities)
  ]
  config.discriminator = default_config.discriminator_kind(discriminator)
  config.joint_critic = 'concat'
  config.loss.lambda_unimodal = 0.1
  config.eval.probe_parts = ('both',)  # Table 1 probes the whole latent
  return config
