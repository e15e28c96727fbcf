"""The evaluation of a run: built once per process, run on any EMA generator parameters.

    evaluator = Evaluator(config, workdir)
    metrics = evaluator.run(ema_params, step)

The training loop calls `run` on its in-memory EMA parameters every `config.eval.every_steps`
and after the last step; `python -m mmali_jax.evaluate` calls it on restored ones. Both therefore
compute the same numbers for the same parameters. Everything that does not depend on the
parameters (networks, jitted functions, test pairs, probe data, classifiers, figure examples) is
built on the first `run`, not at construction, so a training run that never evaluates pays
nothing for it.

Each run writes <workdir>/eval/metrics.json and report.md (the latest evaluation) and
metrics_step_<N>.json, report_step_<N>.md, figure3.png and figure4.png. Accuracies are %.
"""
import json
import os

from absl import logging
import jax
import numpy as np

from mmali_jax import default_config
from mmali_jax import images
from mmali_jax import networks
from mmali_jax.data import pipeline
from mmali_jax.evaluators import classifiers as classifiers_lib
from mmali_jax.evaluators import coherence
from mmali_jax.evaluators import figures
from mmali_jax.evaluators import latent_probe
from mmali_jax.evaluators import report

PROBE_READOUTS = latent_probe.READOUTS


def probe_modalities(mods):
  """The modalities whose encoders are probed: one per dataset, the unrotated one (Table 1 probes
  the encoder of the unrotated MultiMNIST modality; Tables 2-3 probe MNIST and SVHN)."""
  return [m for m in mods if m.rotation == 0]


class Evaluator:
  """Latent probes, coherence, figures and the report of one config (docs/algorithm.md §9)."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.eval_cfg = default_config.eval_config(config)
    self.classifier_dir = self.eval_cfg.classifier_dir or os.path.join(workdir, 'classifiers')
    self.out_dir = os.path.join(workdir, 'eval')
    self._built = False

  def _build(self):
    config, cfg = self.config, self.eval_cfg
    mods, gen, _ = networks.build(config)
    self.mods = mods
    names = [m.name for m in mods]
    encode = jax.jit(lambda p, m, x: gen.apply({'params': p}, m, x, method='encode'),
                     static_argnums=1)
    decode = jax.jit(lambda p, m, z: gen.apply({'params': p}, m, z, method='decode'),
                     static_argnums=1)
    self._encode, self._decode = encode, decode
    self._encoders = {n: (lambda p, x, m=m: encode(p, m, x)) for m, n in enumerate(names)}
    self._decoders = {n: (lambda p, z, m=m: decode(p, m, z)) for m, n in enumerate(names)}

    self._probe_data = {
        mod.name: {split: pipeline.load_images(mod.dataset, split, config.data.tfds_data_dir)
                   for split in ('train', 'test')}
        for mod in probe_modalities(mods)}
    self._probe = latent_probe.LinearProbe(
        epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, lr=cfg.probe_lr)

    self.test = pipeline.load_dataset(config, 'test')
    self._coherence = None  # built once the classifiers exist
    rng = np.random.default_rng([config.seed, 11])
    chosen = rng.choice(self.test.num_pairs, cfg.num_figure_examples, replace=False)
    self._figure_images = {name: images.to_float(x)
                           for name, x in self.test.batch(chosen).items()}
    self._built = True

  def _load_coherence(self):
    """The coherence evaluator and the classifiers' own metrics, or None while the classifiers
    have not been trained (looked for again at every run, so they may be trained meanwhile)."""
    if self._coherence is None:
      predict = classifiers_lib.load_classifiers(self.config, self.classifier_dir)
      self._classifier_metrics = classifiers_lib.classifier_metrics(self.config,
                                                                    self.classifier_dir)
      self._coherence = coherence.Coherence(
          self._encoders, self._decoders, predict, style_dim=self.config.style_dim,
          latent_dim=self.config.latent_dim, num_joint_samples=self.eval_cfg.num_joint_samples,
          batch_size=self.eval_cfg.batch_size)
    return self._coherence

  def run(self, ema_params, step):
    """Every evaluator on `ema_params` (the EMA encoders/decoders); writes and returns metrics."""
    if not self._built:
      self._build()
    seed = self.config.seed
    metrics = {'step': int(step)}
    metrics.update(self._run_probes(ema_params, seed))
    notes = []
    try:
      metrics.update(self._run_coherence(ema_params, seed))
    except FileNotFoundError as err:
      notes.append(f'Coherence not computed: {err}')
      logging.warning('%s', notes[-1])
    self._write(metrics, notes, ema_params, seed)
    return metrics

  def _run_probes(self, params, seed):
    results = {}
    cfg = self.eval_cfg
    for mod in probe_modalities(self.mods):
      m = self.mods.index(mod)
      data = self._probe_data[mod.name]
      stats = {split: latent_probe.posterior_stats(lambda x: self._encode(params, m, x),
                                                   data[split][0], cfg.batch_size)
               for split in data}
      for part in cfg.probe_parts:
        part_stats = {split: tuple(latent_probe.select_part(a, self.config.style_dim, part)
                                   for a in stats[split]) for split in stats}
        readouts = latent_probe.readouts(self._probe, part_stats['train'], data['train'][1],
                                         part_stats['test'], data['test'][1], seed=seed,
                                         holdout=cfg.probe_holdout)
        for readout in PROBE_READOUTS:
          results[f'latent/{mod.name}/{part}/{readout}'] = 100.0 * readouts[readout]
        logging.info('Probe %s/%s: final %.2f%%, held-out selected %.2f%%, best over epochs '
                     '%.2f%%', mod.name, part, *(100 * readouts[r] for r in PROBE_READOUTS))
    return results

  def _run_coherence(self, params, seed):
    scorer = self._load_coherence()
    test_images = {m.name: m.images for m in self.test.modalities}
    results = scorer(params, test_images, self.test.labels, rng=jax.random.PRNGKey(seed),
                     indices=self.test.pairs)
    results = {f'coherence/{k}': 100.0 * v for k, v in results.items()}
    for name, own in self._classifier_metrics.items():
      results[f'classifier/{name}/test_accuracy'] = 100.0 * own['selected_test_accuracy']
    return results

  def _write(self, metrics, notes, params, seed):
    os.makedirs(self.out_dir, exist_ok=True)
    encoders = {n: (lambda x, f=f: f(params, x)) for n, f in self._encoders.items()}
    decoders = {n: (lambda z, f=f: f(params, z)) for n, f in self._decoders.items()}
    figures.figure3(encoders, decoders, self._figure_images, rng=jax.random.PRNGKey(seed),
                    path=os.path.join(self.out_dir, 'figure3.png'))
    figures.figure4(encoders, decoders, self._figure_images, self.config.style_dim,
                    rng=jax.random.PRNGKey(seed + 1),
                    path=os.path.join(self.out_dir, 'figure4.png'))
    step = metrics['step']
    # metrics.json / report.md describe the latest evaluation; each step's are kept too.
    for name in ('metrics.json', f'metrics_step_{step}.json'):
      with open(os.path.join(self.out_dir, name), 'w') as f:
        json.dump(metrics, f, indent=2)
    text = report.report(self.config, metrics, self.workdir, notes)
    for name in ('report.md', f'report_step_{step}.md'):
      with open(os.path.join(self.out_dir, name), 'w') as f:
        f.write(text)
