"""The evaluation of a run: built once per process, run on any EMA generator parameters.

    evaluator = Evaluator(config, workdir)
    metrics = evaluator.run(ema_params, step)

The training loop calls `run` on its in-memory EMA parameters every `config.eval.every_steps`
and after the last step; `python -m mmali_jax.evaluate` calls it on restored ones. Both therefore
compute the same numbers for the same parameters. Everything that does not depend on the
parameters (networks, jitted functions, test pairs, probe data, classifiers, figure examples) is
built on the first `run`, not at construction, so a training run that never evaluates pays
nothing for it.

`config.eval.evaluators` chooses what runs: 'latent_probe', 'coherence' and 'figures' for image
experiments (the default), 'correlation' (CCA, Table 4) and 'retrieval' for two feature-vector
modalities (CUB).

Each run writes <workdir>/eval/metrics.json and report.md (the latest evaluation) and
metrics_step_<N>.json, report_step_<N>.md, eval_config_step_<N>.json (the settings used), and,
as chosen, figure3.png and figure4.png, or retrieval.json (and retrieval_*.png when the images
are on disk), each also as <name>_step_<N>, so that evaluating an earlier step again replaces no
other step's. Accuracies are %.
"""
import json
import os
import shutil

from absl import logging
import jax
import numpy as np

from mmali_jax import config_checks
from mmali_jax import default_config
from mmali_jax import images
from mmali_jax import networks
from mmali_jax import posterior
from mmali_jax import precision
from mmali_jax.data import pipeline
from mmali_jax.data import sources
from mmali_jax.evaluators import classifiers as classifiers_lib
from mmali_jax.evaluators import coherence
from mmali_jax.evaluators import common
from mmali_jax.evaluators import correlation
from mmali_jax.evaluators import figures
from mmali_jax.evaluators import latent_probe
from mmali_jax.evaluators import report
from mmali_jax.evaluators import retrieval

PROBE_READOUTS = latent_probe.READOUTS


def probe_modalities(mods):
  """The modalities whose encoders are probed: one per dataset, the unrotated one (Table 1 probes
  the encoder of the unrotated MultiMNIST modality; Tables 2-3 probe MNIST and SVHN)."""
  return [m for m in mods if m.rotation == 0]


def evaluated_settings_path(workdir, step):
  """The `config.eval` an evaluation of `step` ran with (written beside its metrics)."""
  return os.path.join(workdir, 'eval', f'eval_config_step_{step}.json')


class Evaluator:
  """The config's evaluators (latent probes, coherence, figures; or CCA correlation and
  retrieval) and the report (docs/algorithm.md §9)."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    self.eval_cfg = default_config.eval_config(config)
    self.chosen = tuple(self.eval_cfg.evaluators)
    # A relative classifier_dir is the run's own (the sweep's '../classifiers'): the run keeps
    # finding its classifiers after its folder is copied to another machine.
    self.classifier_dir = os.path.normpath(
        os.path.join(workdir, self.eval_cfg.classifier_dir or 'classifiers'))
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

    if 'latent_probe' in self.chosen:
      self._probe_data = {
          mod.name: {split: pipeline.load_images(mod.dataset, split, config.data.tfds_data_dir)
                     for split in ('train', 'test')}
          for mod in probe_modalities(mods)}
      for name, data in self._probe_data.items():
        config_checks.check_holdout(config, 'probe_holdout', len(data['train'][1]),
                                    f'modality {name!r}')
      self._probe = latent_probe.LinearProbe(
          epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, lr=cfg.probe_lr)

    self.test = pipeline.load_dataset(config, 'test')
    self._coherence = None  # built once the classifiers exist
    if 'figures' in self.chosen:
      rng = np.random.default_rng([config.seed, 11])
      chosen = rng.choice(self.test.num_pairs, cfg.num_figure_examples, replace=False)
      self._figure_images = {name: images.to_float(x)
                             for name, x in self.test.batch(chosen).items()}
    if 'correlation' in self.chosen or 'retrieval' in self.chosen:
      self._build_feature_evaluators(gen)
    self._built = True

  def _build_feature_evaluators(self, gen):
    """CCA fitted on all training pairs, the training items for retrieval, the jitted
    generators (docs/algorithm.md §9.4)."""
    config, cfg = self.config, self.eval_cfg
    self.train = pipeline.load_dataset(config, 'train')
    views = [m.images for m in self.train.modalities]
    canonical = correlation.fit(views[0], views[1], k=cfg.cca_components,
                                epsilon=cfg.cca_epsilon, pairs=self.train.pairs,
                                normalization='canonical')
    self._cca = {norm: correlation.renormalize(canonical, norm)
                 for norm in correlation.NORMALIZATIONS}

    def translate(params, key, x, src, tgt):
      """G_tgt(z~ q(z | x_src)): the full sampled z, the source's style included."""
      mean, logvar = gen.apply({'params': params}, src, x, method='encode')
      return gen.apply({'params': params}, tgt, posterior.sample(key, mean, logvar),
                       method='decode')

    self._translate = jax.jit(translate, static_argnums=(3, 4))
    self._filenames = {split: self._load_filenames(split) for split in ('train', 'test')}

  def _load_filenames(self, split):
    """The dataset's filename of every instance, or None when it has none."""
    dataset = self.mods[0].dataset
    if any(m.dataset != dataset for m in self.mods):
      return None
    try:
      names, _ = sources.load_split(dataset, split, self.config.data.tfds_data_dir, 'filename')
    except ValueError:
      return None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

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

  @precision.evaluation()
  def run(self, ema_params, step):
    """Every evaluator on `ema_params` (the EMA encoders/decoders); writes and returns metrics."""
    if not self._built:
      self._build()
    seed = self.config.seed
    metrics = {'step': int(step)}
    notes = []
    if 'latent_probe' in self.chosen:
      metrics.update(self._run_probes(ema_params, seed))
    if 'coherence' in self.chosen:
      try:
        metrics.update(self._run_coherence(ema_params, seed))
      except FileNotFoundError as err:
        notes.append(f'Coherence not computed: {err}')
        logging.warning('%s', notes[-1])
    generated = None
    if 'correlation' in self.chosen or 'retrieval' in self.chosen:
      generated = self._generate(ema_params, seed)
    if 'correlation' in self.chosen:
      metrics.update(self._run_correlation(generated))
    if 'retrieval' in self.chosen:
      notes += self._run_retrieval(generated, metrics['step'])
    self._write(metrics, notes, ema_params, seed)
    return metrics

  def _generate(self, params, seed):
    """Joint generations from 10,000 prior draws (the same z to both decoders) and the cross
    generations of every test pair, in both directions."""
    cfg, names = self.eval_cfg, [m.name for m in self.mods]
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed),
                                     (cfg.num_joint_samples, self.config.latent_dim)))
    out = {'joint': [common.map_chunks(lambda c, m=m: self._decode(params, m, c), z,
                                       cfg.batch_size) for m in range(len(names))]}
    test = [m.images for m in self.test.modalities]
    key = jax.random.PRNGKey(seed + 1)
    for src in range(len(names)):
      for tgt in range(len(names)):
        if src == tgt:
          continue
        x = test[src][self.test.pairs[:, src]]
        chunks = []
        for c, (start, stop) in enumerate(common.chunk_slices(len(x), cfg.batch_size)):
          chunk_key = jax.random.fold_in(jax.random.fold_in(key, src * len(names) + tgt), c)
          padded = common.pad_rows(x[start:stop], cfg.batch_size)
          chunks.append(np.asarray(self._translate(params, chunk_key, padded, src, tgt))
                        [:stop - start])
        out[f'{names[src]}_to_{names[tgt]}'] = np.concatenate(chunks)
    return out

  def _run_correlation(self, generated):
    """CCA correlation (Table 4): ground truth, joint, cross in both directions."""
    names = [m.name for m in self.mods]
    test = [m.images[self.test.pairs[:, k]] for k, m in enumerate(self.test.modalities)]
    results = {}
    for norm, cca in self._cca.items():
      prefix = 'correlation' if norm == 'reference' else f'correlation_{norm}'
      results[f'{prefix}/ground_truth'] = correlation.mean_score(cca, test[0], test[1])
      results[f'{prefix}/joint'] = correlation.mean_score(cca, *generated['joint'])
      # Each cross generation is scored against the real other half of its pair.
      to_1 = generated[f'{names[0]}_to_{names[1]}']
      to_0 = generated[f'{names[1]}_to_{names[0]}']
      results[f'{prefix}/cross/{names[0]}_to_{names[1]}'] = correlation.mean_score(
          cca, test[0], to_1)
      results[f'{prefix}/cross/{names[1]}_to_{names[0]}'] = correlation.mean_score(
          cca, to_0, test[1])
    logging.info('Correlation: %s', {k: round(v, 4) for k, v in results.items()
                                     if k.startswith('correlation/')})
    return results

  def _run_retrieval(self, generated, step):
    """Nearest training items of the first generated examples: retrieval.json, and PNG grids
    when config.eval.images_dir holds the images. Returns notes for the report."""
    cfg, names = self.eval_cfg, [m.name for m in self.mods]
    num, k = cfg.num_retrieval_examples, cfg.retrieval_neighbours
    items = [m.images for m in self.train.modalities]
    train_files, test_files = self._filenames['train'], self._filenames['test']

    def files_of(modality, split_files, data):
      if split_files is None:
        return None
      return [split_files[i] for i in data.modalities[modality].instances]

    item_files = [files_of(m, train_files, self.train) for m in range(len(names))]
    out = {'metric': 'Euclidean distance of raw features, nearest first',
           'train_items': {n: int(len(x)) for n, x in zip(names, items)}, 'joint': []}
    grids = {}
    joint = [retrieval.nearest(generated['joint'][m][:num], items[m], k)
             for m in range(len(names))]
    for q in range(min(num, len(generated['joint'][0]))):
      out['joint'].append({n: retrieval.neighbour_record(joint[m][0][q], joint[m][1][q],
                                                         item_files[m])
                           for m, n in enumerate(names)})
    rng = np.random.default_rng([self.config.seed, 12])
    chosen = np.sort(rng.choice(self.test.num_pairs, min(num, self.test.num_pairs),
                                replace=False))
    for src in range(len(names)):
      for tgt in range(len(names)):
        if src == tgt:
          continue
        direction = f'{names[src]}_to_{names[tgt]}'
        idx, dist = retrieval.nearest(generated[direction][chosen], items[tgt], k)
        records = []
        for row, p in enumerate(chosen):
          source = int(self.test.pairs[p, src])
          record = {'test_pair': int(p), 'source_index': source,
                    'neighbours': retrieval.neighbour_record(idx[row], dist[row],
                                                             item_files[tgt])}
          if test_files is not None:
            record['source_filename'] = test_files[self.test.modalities[src].instances[source]]
          records.append(record)
        out[direction] = grids[direction] = records
    os.makedirs(self.out_dir, exist_ok=True)
    for name in ('retrieval.json', f'retrieval_step_{step}.json'):
      with open(os.path.join(self.out_dir, name), 'w') as f:
        json.dump(out, f, indent=1)
    notes = ['Retrieval: eval/retrieval.json lists the nearest training items (Euclidean distance '
             'of raw features) of the first generated examples.']
    if cfg.images_dir and train_files is not None and test_files is not None:
      written = []
      for direction, records in grids.items():
        rows = [[r['source_filename']] + r['neighbours']['filenames'] for r in records]
        path = os.path.join(self.out_dir, f'retrieval_{direction}_step_{step}.png')
        if retrieval.write_grid(rows, [f'pair {r["test_pair"]}' for r in records],
                                cfg.images_dir, path):
          self._latest_copy(path, step)
          written.append(os.path.basename(path))  # this step's own, as the report is
      notes.append(f'Retrieval grids (source image, then the neighbours\' images): '
                   f'{", ".join(written) or "none: images missing in " + cfg.images_dir}.')
    return notes

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

  @staticmethod
  def _latest_copy(path, step):
    """Copies <name>_step_<N>.png to <name>.png, the latest evaluation's (as metrics.json);
    every step keeps its own."""
    shutil.copyfile(path, path.replace(f'_step_{step}.png', '.png'))

  def _write(self, metrics, notes, params, seed):
    os.makedirs(self.out_dir, exist_ok=True)
    step = metrics['step']
    if 'figures' in self.chosen:
      encoders = {n: (lambda x, f=f: f(params, x)) for n, f in self._encoders.items()}
      decoders = {n: (lambda z, f=f: f(params, z)) for n, f in self._decoders.items()}
      path = os.path.join(self.out_dir, f'figure3_step_{step}.png')
      figures.figure3(encoders, decoders, self._figure_images, rng=jax.random.PRNGKey(seed),
                      path=path)
      self._latest_copy(path, step)
      path = os.path.join(self.out_dir, f'figure4_step_{step}.png')
      figures.figure4(encoders, decoders, self._figure_images, self.config.style_dim,
                      rng=jax.random.PRNGKey(seed + 1), path=path)
      self._latest_copy(path, step)
    # metrics.json / report.md describe the latest evaluation; each step's are kept too, with
    # the evaluation settings they were computed with (an evaluate command may override them).
    for name in ('metrics.json', f'metrics_step_{step}.json'):
      with open(os.path.join(self.out_dir, name), 'w') as f:
        json.dump(metrics, f, indent=2)
    with open(evaluated_settings_path(self.workdir, step), 'w') as f:
      f.write(self.eval_cfg.to_json_best_effort(indent=2))
    text = report.report(self.config, metrics, self.workdir, notes)
    for name in ('report.md', f'report_step_{step}.md'):
      with open(os.path.join(self.out_dir, name), 'w') as f:
        f.write(text)
