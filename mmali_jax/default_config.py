"""Defaults shared by every experiment config (configs/*.py say what differs).

Hyper-parameters follow the authors' reference code with the flags its README intends, not its
truncated README commands (docs/algorithm.md §7).
"""
import ml_collections

DISCRIMINATOR_KINDS = ('factorized', 'monolithic')
# The monolithic baseline's older name (Table 1 calls it "Joint"), still accepted.
DISCRIMINATOR_ALIASES = {'joint': 'monolithic'}


def discriminator_kind(name):
  """'factorized' or 'monolithic' for a config's `discriminator` value (aliases resolved)."""
  kind = DISCRIMINATOR_ALIASES.get(name, name)
  if kind not in DISCRIMINATOR_KINDS:
    raise ValueError(f'config.discriminator={name!r}; choose one of {DISCRIMINATOR_KINDS} '
                     f'(or {sorted(DISCRIMINATOR_ALIASES)}, an alias of monolithic).')
  return kind


def modality(name, dataset, network, rotation=0, rec_weight=1.0, feature=None):
  """One modality of the experiment.

  name: key; modalities are always processed in sorted order of their names.
  dataset: TFDS name of the examples (e.g. 'mnist', 'svhn_cropped', 'cub_features').
  network: architecture family in `mmali_jax.models.registry` ('mnist' MLPs, 'svhn' CNNs,
    'cub_caption' / 'cub_image' feature MLPs).
  rotation: number of 90-degree counter-clockwise turns applied to every image.
  rec_weight: the per-modality reconstruction coefficient kappa_m.
  feature: the dataset's feature holding this modality's examples (e.g. 'caption_embeddings');
    None = the image of an (image, label) dataset.
  """
  return ml_collections.ConfigDict(dict(
      name=name, dataset=dataset, network=network, rotation=rotation, rec_weight=rec_weight,
      feature=feature if feature is not None else ml_collections.config_dict.placeholder(str)))


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
  # The newest checkpoints kept; those of steps that are multiples of eval.every_steps (evaluated
  # during training) are kept as well.
  config.keep_checkpoints = 3
  # Training iterations per call into the device (lax.scan), each drawing its own batches on the
  # device; calls never cross a logging, checkpoint or evaluation step. 0 = automatic: 1 on CPU
  # (XLA:CPU runs convolutions inside loops slower), 100 on GPU/TPU.
  config.steps_per_dispatch = 0
  # Precision of float32 matmuls and convolutions on GPU/TPU (no effect on CPU): 'highest' is full
  # float32, as the reference's PyTorch matmuls; 'tensorfloat32' or 'bfloat16' trade accuracy
  # for speed. 'tensorfloat32_emulated' rounds every matmul operand of the step to TF32 on any
  # backend, to measure TF32's effect without TF32 hardware (docs/algorithm.md §5.3).
  config.matmul_precision = 'highest'
  # Spectral-norm estimates: 'per_call' runs one power iteration at every discriminator call, as
  # the reference (PyTorch's spectral_norm in train mode), so the calls of one step see different
  # estimates; 'per_phase' runs one per layer in the D step and one in the G step, every call of
  # the phase seeing that estimate (SN-GAN's one iteration per update). 'per_phase' changes the
  # numbers and is opt-in until shown within noise of 'per_call' (docs/performance.md).
  config.spectral_norm_estimates = 'per_call'
  # Where the power iterations run: in each discriminator call (False), or for a whole D step or
  # G step before its calls, batched over the layers whose kernels have nearby shapes (True): the
  # same estimates, in fewer GPU kernels (mmali_jax/power_iterations.py). None: True on GPU/TPU,
  # False on CPU.
  config.power_iterations_up_front = ml_collections.config_dict.placeholder(bool)
  # With the power iterations up front, run the calls of each discriminator in a D step or G step
  # as one call on their inputs concatenated, every row divided by its own call's estimates
  # (True): the same arithmetic, in fewer GPU kernels (mmali_jax/batched_calls.py). None: True
  # wherever the power iterations run up front. True turns them on where they are automatic.
  config.batch_discriminator_calls = ml_collections.config_dict.placeholder(bool)
  # Local devices the batch is sharded over ('data' mesh axis); None = all of them.
  config.num_devices = ml_collections.config_dict.placeholder(int)

  config.latent_dim = 20
  config.style_dim = 10

  # 'factorized': per-modality D0 ((M+1)-way) and D1 (binary) plus the joint critic T, combined
  # into the (M+1)-way logits of Eq. 10. 'monolithic' (alias 'joint'): one (M+1)-way
  # D(x_1..x_M, z), the baseline that Table 1 calls "Joint".
  config.discriminator = 'factorized'
  # Architecture of the joint critic T(x_1..x_M): 'dot' (inner product of two branches,
  # MNIST-SVHN) or 'concat'.
  config.joint_critic = 'concat'
  # Hidden width of the 'concat' critic's two layers (MultiMNIST 1024, CUB 512).
  config.joint_critic_width = 1024
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
      # How examples of the modalities form tuples (mmali_jax/data/pairing.py): 'by_label' =
      # same-class examples matched by random permutations; 'aligned' = example i of every
      # modality describes the same instance (CUB: an image and each of its 10 captions).
      pairing='by_label',
      # Off = the reference: every batch is drawn from the paired set. On = the paper's unpaired
      # path: the unimodal terms and the product-of-marginals negatives draw from each modality's
      # whole training set.
      unpaired=False,
  ))

  # Sample grids written next to every checkpoint.
  config.num_sample_images = 16
  # Evaluation during training and by `python -m mmali_jax.evaluate` (docs/algorithm.md §9).
  config.eval = eval_defaults()
  return config


def from_dict(values):
  """The config of a stored run (the dict form of <workdir>/config.json): the defaults, with their
  types and placeholders, and the stored values on top, so that command-line overrides such as
  --config.data.tfds_data_dir=DIR work on it as on a config file."""
  config = base_config()
  _update(config, values)
  return config


def _update(config, values):
  for key, value in values.items():
    if key == 'modalities':
      # Fields added since the run was stored take their defaults.
      config.modalities = [modality(**m) for m in value]
    elif isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _update(config[key], value)
    else:
      config[key] = value


def eval_defaults():
  """Defaults of `config.eval`."""
  return ml_collections.ConfigDict(dict(
      # What to evaluate (mmali_jax/evaluators/evaluator.py): 'latent_probe', 'coherence' and
      # 'figures' need image modalities with coherence classifiers; 'correlation' (CCA, Table 4)
      # and 'retrieval' need two feature-vector modalities.
      evaluators=('latent_probe', 'coherence', 'figures'),
      # Periodic evaluation during training, and after its last step (the reference's
      # eval_interval); 0 = no evaluation during training.
      every_steps=50_000,
      # Default: <workdir>/classifiers. A relative path is relative to the workdir; typed on a
      # command line (--config.eval.classifier_dir=...), relative to where it runs.
      classifier_dir=ml_collections.config_dict.placeholder(str),
      # The reference trains 100 epochs; MNIST's is at 98.75% after 30 (docs/algorithm.md §9).
      classifier_epochs=30,
      classifier_batch_size=256,
      classifier_lr=1e-3,
      # Last training examples held out for selecting the kept classifier epoch.
      classifier_holdout=5_000,
      # The linear probe: Adam(1e-3), batch 256, 100 epochs, as the reference.
      probe_epochs=100,
      probe_batch_size=256,
      probe_lr=1e-3,
      # Last training examples held out for the probe's `selected_test_accuracy`.
      probe_holdout=5_000,
      # Parts of z probed: 'both' (Tables 1, 2), 'content' and 'style' (Table 3).
      probe_parts=('both', 'content', 'style'),
      # Joint coherence: prior samples (the reference: 10,000).
      num_joint_samples=10_000,
      # Chunk size of the jitted evaluation functions (does not change any number).
      batch_size=1_000,
      # Examples (columns) in Figures 3 and 4.
      num_figure_examples=10,
      # CCA correlation (docs/algorithm.md §9.4): components and diagonal regulariser.
      cca_components=40,
      cca_epsilon=1e-12,
      # Nearest-neighbour retrieval: generated examples listed, neighbours per example.
      num_retrieval_examples=10,
      retrieval_neighbours=5,
      # Folder of the dataset's images (CUB_200_2011/images), for retrieval PNG grids; None = only
      # the index lists.
      images_dir=ml_collections.config_dict.placeholder(str),
  ))


def eval_config(config):
  """`config.eval` with every default filled in (works on configs without an `eval` field)."""
  merged = eval_defaults()
  if 'eval' in config:
    for key, value in config.eval.items():  # resolved values: placeholders can't be merged
      merged[key] = value
  return merged
