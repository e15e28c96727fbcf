"""Runs in one process share their jitted programs when they compute the same thing, and only then."""
import dataclasses
import os

import jax
import numpy as np
import tensorflow_datasets as tfds

from mmali_jax import networks
from mmali_jax import programs
from mmali_jax import train
from mmali_jax import train_step
from mmali_jax.models import registry
from tests import test_train
from tests.conftest import small_config


def test_the_key_leaves_out_the_seed_schedule_logging_evaluation_and_data_folder():
  base = small_config('multimnist')
  same = small_config('multimnist', seed=3, num_train_steps=50, log_every_steps=5,
                      checkpoint_every_steps=10, keep_checkpoints=1, num_sample_images=2)
  same.eval.every_steps = 7
  same.data.tfds_data_dir = '/elsewhere'
  assert programs.config_key(same) == programs.config_key(base)
  for field, value in [('optim.learning_rate', 1e-3), ('batch_size', 16), ('num_devices', 2),
                       ('data.multiplication', 3), ('ema.start_step', 5),
                       ('matmul_precision', 'tensorfloat32'), ('power_iterations_up_front', True)]:
    other = small_config('multimnist', **{field: value})
    assert programs.config_key(other) != programs.config_key(base), field


def test_edited_source_or_a_family_registered_anew_gets_new_programs(tmp_path, monkeypatch):
  source = tmp_path / 'module.py'
  source.write_text('x = 1\n')
  monkeypatch.setattr(programs, '_PACKAGE', str(tmp_path))
  programs.clear()
  first = programs.kept('name', 'key', object)
  assert programs.kept('name', 'key', object) is first
  source.write_text('x = 2\n')  # same size: the modification time tells
  os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
  assert programs.kept('name', 'key', object) is not first

  mods, gen, disc = networks.build(small_config('multimnist'))
  before = programs.networks_key(gen, disc, mods)
  mods_again, gen_again, disc_again = networks.build(small_config('multimnist'))
  assert programs.networks_key(gen_again, disc_again, mods_again) == before  # equal, built anew
  monkeypatch.setitem(registry.FAMILIES, 'mnist',
                      dataclasses.replace(registry.FAMILIES['mnist'], encoder=object))
  assert programs.networks_key(gen, disc, mods) != before


def test_a_run_on_kept_programs_equals_one_on_programs_traced_afresh(tmp_path, monkeypatch):
  """Seeds reach the programs as inputs: a run of seed 1 on the programs a run of seed 0 traced
  trains as a run of seed 1 that traced its own, and traces nothing."""
  traced = []  # one entry per trace of the step
  make_train_steps = train_step.make_train_steps

  def counted(*args, **kwargs):
    steps = make_train_steps(*args, **kwargs)
    return lambda state, data, num_steps: traced.append(1) or steps(state, data, num_steps)
  monkeypatch.setattr(train_step, 'make_train_steps', counted)

  def run(seed, name):
    config = small_config('multimnist', seed=seed, num_train_steps=2)
    with tfds.testing.mock_data(num_examples=24):
      state = train.train_and_evaluate(config, str(tmp_path / name))
    return jax.device_get(train.distributed.local((state.gen_params, state.disc_params,
                                                   state.ema_params, state.disc_stats)))

  programs.clear()
  fresh = run(1, 'fresh')
  assert len(traced) == 1
  seed_0 = run(0, 'seed_0')
  kept = run(1, 'kept')
  assert len(traced) == 1  # neither run traced the step again
  jax.tree.map(np.testing.assert_array_equal, kept, fresh)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, seed_0, fresh)))


def test_a_kept_program_retraced_later_reads_the_config_it_was_built_for():
  """A kept step retraced for another number of steps per call reads the config as it was when
  the step was built, not as its caller changed it since."""
  def lowered(config, num_steps):
    mods, gen, disc = networks.build(config)
    fn, shardings = train.compile_train_steps(config, gen, disc, mods, train.make_mesh(config))
    state = jax.device_put(train_step.create_train_state(config, gen, disc, mods),
                           shardings.replicated)
    data = jax.device_put(test_train._random_data(config, mods), shardings.replicated)  # pylint: disable=protected-access
    return fn, fn.lower(state, data, num_steps).as_text()

  programs.clear()
  changed = small_config('multimnist')
  kept, _ = lowered(changed, 1)
  changed.ema.decay = 0.3125  # after the step was built and kept (read when traced)
  same_fn, retraced = lowered(small_config('multimnist'), 2)
  assert same_fn is kept
  programs.clear()
  _, fresh = lowered(small_config('multimnist'), 2)
  assert retraced == fresh
