"""The jitted programs of a run, kept for the rest of the process and shared by the runs that
compute the same thing.

JAX caches what it traced and compiled per jitted function object, and building the training step
anew for every run made every run trace it again: 4-6 s for the small test configs on a 2-core
CPU, before the compilation cache is even asked. Runs in one process that differ only in fields
the programs never read (the seed, which they take as an input; how long, how often to log, save
or evaluate; where the data lives) reuse the same jitted functions here: the seeds of a Table 1
cell, a resumed run, a rerun in a notebook.
"""
import collections
import json
import threading

# Fields no jitted program of a run reads: the seed reaches the programs as an argument (the
# initial key, the data key), the rest only steer the host's loop.
NOT_IN_PROGRAMS = ('seed', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                   'keep_checkpoints', 'steps_per_dispatch', 'num_sample_images', 'eval',
                   'data.tfds_data_dir')
MAX_KEPT = 16  # the least recently used are dropped (with what JAX keeps for them)

_kept = collections.OrderedDict()
_lock = threading.Lock()


def config_key(config):
  """The config as the programs see it: JSON without the fields of NOT_IN_PROGRAMS."""
  fields = json.loads(config.to_json_best_effort())
  for dotted in NOT_IN_PROGRAMS:
    *path, leaf = dotted.split('.')
    parent = fields
    for part in path:
      parent = parent.get(part, {})
    parent.pop(leaf, None)
  return json.dumps(fields, sort_keys=True)


def kept(name, key, build):
  """build(), the first time `name` is asked for with `key` (hashable) in this process; the same
  object again afterwards."""
  with _lock:
    if (name, key) in _kept:
      _kept.move_to_end((name, key))
      return _kept[name, key]
  value = build()
  with _lock:
    _kept[name, key] = value
    while len(_kept) > MAX_KEPT:
      _kept.popitem(last=False)
  return value


def clear():
  """Forgets every kept program: the next run traces its programs again (for code that changed
  what a traced function does, e.g. a test that replaces one)."""
  with _lock:
    _kept.clear()
