"""Training speed: steps/s of the jitted train step for a config, on random data.

  python benchmarks/train_speed.py --config=configs/multimnist.py:modalities=2 --steps=200

Prints and writes (--out) a JSON record: config, devices, batch size, compile seconds, steps/s.
Random uint8 batches stand in for data: the host-side sampler costs ~0.2 ms per step
(mmali_jax/data/pipeline.py), far below a step, and runs on a prefetch thread anyway.
"""
import json
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from mmali_jax import networks
from mmali_jax import train
from mmali_jax import train_step

config_flags.DEFINE_config_file('config', None, 'Experiment config.')
flags.DEFINE_integer('steps', 100, 'Timed steps (after one compile step).')
flags.DEFINE_string('out', None, 'Optional JSON output path.')
FLAGS = flags.FLAGS


def main(_):
  config = FLAGS.config
  mods, gen, disc = networks.build(config)
  mesh = train.make_mesh(config)
  step_fn, replicated, sharded = train.compile_train_step(config, gen, disc, mods, mesh)
  state = jax.device_put(train_step.create_train_state(config, gen, disc, mods), replicated)
  rng = np.random.default_rng(0)
  batch = {k: {m.name: rng.integers(0, 256, (config.batch_size,) + m.image_shape, np.uint8)
               for m in mods} for k in ('a', 'b', 'b_marginals', 'c', 'd')}
  batch = jax.device_put(batch, sharded)
  start = time.perf_counter()
  state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step_fn(state, batch)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  record = dict(
      modalities=[m.name for m in mods], discriminator=config.discriminator,
      batch_size=config.batch_size, devices=[str(d) for d in mesh.devices.flat],
      device_kind=jax.devices()[0].device_kind, jax=jax.__version__,
      compile_and_first_step_s=round(compile_s, 2), timed_steps=FLAGS.steps,
      steps_per_s=round(FLAGS.steps / seconds, 2),
      hours_for_num_train_steps=round(config.num_train_steps / (FLAGS.steps / seconds) / 3600, 2))
  print(json.dumps(record, indent=2))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(record, f, indent=2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
