"""Defaults shared by every experiment config (configs/*.py say what differs).

Hyper-parameters follow the authors' reference code with the intended README flags
(ALGORITHM.md §4), not the truncated README commands (§8.1).
"""
import ml_collections

from mmali_jax import evaluators


def modality(name, dataset, network, rotation=0, rec_weight=1.0):
  """One modality of the experiment.

  name: key; modalities are always processed in sorted order of their names.
  dataset: TFDS name of the images (e.g. 'mnist', 'svhn_cropped').
  network: architecture family in `mmali_jax.modalities.NETWORKS` ('mnist' MLPs, 'svhn' CNNs).
  rotation: number of 90-degree counter-clockwise turns applied to every image.
  rec_weight: the per-modality reconstruction coefficient kappa_m.
  """
  return ml_collections.ConfigDict(dict(name=name, dataset=dataset, network=network,
                                        rotation=rotation, rec_weight=rec_weight))


def parse_arguments(arg, defaults):
  """'k1=v1,k2=v2' (the part after ':' in --config=configs/x.py:...) over `defaults`, typed
  like the defaults; unknown keys are an error that lists the known ones."""
  options = dict(kv.split('=', 1) for kv in (arg or '').split(',') if kv)
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise ValueError(f'Unknown config argument(s) {unknown}; expected some of '
                     + ','.join(f'{k}=<{type(v).__name__}>' for k, v in defaults.items()) + '.')
  return {k: type(v)(options.get(k, v)) for k, v in defaults.items()}


def base_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_train_steps = 250_000
  config.batch_size = 64
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  # Local devices the batch is sharded over ('data' mesh axis); None = all of them.
  config.num_devices = ml_collections.config_dict.placeholder(int)

  config.latent_dim = 20
  config.style_dim = 10

  # 'factorized': per-modality D0 ((M+1)-way) and D1 (binary) plus the joint critic T, combined
  # into the (M+1)-way logits of Eq. 10. 'joint': one monolithic (M+1)-way D(x_1..x_M, z).
  config.discriminator = 'factorized'
  # Architecture of T(x_1..x_M): 'dot' (inner product of two branches, MNIST-SVHN) or 'concat'.
  config.joint_critic = 'concat'
  config.modalities = []

  config.loss = ml_collections.ConfigDict(dict(
      lambda_unimodal=0.1,
      lambda_x_rec=0.0,
      lambda_c_rec=0.0,
      lambda_s_rec=0.0,
      # Reconstruct through the averaged product of experts (content) instead of per modality.
      joint_rec=False,
  ))

  config.optim = ml_collections.ConfigDict(dict(learning_rate=2e-4, b1=0.5, b2=0.999))
  # EMA of the encoder/decoder parameters: a plain copy up to `start_step`, then decay.
  config.ema = ml_collections.ConfigDict(dict(decay=0.9999, start_step=50_000))

  config.data = ml_collections.ConfigDict(dict(
      tfds_data_dir=ml_collections.config_dict.placeholder(str),
      # Each class's examples are matched by `multiplication` independent random permutations.
      multiplication=30,
      # Fraction of each class used for pairs (0.2 for the paper's 20% setting).
      percentage=1.0,
      max_per_class=ml_collections.config_dict.placeholder(int),
      # Off = the reference: every batch is drawn from the paired set. On = the paper's unpaired
      # path: the unimodal terms and the product-of-marginals negatives draw from each modality's
      # whole training set.
      unpaired=False,
  ))

  # Sample grids written next to every checkpoint.
  config.num_sample_images = 16
  # Evaluation (python -m mmali_jax.evaluate; mmali_jax/evaluators/__init__.py documents it).
  config.eval = evaluators.eval_defaults()
  return config
