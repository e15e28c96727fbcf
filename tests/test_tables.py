"""Table 1 as a sweep on generated data: runs, shared classifiers, the table, no retraining."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmali_jax import checkpointing
from mmali_jax import evaluate
from mmali_jax import tables
from mmali_jax import train
from tests.conftest import small_config


def _tiny(arg):
  config = small_config('multimnist', arg, num_train_steps=2, checkpoint_every_steps=2)
  config.eval.every_steps = 2
  config.eval.probe_epochs = 2
  config.eval.probe_holdout = 4
  config.eval.classifier_epochs = 1
  config.eval.classifier_holdout = 4
  config.eval.num_joint_samples = 32
  config.eval.batch_size = 32
  config.eval.num_figure_examples = 2
  return config


def test_table1_sweep_on_generated_data(tmp_path):
  root = str(tmp_path / 'trained_here')
  runs = tables.table1_runs(_tiny, seeds=2, modalities=(2,))
  assert sorted(runs) == sorted(f'mm2_{k}_seed{s}' for k in ('factorized', 'monolithic')
                                for s in (0, 1))
  assert runs['mm2_monolithic_seed1'].seed == 1
  with tfds.testing.mock_data(num_examples=24):
    tables.train_classifiers(runs, root)
    assert sorted(os.listdir(os.path.join(root, 'classifiers'))) == [
        'mnist_rot0', 'mnist_rot1']  # trained once, for every rotation
    started = tables.train_and_evaluate_runs(runs, root, train.train_and_evaluate)
    text = tables.aggregate(runs, root)
  assert sorted(started) == sorted(runs)
  assert os.path.getsize(os.path.join(root, 'table1.png')) > 0
  with open(os.path.join(root, 'table1.md')) as f:
    assert f.read() == text

  # Every cell is the mean and sample standard deviation of its two runs' metrics.
  section = text.split('## final epoch (headline)')[1].split('##')[0]
  for kind, label in (('factorized', 'Factorized'), ('monolithic', 'Joint (monolithic)')):
    values = []
    for seed in (0, 1):
      with open(os.path.join(root, f'mm2_{kind}_seed{seed}', 'eval', 'metrics_step_2.json')) as f:
        values.append(json.load(f)['latent/0mnist/both/final_test_accuracy'])
    row = [l for l in section.splitlines() if l.startswith(f'| {label} |')][0]
    cell = row.split('|')[2]
    mean, std = map(float, re.match(r'\s*([\d.]+) ± ([\d.]+) \(n=2\)', cell).groups())
    assert mean == pytest.approx(np.mean(values), abs=0.005)
    assert std == pytest.approx(np.std(values, ddof=1), abs=0.005)
    assert f'[{tables.report.TABLE1[kind][2]:.2f}]' in cell

  def must_not_train(config, workdir):
    raise AssertionError(f'{workdir} was trained again')

  assert tables.train_and_evaluate_runs(runs, root, must_not_train) == []

  # The same sweep asked for with other numerics does not count these runs as its own: neither
  # to skip them nor in its table.
  other = tables.table1_runs(_tiny, seeds=2, modalities=(2,),
                             overrides={'matmul_precision': 'tensorfloat32_emulated'})
  for step in (lambda: tables.train_and_evaluate_runs(other, root, must_not_train),
               lambda: tables.aggregate(other, root)):
    with pytest.raises(checkpointing.WorkdirConfigError,
                       match="matmul_precision: 'highest' -> 'tensorfloat32_emulated'"):
      step()
  # Asked for with other probe settings, the table states those the runs were evaluated with.
  other = tables.table1_runs(_tiny, seeds=2, modalities=(2,), overrides={'eval.probe_epochs': 7})
  assert tables.train_and_evaluate_runs(other, root, must_not_train) == []
  assert 'probe: 2 epochs' in tables.aggregate(other, root)
  # One run evaluated again with other settings (python -m mmali_jax.evaluate --config.eval...):
  # the table says so, although the run's stored config still names the training's.
  workdir = os.path.join(root, 'mm2_factorized_seed1')
  again = checkpointing.load_config(workdir)
  again.eval.probe_epochs = 3
  with tfds.testing.mock_data(num_examples=24):
    evaluate.evaluate(again, workdir)
  assert 'probe: 2, 3 epochs' in tables.aggregate(runs, root)

  # The sweep copied to another machine: `python -m mmali_jax.evaluate` on one of its runs still
  # finds the shared classifiers, and computes the same coherence as the sweep did.
  with open(os.path.join(root, 'mm2_factorized_seed0', 'eval', 'metrics_step_2.json')) as f:
    swept = {k: v for k, v in json.load(f).items() if k.startswith('coherence/')}
  assert swept
  copied = str(tmp_path / 'copied_there')
  shutil.move(root, copied)
  workdir = os.path.join(copied, 'mm2_factorized_seed0')
  with tfds.testing.mock_data(num_examples=24):
    metrics = evaluate.evaluate(checkpointing.load_config(workdir), workdir)
  assert {k: v for k, v in metrics.items() if k.startswith('coherence/')} == pytest.approx(swept)


def test_table_has_a_column_per_modality_count_and_a_dash_for_missing_cells():
  runs = tables.table1_runs(_tiny, seeds=2, modalities=(2, 3))
  assert sorted(runs) == sorted(f'mm{m}_{k}_seed{s}' for m in (2, 3)
                                for k in ('factorized', 'monolithic') for s in (0, 1))
  assert runs['mm3_monolithic_seed1'].seed == 1
  assert len(runs['mm3_monolithic_seed1'].modalities) == 3
  cells = {(2, 'factorized'): {'final_test_accuracy': [90.0, 92.0]},
           (2, 'monolithic'): {'final_test_accuracy': [70.0]},
           (3, 'factorized'): {'final_test_accuracy': [80.0, 81.0, 85.0]}}
  text = tables.table1_markdown(cells, runs)
  section = text.split('## final epoch (headline)')[1].split('##')[0]
  assert '| discriminator | M = 2 | M = 3 |' in section
  paper = tables.report.TABLE1
  assert (f'| Factorized | 91.00 ± 1.41 (n=2) [{paper["factorized"][2]:.2f}] | '
          f'82.00 ± 2.65 (n=3) [{paper["factorized"][3]:.2f}] |') in section
  assert (f'| Joint (monolithic) | 70.00 (n=1) [{paper["monolithic"][2]:.2f}] | '
          f'– [{paper["monolithic"][3]:.2f}] |') in section
  # M = 5 is not in the paper: no bracket.
  runs = tables.table1_runs(_tiny, seeds=1, modalities=(5,))
  text = tables.table1_markdown({(5, 'factorized'): {'final_test_accuracy': [80.0]}}, runs)
  assert '| Factorized | 80.00 (n=1) |' in text and '| Joint (monolithic) | – |' in text


def test_table_names_numerics_other_than_the_reference():
  runs = tables.table1_runs(_tiny, seeds=1, modalities=(2,))
  cells = {(2, kind): {readout: [90.0] for readout in tables.READOUT_TITLES}
           for kind in tables.KINDS}
  assert 'precision' not in tables.table1_markdown(cells, runs)
  for config in runs.values():
    config.matmul_precision = 'tensorfloat32_emulated'
  assert ("Not the reference's numerics: matmul precision: 'tensorfloat32_emulated' "
          in tables.table1_markdown(cells, runs))
  for config in runs.values():
    config.spectral_norm_estimates = 'per_phase'
  assert ("matmul precision: 'tensorfloat32_emulated'; spectral-norm estimates: 'per_phase'"
          in tables.table1_markdown(cells, runs))


def _reproduce(*args):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import ROOT  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, '-m', 'mmali_jax.reproduce', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_reproduce_command_refuses_unknown_tables_and_runs(tmp_path):
  result = _reproduce('--table=2', f'--root={tmp_path}')
  assert result.returncode != 0 and 'only Table (1,)' in result.stderr
  result = _reproduce('--table=1', f'--root={tmp_path}', '--seeds=1', '--runs=mm9_factorized_seed0')
  assert result.returncode != 0 and "Unknown runs ['mm9_factorized_seed0']" in result.stderr
  result = _reproduce('--table=1', f'--root={tmp_path}', '--aggregate_only')
  assert result.returncode == 1 and 'No finished run' in result.stderr
  assert 'Traceback' not in result.stderr
