"""Evaluates a trained run: python -m mmali_jax.evaluate --workdir=runs/ms

Restores the EMA encoders/decoders of the latest checkpoint (the config is read from the
workdir unless --config is given) and writes <workdir>/eval/metrics.json, report.md (metric,
ours, paper) and the figures. Evaluation reads only checkpoints and configs, never the training
loop. Accuracies are percentages.
"""
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import numpy as np

from mmali_jax import checkpointing
from mmali_jax import classifiers as classifiers_lib
from mmali_jax import console
from mmali_jax import evaluators
from mmali_jax import networks
from mmali_jax import paper
from mmali_jax.data import pipeline
from mmali_jax.data import sources
from mmali_jax.evaluators import coherence
from mmali_jax.evaluators import figures
from mmali_jax.evaluators import latent_probe

PROBE_READOUTS = ('final_test_accuracy', 'selected_test_accuracy',
                  'best_test_accuracy_over_epochs')


def generator_fns(config, ema_params):
  """Jitted {name: encode(x) -> (mean, logvar)} and {name: decode(z) -> x} of the EMA weights."""
  mods, gen, _ = networks.build(config)
  encode = jax.jit(lambda p, m, x: gen.apply({'params': p}, m, x, method='encode'),
                   static_argnums=1)
  decode = jax.jit(lambda p, m, z: gen.apply({'params': p}, m, z, method='decode'),
                   static_argnums=1)
  encoders = {mod.name: (lambda x, m=m: encode(ema_params, m, x)) for m, mod in enumerate(mods)}
  decoders = {mod.name: (lambda z, m=m: decode(ema_params, m, z)) for m, mod in enumerate(mods)}
  return mods, encoders, decoders


def probe_modalities(mods):
  """The modalities whose encoders are probed: one per dataset, the unrotated one (Table 1 probes
  the encoder of the unrotated MultiMNIST modality; Tables 2-3 probe MNIST and SVHN)."""
  return [m for m in mods if m.rotation == 0]


def run_probes(config, encoders, mods, eval_cfg, seed):
  results = {}
  for mod in probe_modalities(mods):
    splits = {s: sources.load_split(mod.dataset, s, config.data.tfds_data_dir)
              for s in ('train', 'test')}
    for part in eval_cfg.probe_parts:
      features = latent_probe.latent_features(encoders[mod.name], config.style_dim, part)
      out = latent_probe.linear_probe(
          features, *splits['train'], *splits['test'], epochs=eval_cfg.probe_epochs,
          batch_size=eval_cfg.probe_batch_size, lr=eval_cfg.probe_lr, seed=seed,
          holdout=eval_cfg.probe_holdout)
      for readout in PROBE_READOUTS:
        results[f'latent/{mod.name}/{part}/{readout}'] = 100.0 * out[readout]
      logging.info('Probe %s/%s: final %.2f%%, held-out selected %.2f%%, best over epochs '
                   '%.2f%%', mod.name, part, *(100 * out[r] for r in PROBE_READOUTS))
  return results


def run_coherence(config, encoders, decoders, test, classifier_dir, eval_cfg, seed):
  predict = classifiers_lib.load_classifiers(config, classifier_dir)
  own = classifiers_lib.classifier_metrics(config, classifier_dir)
  images = {m.name: m.images for m in test.modalities}
  results = coherence.evaluate_coherence(
      encoders, decoders, predict, images, test.labels, style_dim=config.style_dim,
      latent_dim=config.latent_dim, rng=jax.random.PRNGKey(seed), indices=test.pairs,
      num_joint_samples=eval_cfg.num_joint_samples, batch_size=eval_cfg.batch_size)
  results = {f'coherence/{k}': 100.0 * v for k, v in results.items()}
  for name, metrics in own.items():
    results[f'classifier/{name}/test_accuracy'] = 100.0 * metrics['selected_test_accuracy']
  return results


def evaluate(config, workdir, step=None):
  """Runs every evaluator on the checkpoint; writes and returns the metrics."""
  eval_cfg = evaluators.eval_config(config)
  ema_params, step = checkpointing.restore_ema(workdir, step)
  mods, encoders, decoders = generator_fns(config, ema_params)
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  seed = config.seed
  metrics = {'step': step}
  metrics.update(run_probes(config, encoders, mods, eval_cfg, seed))

  test = pipeline.load_dataset(config, 'test')
  classifier_dir = eval_cfg.classifier_dir or os.path.join(workdir, 'classifiers')
  notes = []
  try:
    metrics.update(run_coherence(config, encoders, decoders, test, classifier_dir, eval_cfg, seed))
  except FileNotFoundError as err:
    notes.append(f'Coherence not computed: {err}')
    logging.warning('%s', notes[-1])

  rng = np.random.default_rng([seed, 11])
  chosen = rng.choice(test.num_pairs, eval_cfg.num_figure_examples, replace=False)
  images = {name: pipeline.to_float(x) for name, x in test.batch(chosen).items()}
  figures.figure3(encoders, decoders, images, rng=jax.random.PRNGKey(seed),
                  path=os.path.join(out_dir, 'figure3.png'))
  figures.figure4(encoders, decoders, images, config.style_dim, rng=jax.random.PRNGKey(seed + 1),
                  path=os.path.join(out_dir, 'figure4.png'))

  # metrics.json / report.md describe the latest evaluation; each step's are kept too.
  for name in ('metrics.json', f'metrics_step_{step}.json'):
    with open(os.path.join(out_dir, name), 'w') as f:
      json.dump(metrics, f, indent=2)
  report = paper.report(config, metrics, workdir, notes)
  for name in ('report.md', f'report_step_{step}.md'):
    with open(os.path.join(out_dir, name), 'w') as f:
      f.write(report)
  return metrics


FLAGS = flags.FLAGS


def _define_flags():
  """Only when run as a program, so that importing this module defines no global flags."""
  flags.DEFINE_string('workdir', None, 'The training run to evaluate.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  config_flags.DEFINE_config_file('config', None, 'Config (default: <workdir>/config.json).')
  flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_libraries()
  config = FLAGS.config or console.run(checkpointing.load_config, FLAGS.workdir)
  console.run(evaluate, config, FLAGS.workdir, FLAGS.step)
  with open(os.path.join(FLAGS.workdir, 'eval', 'report.md')) as f:
    print(f.read())


if __name__ == '__main__':
  _define_flags()
  app.run(main)
