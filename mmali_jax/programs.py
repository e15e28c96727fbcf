"""The jitted programs of a run, kept for the rest of the process and shared by the runs in it
that compute the same thing.

JAX caches what it traced and compiled per jitted function object, and building the training step
anew for every run made every run trace it again: 4-6 s for the small test configs on a 2-core
CPU, before the compilation cache is even asked. Runs in one process that differ only in fields
the programs never read (the seed, which they take as an input; how long, how often to log, save
or evaluate; where the data lives) reuse the same jitted functions here: the seeds of a Table 1
sweep (`python -m mmali_jax.reproduce`), a run resumed in the same process, a rerun in a
notebook. A resume by a new command starts a new process and shares nothing (the persistent
compilation cache still spares it the compiling).

Edited code is not reused: the key holds the modification times and sizes of this package's
source files, and the network families the modalities name (`models.registry`), so a notebook
that edits or reloads a module, or registers another family under a name, traces afresh.
`clear()` forgets everything kept.
"""
import collections
import json
import os
import threading

# Fields no jitted program of a run reads: the seed reaches the programs as an argument (the
# initial key, the data key), the rest only steer the host's loop.
NOT_IN_PROGRAMS = ('seed', 'num_train_steps', 'log_every_steps', 'checkpoint_every_steps',
                   'keep_checkpoints', 'steps_per_dispatch', 'num_sample_images', 'eval',
                   'data.tfds_data_dir')
# Programs kept (a run keeps three: its step, its initial state, its sample grids), the least
# recently used dropped first, with what JAX keeps for them.
MAX_KEPT = 16

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
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


def networks_key(gen, disc, mods):
  """The modules and the network families they build (a family the registry maps a name to
  anew changes it)."""
  return gen, disc, mods, tuple(m.family for m in mods)


def _source_fingerprint():
  stats = []
  for folder, _, files in os.walk(_PACKAGE):
    for name in files:
      if name.endswith('.py'):
        stat = os.stat(os.path.join(folder, name))
        stats.append((os.path.join(folder, name), stat.st_mtime_ns, stat.st_size))
  return tuple(sorted(stats))


def kept(name, key, build):
  """build(), the first time `name` is asked for with `key` (hashable) and this package's source
  as it is; the same object again afterwards. build() only wraps functions (jax.jit traces at
  the first call), so it runs under the lock."""
  full_key = (name, key, _source_fingerprint())
  with _lock:
    if full_key in _kept:
      _kept.move_to_end(full_key)
    else:
      _kept[full_key] = build()
      while len(_kept) > MAX_KEPT:
        _kept.popitem(last=False)
    return _kept[full_key]


def clear():
  """Forgets every kept program: the next run traces its programs again (e.g. for a test that
  replaces a function the programs call)."""
  with _lock:
    _kept.clear()
