"""Every config value checked before anything is compiled or written, with a message that names
the field, the value and what is allowed (docs: README "When something goes wrong")."""
import numbers

from mmali_jax import default_config
from mmali_jax import precision
from mmali_jax.data import pairing
from mmali_jax.evaluators import latent_probe
from mmali_jax.models import registry

# Modality names are processed in sorted order, which matches the order of the reference's keys
# ('0mnist' < '1mnist' < ...) for at most 10 modalities.
MAX_MODALITIES = 10
JOINT_CRITICS = ('dot', 'concat')
SPECTRAL_NORM_ESTIMATES = ('per_call', 'per_phase')
MATMUL_PRECISIONS = ('highest', 'float32', 'high', 'tensorfloat32', 'bfloat16_3x', 'default',
                     'bfloat16', precision.EMULATED_TF32)


class ConfigError(ValueError):
  """A config value that cannot work; the message names it and what is allowed."""


def _get(config, dotted):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def _is_int(value):
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _at_least(config, fields, minimum):
  for field in fields:
    value = _get(config, field)
    if not _is_int(value) or value < minimum:
      raise ConfigError(f'config.{field}={value!r} must be an integer >= {minimum}.')


def _in_range(config, field, low, high, low_open=False, high_open=False):
  value = _get(config, field)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
      (low < value if low_open else low <= value) and (value < high if high_open else
                                                       value <= high))
  if not ok:
    interval = f'{"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
    raise ConfigError(f'config.{field}={value!r} must be a number in {interval}.')


def check(config):
  """Raises ConfigError for the first value that cannot work."""
  _at_least(config, ('num_train_steps', 'batch_size', 'log_every_steps', 'checkpoint_every_steps',
                     'keep_checkpoints', 'latent_dim', 'style_dim', 'num_sample_images',
                     'data.multiplication'), 1)
  _at_least(config, ('steps_per_dispatch',), 0)
  if config.num_devices is not None:
    _at_least(config, ('num_devices',), 1)
  if config.style_dim >= config.latent_dim:
    raise ConfigError(f'config.style_dim={config.style_dim} must be smaller than '
                      f'config.latent_dim={config.latent_dim}: z = [style | content] needs both '
                      'parts.')
  try:
    default_config.discriminator_kind(config.discriminator)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  if config.joint_critic not in JOINT_CRITICS:
    raise ConfigError(f'config.joint_critic={config.joint_critic!r}; choose one of '
                      f'{JOINT_CRITICS}.')
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise ConfigError(f'config.matmul_precision={config.matmul_precision!r}; choose one of '
                      f'{MATMUL_PRECISIONS}.')
  if config.spectral_norm_estimates not in SPECTRAL_NORM_ESTIMATES:
    raise ConfigError(f'config.spectral_norm_estimates={config.spectral_norm_estimates!r}; '
                      f'choose one of {SPECTRAL_NORM_ESTIMATES}.')
  if config.batch_discriminator_calls and config.power_iterations_up_front is False:
    raise ConfigError('config.batch_discriminator_calls=True needs the spectral-norm power '
                      'iterations run before the calls, but config.power_iterations_up_front='
                      'False: set one of them the other way (or leave either unset).')
  _at_least(config, ('joint_critic_width',), 1)
  _check_modalities(config)
  _check_pairing(config)
  if config.joint_critic == 'dot' and len(config.modalities) != 2:
    raise ConfigError(f"config.joint_critic='dot' needs exactly 2 modalities, got "
                      f"{len(config.modalities)}; use joint_critic='concat'.")
  _in_range(config, 'data.percentage', 0.0, 1.0, low_open=True)
  if config.data.max_per_class is not None:
    _at_least(config, ('data.max_per_class',), 1)
  _in_range(config, 'ema.decay', 0.0, 1.0, high_open=True)
  _at_least(config, ('ema.start_step',), 0)
  _in_range(config, 'optim.learning_rate', 0.0, float('inf'), low_open=True, high_open=True)
  _in_range(config, 'optim.b1', 0.0, 1.0, high_open=True)
  _in_range(config, 'optim.b2', 0.0, 1.0, high_open=True)
  for term in ('lambda_unimodal', 'lambda_x_rec', 'lambda_c_rec', 'lambda_s_rec'):
    _in_range(config, f'loss.{term}', 0.0, float('inf'), high_open=True)
  eval_config = default_config.eval_config(config)
  _at_least(eval_config, ('probe_epochs', 'probe_batch_size', 'classifier_epochs',
                          'classifier_batch_size', 'num_joint_samples', 'batch_size',
                          'num_figure_examples'), 1)
  _at_least(eval_config, ('every_steps', 'probe_holdout', 'classifier_holdout'), 0)
  _at_least(eval_config, ('cca_components', 'num_retrieval_examples', 'retrieval_neighbours'), 1)
  _in_range(eval_config, 'cca_epsilon', 0.0, float('inf'), high_open=True)
  _check_evaluators(config, eval_config)
  parts = tuple(eval_config.probe_parts)
  if 'latent_probe' in eval_config.evaluators and (
      not parts or any(p not in latent_probe.PARTS for p in parts)):
    raise ConfigError(f'config.eval.probe_parts={parts!r}: choose one or more of '
                      f"{latent_probe.PARTS} ('both' is Tables 1 and 2; 'content' and 'style' are "
                      'Table 3).')


def check_holdout(config, field, num, what):
  """config.eval.<field> (probe_holdout, classifier_holdout) leaves examples of `what` (num
  training examples) to train on."""
  holdout = default_config.eval_config(config)[field]
  if holdout >= num:
    raise ConfigError(f'config.eval.{field}={holdout} holds out all {num} training examples of '
                      f'{what}; use a value below {num} (0: no held-out selection).')


def check_training_data(config, dataset):
  """Before training: there are training tuples, and the probe's and the classifiers' held-out
  examples (taken from the modalities' training splits, which `dataset` holds) leave examples to
  train on, so the first evaluation cannot fail on them."""
  if not dataset.num_pairs:
    raise ConfigError(
        f'No training tuples: {dataset.names} share no class with examples left after '
        f'config.data.percentage={config.data.percentage} and '
        f'config.data.max_per_class={config.data.max_per_class}; raise them (or check the '
        'datasets\' labels).')
  eval_config = default_config.eval_config(config)
  chosen = tuple(eval_config.evaluators) if eval_config.every_steps else ()  # 0: no evaluation
  fields = [f for f, e in (('probe_holdout', 'latent_probe'), ('classifier_holdout', 'coherence'))
            if e in chosen]
  for data in dataset.modalities:
    for field in fields:
      check_holdout(config, field, len(data.images), f'modality {data.name!r}')


# Evaluators and what they need of the modalities (mmali_jax/evaluators/evaluator.py).
IMAGE_EVALUATORS = ('latent_probe', 'coherence', 'figures')
FEATURE_EVALUATORS = ('correlation', 'retrieval')
EVALUATORS = IMAGE_EVALUATORS + FEATURE_EVALUATORS


def _check_evaluators(config, eval_config):
  chosen = tuple(eval_config.evaluators)
  unknown = [e for e in chosen if e not in EVALUATORS]
  if unknown:
    raise ConfigError(f'config.eval.evaluators={chosen!r}: unknown {unknown}; choose from '
                      f'{EVALUATORS}.')
  families = {spec.name: registry.FAMILIES[spec.network] for spec in config.modalities}
  image_ones = [e for e in chosen if e in IMAGE_EVALUATORS]
  vectors = sorted(n for n, f in families.items() if f.is_vector)
  if image_ones and vectors:
    raise ConfigError(
        f'config.eval.evaluators={chosen!r}: {image_ones} evaluate image modalities with '
        f'coherence classifiers, but {vectors} hold feature vectors; use '
        f'{FEATURE_EVALUATORS} for feature experiments (configs/cub.py).')
  feature_ones = [e for e in chosen if e in FEATURE_EVALUATORS]
  if feature_ones and (len(families) != 2 or len(vectors) != 2):
    raise ConfigError(
        f'config.eval.evaluators={chosen!r}: {feature_ones} compare two feature-vector '
        f'modalities (CCA), but the config has {sorted(families)} of which {vectors} are '
        f'vectors; use {IMAGE_EVALUATORS} for image experiments.')


def _check_pairing(config):
  kind = config.data.pairing
  if kind not in pairing.PAIRINGS:
    raise ConfigError(f'config.data.pairing={kind!r}; choose one of {sorted(pairing.PAIRINGS)}.')
  if kind == 'aligned' and (config.data.percentage != 1.0 or
                            config.data.max_per_class is not None):
    raise ConfigError("config.data.pairing='aligned' pairs every instance with all its views; "
                      'config.data.percentage and config.data.max_per_class apply to '
                      "'by_label' only: leave them at 1.0 and None.")


def _check_modalities(config):
  specs = list(config.modalities)
  if not 2 <= len(specs) <= MAX_MODALITIES:
    raise ConfigError(f'config.modalities has {len(specs)} modalities; MMALI needs at least 2, '
                      f'and this implementation supports up to {MAX_MODALITIES} (see '
                      'configs/multimnist.py for how to declare them).')
  names = [spec.name for spec in specs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ConfigError(f'config.modalities: duplicate names {duplicates}; every modality needs its '
                      'own name.')
  for spec in specs:
    where = f'Modality {spec.name!r}'
    if spec.network not in registry.FAMILIES:
      raise ConfigError(f'{where}: unknown network family {spec.network!r}; registered: '
                        f'{sorted(registry.FAMILIES)} (mmali_jax/models/registry.py).')
    if not isinstance(spec.dataset, str) or not spec.dataset:
      raise ConfigError(f'{where}: dataset={spec.dataset!r} must be the name of a TFDS dataset.')
    if not _is_int(spec.rotation):
      raise ConfigError(f'{where}: rotation={spec.rotation!r} must be an integer number of '
                        'quarter turns.')
    if not isinstance(spec.rec_weight, numbers.Real) or spec.rec_weight < 0:
      raise ConfigError(f'{where}: rec_weight={spec.rec_weight!r} must be a number >= 0.')
    feature = spec.get('feature')
    if feature is not None and (not isinstance(feature, str) or not feature):
      raise ConfigError(f'{where}: feature={feature!r} must be the name of a feature of '
                        f'{spec.dataset!r}, or None for the image of an (image, label) dataset.')
    if registry.FAMILIES[spec.network].is_vector and spec.rotation % 4:
      raise ConfigError(f'{where}: rotation={spec.rotation!r}, but network family '
                        f'{spec.network!r} takes feature vectors, which cannot be rotated; use 0.')


def check_images(modality_specs, dataset):
  """The loaded examples fit their network family: shape (after rotation) and dtype (uint8
  pixels for image families, float32 for feature-vector families)."""
  for spec, data in zip(modality_specs, dataset.modalities):
    expected = tuple(spec.family.example_shape)
    dtype = spec.family.dtype
    if tuple(data.images.shape[1:]) != expected or data.images.dtype.name != dtype:
      # Named as the family's kind: what the user has to bring is of that kind.
      kind = 'feature vectors' if spec.family.is_vector else 'images'
      feature = f' (feature {spec.feature!r})' if getattr(spec, 'feature', None) else ''
      raise ConfigError(
          f'Modality {spec.name!r}: dataset {spec.dataset!r}{feature} has {kind} of shape '
          f'{tuple(data.images.shape[1:])} and dtype {data.images.dtype}, but network family '
          f'{spec.network!r} takes {dtype} {kind} of shape {expected}. Choose a family for this '
          'dataset (mmali_jax/models/registry.py) or a dataset (and feature) for this family.')
