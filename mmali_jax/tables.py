"""The paper's tables as sweeps of ordinary runs: define, train, evaluate, aggregate.

Table 1 (MultiMNIST latent probe, factorized vs monolithic discriminators, M = 2, 3, 4): one run
per (M, discriminator, seed), each an ordinary workdir `<root>/mm<M>_<kind>_seed<s>` that
`python -m mmali_jax.evaluate` can read; one set of coherence classifiers in
`<root>/classifiers`, trained once and shared. A run whose final evaluation exists is skipped; an
interrupted one resumes. `aggregate` turns the runs' metrics into `table1.md` (mean and standard
deviation over seeds, the paper's value beside) and `table1.png`.
"""
import json
import os

from absl import logging
import matplotlib

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from mmali_jax import checkpointing
from mmali_jax import default_config
from mmali_jax.evaluators import classifiers
from mmali_jax.evaluators import evaluator as evaluator_lib
from mmali_jax.evaluators import latent_probe
from mmali_jax.evaluators import report
# pylint: enable=g-import-not-at-top,wrong-import-position

TABLES = (1,)
KINDS = ('monolithic', 'factorized')  # Table 1's rows: "Joint", "Factorized"
ROW_LABELS = {'monolithic': 'Joint (monolithic)', 'factorized': 'Factorized'}
READOUT_TITLES = {
    'final_test_accuracy': 'final epoch (headline)',
    'selected_test_accuracy': 'epoch chosen on held-out training data',
    'best_test_accuracy_over_epochs': 'best test accuracy over epochs (reference protocol; '
                                      'the paper\'s numbers)',
}


def run_name(modalities, kind, seed):
  return f'mm{modalities}_{kind}_seed{seed}'


SHARED_CLASSIFIERS = os.path.join(os.pardir, 'classifiers')


def table1_runs(make_config, seeds, modalities=(2, 3, 4), overrides=None):
  """{run name: config} of Table 1. make_config(arg) is configs/multimnist.py's get_config;
  overrides: {dotted field: value} applied to every run (e.g. num_train_steps)."""
  runs = {}
  for num in modalities:
    for kind in KINDS:
      for seed in range(seeds):
        config = make_config(f'modalities={num},discriminator={kind}')
        config.seed = seed
        for key, value in (overrides or {}).items():
          _set(config, key, value)
        # The runs share root/classifiers (train_classifiers), named relative to each run so
        # that a copied or moved root still evaluates with them.
        config.eval.classifier_dir = SHARED_CLASSIFIERS
        runs[run_name(num, kind, seed)] = config
  return runs


def _set(config, dotted, value):
  *path, leaf = dotted.split('.')
  for part in path:
    config = config[part]
  config[leaf] = value


def _final_metrics_path(workdir, config):
  return os.path.join(workdir, 'eval', f'metrics_step_{int(config.num_train_steps)}.json')


def train_classifiers(runs, root):
  """The coherence classifiers of every (dataset, rotation) the runs use, into root/classifiers;
  existing ones are kept."""
  directory = os.path.join(os.path.abspath(root), 'classifiers')
  widest = max(runs.values(), key=lambda c: len(c.modalities))
  classifiers.train_all(widest, directory)
  return directory


def _probe_settings(config):
  """The evaluation settings that change Table 1's numbers."""
  cfg = default_config.eval_config(config)
  return {k: cfg[k] for k in ('probe_epochs', 'probe_batch_size', 'probe_lr', 'probe_holdout')}


def _evaluated_with(config, workdir):
  """The config whose `eval` the run's final evaluation ran with: the settings written beside
  its metrics, else (runs evaluated before they were written) the run's stored config. Warns
  when they differ from those asked for."""
  evaluated = checkpointing.load_config(workdir)
  path = evaluator_lib.evaluated_settings_path(workdir, int(config.num_train_steps))
  if os.path.exists(path):
    with open(path) as f:
      evaluated.eval = ml_collections.ConfigDict(json.load(f))
  stored, asked = _probe_settings(evaluated), _probe_settings(config)
  if stored != asked:
    logging.warning('%s was evaluated with %s, not the %s asked for; the table shows what was '
                    'computed (python -m mmali_jax.evaluate --workdir=%s --config.eval.FIELD=VALUE '
                    're-evaluates it).', workdir, stored, asked, workdir)
  return evaluated


def _finished(config, workdir):
  """Whether the run has its final evaluation. Only the run asked for counts: a stored config
  that differs in more than the fields resuming allows (train.RESUMABLE_FIELDS: those that leave
  the trained numbers unchanged) is refused with WorkdirConfigError, so a table never shows
  other runs under this sweep's settings."""
  if not os.path.exists(_final_metrics_path(workdir, config)):
    return False
  # Imported where needed: the trainer imports TensorFlow, which the sweep's command need not
  # wait for to refuse a mistyped table or run.
  from mmali_jax import train  # pylint: disable=g-import-not-at-top
  train.check_workdir_config(config, workdir, write=False)
  return True


def _probe_epochs(configs):
  return sorted({default_config.eval_config(c).probe_epochs for c in configs})


def train_and_evaluate_runs(runs, root, train_fn):
  """Trains (or resumes) and evaluates every run that has no final evaluation yet.

  train_fn(config, workdir) is `train.train_and_evaluate`, which evaluates after the last step.
  Returns the names of the runs that were (re)started."""
  started = []
  for name, config in runs.items():
    workdir = os.path.join(root, name)
    if _finished(config, workdir):
      logging.info('%s: done (final evaluation found); skipped.', name)
      continue
    logging.info('%s: training to step %d.', name, config.num_train_steps)
    started.append(name)
    train_fn(config, workdir)
    if not os.path.exists(_final_metrics_path(workdir, config)):  # evaluation was off
      ema, step = checkpointing.restore_ema(workdir)
      evaluator_lib.Evaluator(config, workdir).run(ema, step)
  return started


def collect(runs, root):
  """({(M, kind): {readout: [values over seeds]}}, {run name: the config its final evaluation ran
  with}) from the runs' final metrics (missing runs are left out)."""
  cells, evaluated = {}, {}
  for name, config in runs.items():
    workdir = os.path.join(root, name)
    if not _finished(config, workdir):
      continue
    evaluated[name] = _evaluated_with(config, workdir)
    path = _final_metrics_path(workdir, config)
    with open(path) as f:
      metrics = json.load(f)
    probed = [m.name for m in config.modalities if m.rotation == 0][0]
    cell = cells.setdefault((len(config.modalities),
                             default_config.discriminator_kind(config.discriminator)), {})
    for readout in latent_probe.READOUTS:
      key = f'latent/{probed}/both/{readout}'
      if key not in metrics:
        raise checkpointing.CheckpointError(
            f'{path} has no {key}: the run was evaluated without the latent probe of all of z. '
            f'Re-evaluate it with python -m mmali_jax.evaluate --workdir={workdir} '
            '"--config.eval.evaluators=(\'latent_probe\', \'coherence\', \'figures\')" '
            '"--config.eval.probe_parts=(\'both\', \'content\', \'style\')"')
      cell.setdefault(readout, []).append(metrics[key])
  return cells, evaluated


def mean_std(values):
  """(mean, sample standard deviation or None for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def _fmt(values):
  mean, std = mean_std(values)
  return f'{mean:.2f}' + (f' ± {std:.2f}' if std is not None else '') + f' (n={len(values)})'


def _numerics(runs):
  """The runs' settings that change the numbers from the reference's, else '': a matmul
  precision other than full float32, spectral-norm estimates other than per call."""
  parts = []
  precisions = {c.matmul_precision for c in runs.values()} - {'highest', 'float32'}
  if precisions:
    parts.append('matmul precision: ' + ', '.join(repr(p) for p in sorted(precisions)))
  estimates = {c.get('spectral_norm_estimates', 'per_call') for c in runs.values()} - {'per_call'}
  if estimates:
    parts.append('spectral-norm estimates: ' + ', '.join(repr(e) for e in sorted(estimates)))
  return '; '.join(parts)


def table1_markdown(cells, runs, probe_epochs=None):
  """probe_epochs: those the runs were evaluated with (default: the runs' configs')."""
  some = next(iter(runs.values()))
  if probe_epochs is None:
    probe_epochs = _probe_epochs(runs.values())
  epochs = ', '.join(str(e) for e in probe_epochs)
  numerics = _numerics(runs)
  ms = sorted({m for m, _ in cells})
  seeds = sorted({c.seed for c in runs.values()})
  lines = ['# Table 1: MultiMNIST, linear probe on the upright modality\'s latent (%)', '',
           f'Budget: {int(some.num_train_steps):,} training steps per run (the paper: 250,000); '
           f'seeds {seeds}; mean ± sample standard deviation over seeds (n runs per cell); '
           f'probe: {epochs} epochs. The paper\'s value '
           'is in brackets; it reports a single number per cell, from the reference protocol.'
           + (f' Not the reference\'s numerics: {numerics} (docs/algorithm.md §5.3, §5.4).'
              if numerics else ''),
           '']
  for readout, title in READOUT_TITLES.items():
    lines += [f'## {title}', '', '| discriminator | ' + ' | '.join(f'M = {m}' for m in ms) + ' |',
              '|---|' + '---|' * len(ms)]
    for kind in KINDS:
      row = []
      for m in ms:
        values = cells.get((m, kind), {}).get(readout)
        paper = report.TABLE1[kind].get(m)  # the paper has M = 2, 3, 4 only
        cell = _fmt(values) if values else '–'
        row.append(cell + (f' [{paper:.2f}]' if paper is not None else ''))
      lines.append(f'| {ROW_LABELS[kind]} | ' + ' | '.join(row) + ' |')
    lines.append('')
  return '\n'.join(lines)


def table1_figure(cells, runs, path):
  """Grouped bars (mean, error bar = standard deviation) per readout, the paper's values marked."""
  ms = sorted({m for m, _ in cells})
  fig, axes = plt.subplots(1, len(READOUT_TITLES), figsize=(5 * len(READOUT_TITLES), 4.2),
                           sharey=True, squeeze=False)
  width = 0.38
  for ax, (readout, title) in zip(axes[0], READOUT_TITLES.items()):
    for k, kind in enumerate(KINDS):
      xs = np.arange(len(ms)) + (k - 0.5) * width
      stats = [mean_std(cells.get((m, kind), {}).get(readout, [np.nan])) for m in ms]
      ax.bar(xs, [s[0] for s in stats], width, yerr=[s[1] or 0.0 for s in stats], capsize=4,
             label=ROW_LABELS[kind], color=('tab:gray', 'tab:blue')[k], alpha=0.85)
      ax.scatter(xs, [report.TABLE1[kind].get(m, np.nan) for m in ms], marker='_', s=400,
                 color='black', zorder=3, label='paper' if k == 0 else None)
    ax.set_xticks(np.arange(len(ms)), [f'M = {m}' for m in ms])
    ax.set_title(title, fontsize=9)
    ax.grid(axis='y', alpha=0.3)
  axes[0][0].set_ylabel('probe accuracy (%)')
  axes[0][0].set_ylim(0, 100)
  axes[0][-1].legend(loc='lower right', fontsize=8)
  steps = int(next(iter(runs.values())).num_train_steps)
  numerics = _numerics(runs)
  fig.suptitle(f'Table 1, {steps:,} steps per run (paper: 250,000); bars: mean over seeds, '
               'error bars: standard deviation, black marks: the paper'
               + (f'; {numerics}' if numerics else ''),
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def aggregate(runs, root):
  """Writes <root>/table1.md and table1.png from the runs done so far; returns the markdown."""
  cells, evaluated = collect(runs, root)
  if not cells:
    raise FileNotFoundError(f'No finished run under {root}: nothing to aggregate.')
  # As evaluated: a finished run may have been evaluated with other probe settings.
  text = table1_markdown(cells, runs, _probe_epochs(evaluated.values()))
  with open(os.path.join(root, 'table1.md'), 'w') as f:
    f.write(text)
  table1_figure(cells, runs, os.path.join(root, 'table1.png'))
  return text
