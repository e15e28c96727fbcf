"""How many kernels one training iteration launches on a GPU, found without a GPU.

  pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"   # compiles, needs no GPU
  python benchmarks/gpu_kernels.py [--gpu=h200] [--cases=MultiMNIST] [--steps_per_dispatch=100] \
      [--variants=spectral_norm_estimates=per_phase]   # config settings counted beside each case's own

XLA compiles each benchmark case's training steps (`steps_per_dispatch` iterations in one call, as
training runs on accelerators, the state donated) for the described GPU through JAX's deviceless
compilation, and this script counts, in the loop body that is one iteration, the operations that
become kernels: fusions (XLA's own kernels and its Triton matmuls), library calls (cuBLAS, cuDNN),
copies and collectives, by network and direction (from each kernel's own source location, named as
benchmarks/profile_step.py names them; a kernel XLA made without one counts as "other", where
profile_step gives it its operands'); the longest chain of those kernels each waiting for the one
before; and the loops nested in an iteration whose trip count depends on data (each trip waits for
the device unless the loop runs inside a CUDA graph). What a call runs once, outside its iterations
(drawing the batches of all of them, averaging their metrics), is counted apart: the instructions of
the call's own computation, not those it reaches through calls or asynchronous operations. XLA runs
the loop body as one command buffer (a CUDA graph) in which a kernel waits only for the kernels it
depends on, so at the paper's batch of 64, where most kernels are tiny, an iteration takes somewhere
between the chain's length and the number of kernels times a kernel's latency, a few microseconds,
rather than its FLOPs' time: the two counts are what a GPU iteration's time can be judged by before
a GPU is at hand. XLA cannot autotune without a device; the counts do not depend on it.

Writes <out_dir>/gpu-kernels-<gpu>.json and .md and prints the table.
"""
import collections
import json
import os
import re
import sys

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
from jax.experimental import topologies
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import profile_step
import run as benchmarks
from mmali_jax import networks
from mmali_jax import train
from mmali_jax import train_step
# pylint: enable=g-import-not-at-top,wrong-import-position

# XLA's GPU target descriptions (Compiler::TargetConfig as text), from the published H100 SXM
# figures; the H200 is the same chip with more and faster memory.
_H100 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: %d l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: %d shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "%s"
"""
GPUS = {
    'h100': _H100 % (3352320000000, 84929347584, 'NVIDIA H100 80GB HBM3'),
    'h200': _H100 % (4800000000000, 150754820096, 'NVIDIA H200'),
}

flags.DEFINE_enum('gpu', 'h200', sorted(GPUS), 'The GPU to compile for.')
flags.DEFINE_integer('steps_per_dispatch', 100, 'Iterations per call, as training on a GPU '
                     '(at least 2: the iteration is found as the body of their loop).',
                     lower_bound=2)
flags.DEFINE_integer('networks', 6, 'Networks and directions listed per case, by kernels.')
FLAGS = flags.FLAGS  # --cases, --variants and --out_dir: benchmarks/run.py's

_KERNEL_OPCODES = {'fusion': 'fusions', 'custom-call': 'library calls', 'copy': 'copies',
                   'all-reduce': 'collectives', 'all-gather': 'collectives',
                   'reduce-scatter': 'collectives'}


def _loops(lines):
  """[(body, condition, trip count or None where it depends on data)] of the while loops among
  `lines`."""
  out = []
  for line in lines:
    if ' while(' in line:
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      out.append((re.search(r'body=%?([\w.\-]+)', line).group(1),
                  re.search(r'condition=%?([\w.\-]+)', line).group(1),
                  int(trips.group(1)) if trips else None))
  return out


def _kernels(lines):
  return [line for line in lines if _kernel_opcode(line)]


def _kernel_opcode(line):
  """The instruction's opcode if it becomes a kernel, else None."""
  m = benchmarks.INSTRUCTION.match(line)
  return m.group(3) if m and m.group(3) in _KERNEL_OPCODES else None


def longest_chain(lines):
  """(kernels on the longest chain of kernels each waiting for the one before, {where: how many of
  them}): the instructions among `lines` that read another's result or are ordered after it
  (control-predecessors), the instructions that are no kernels (tuple accesses, bitcasts, loops)
  passing the wait on. XLA runs a loop body on a GPU as one command buffer (a CUDA graph) whose
  kernels wait only for what they read, so an iteration takes at least this many kernels'
  latencies one after another, however many kernels run side by side."""
  deps, kernel, where = {}, {}, {}
  for line in lines:
    m = benchmarks.INSTRUCTION.match(line)
    if not m:
      continue
    name, op_name = m.group(1), profile_step.op_name(line)
    # In the order written, so that of equally long chains the same one is reported every run.
    deps[name] = profile_step.operands(line, m.start(3))
    kernel[name] = m.group(3) in _KERNEL_OPCODES
    where[name] = ('spectral-norm power iterations' if 'power_iteration' in op_name else
                   profile_step._where(op_name))  # pylint: disable=protected-access
  depth, before = {}, {}
  for start in deps:  # depth-first, without recursion: a body has thousands of instructions
    stack = [start]
    while stack:
      name = stack[-1]
      waiting = [d for d in deps[name] if d in deps and d not in depth]
      if waiting:
        stack.extend(waiting)
        continue
      stack.pop()
      if name in depth:
        continue
      last = max((d for d in deps[name] if d in deps), key=depth.get, default=None)
      depth[name] = kernel[name] + (depth[last] if last else 0)
      before[name] = last
  name, on_chain = max(depth, key=depth.get, default=None), collections.Counter()
  length = depth.get(name, 0)
  while name:
    on_chain[where[name]] += kernel[name]
    name = before[name]
  return length, {k: v for k, v in on_chain.most_common() if v}


def _data_dependent_loops(comps, lines):
  """(number of loops among `lines` whose trip count depends on data, kernels per trip: those of
  their bodies and of their conditions)."""
  loops = [(body, condition) for body, condition, trips in _loops(lines) if trips is None]
  return len(loops), sum(len(_kernels(comps[body])) + len(_kernels(comps.get(condition, [])))
                         for body, condition in loops)


def count_kernels(hlo_text, steps_per_dispatch):
  """The kernels of one iteration: the body of the loop that runs `steps_per_dispatch` times;
  and those a call runs once, outside that loop (drawing the batches of all its iterations).

  -> {'kernels': n, 'by opcode': {...}, 'spectral-norm power iterations': n (of the kernels),
      'by network': {...}, 'longest chain': n (`longest_chain`), 'on the longest chain': {...},
      'data-dependent loops': n, 'kernels per trip of those loops': n,
      'per call, outside the loop': {'kernels': n, 'data-dependent loops': n,
                                     'kernels per trip of those loops': n}}
  """
  comps = benchmarks.computations(hlo_text)
  bodies = [body for lines in comps.values() for body, _, trips in _loops(lines)
            if trips == steps_per_dispatch]
  if len(bodies) != 1:
    raise ValueError(f'Expected one loop of {steps_per_dispatch} trips, found {len(bodies)}.')
  by_opcode, by_network, power_iterations = collections.Counter(), collections.Counter(), 0
  for line in _kernels(comps[bodies[0]]):
    by_opcode[_KERNEL_OPCODES[_kernel_opcode(line)]] += 1
    op_name = profile_step.op_name(line)
    power_iteration = 'power_iteration' in op_name
    power_iterations += power_iteration
    where = profile_step._where(op_name)  # pylint: disable=protected-access
    if power_iteration and where.startswith('other'):  # run before the calls, outside networks
      where = 'power iterations before the calls'
    by_network[where] += 1
  loops, per_trip = _data_dependent_loops(comps, comps[bodies[0]])
  chain, on_chain = longest_chain(comps[bodies[0]])
  entry = comps[re.search(r'^ENTRY %?([\w.\-]+) \(', hlo_text, re.M).group(1)]
  outside_loops, outside_per_trip = _data_dependent_loops(comps, entry)
  return {'kernels': sum(by_opcode.values()), 'by opcode': dict(by_opcode.most_common()),
          'spectral-norm power iterations': power_iterations,
          'by network': dict(by_network.most_common()),
          'longest chain': chain, 'on the longest chain': on_chain,
          'data-dependent loops': loops,
          'kernels per trip of those loops': per_trip,
          'per call, outside the loop': {
              'kernels': len(_kernels(entry)), 'data-dependent loops': outside_loops,
              'kernels per trip of those loops': outside_per_trip}}


def compile_for_gpu(config, gpu, steps_per_dispatch):
  """The optimised HLO of the config's training steps, compiled for `gpu` on one device."""
  try:
    topology = topologies.get_topology_desc(platform='cuda', target_config=GPUS[gpu],
                                            topology='1x1x1')
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f'Cannot compile for a GPU here ({type(e).__name__}: {e}). Install JAX\'s '
                     f'CUDA plugin for this JAX: pip install "jax[cuda12]=={jax.__version__}" '
                     '(no GPU needed).') from None
  mesh = jax.sharding.Mesh(np.array(topology.devices[:1]), ('data',))
  mods, gen, disc = networks.build(config)
  fn, shardings = train.compile_train_steps(config, gen, disc, mods, mesh)
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings.replicated)
  state = jax.tree.map(spec, jax.eval_shape(
      lambda: train_step.create_train_state(config, gen, disc, mods)))
  data = jax.tree.map(spec, benchmarks._random_data(config, mods))  # pylint: disable=protected-access
  return fn.lower(state, data, steps_per_dispatch).compile().as_text()


def table(results, gpu, steps_per_dispatch, top, variants=()):
  command = f'python benchmarks/gpu_kernels.py --gpu={gpu}' + (
      f' --variants={",".join(variants)}' if variants else '')
  lines = [f'Kernels per training iteration compiled for one {gpu.upper()} (jax {jax.__version__}, '
           f'batch 64, {steps_per_dispatch} iterations per call; `{command}`)', '',
           '| case | kernels per iteration | fusions | library calls | copies | of which in '
           'spectral-norm power iterations | longest chain of dependent kernels (power '
           'iterations on it) | data-dependent loops (kernels per trip) | '
           'once per call, outside the iterations: kernels, data-dependent loops (kernels per '
           'trip) | most kernels |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for name, r in results.items():
    ops, outside = r['by opcode'], r['per call, outside the loop']
    most = ', '.join(f'{k} {v}' for k, v in list(r['by network'].items())[:top])
    lines.append(f"| {name} | {r['kernels']} | {ops.get('fusions', 0)} | "
                 f"{ops.get('library calls', 0)} | {ops.get('copies', 0)} | "
                 f"{r['spectral-norm power iterations']} | {r['longest chain']} "
                 f"({r['on the longest chain'].get('spectral-norm power iterations', 0)}) | "
                 f"{r['data-dependent loops']} ({r['kernels per trip of those loops']}) | "
                 f"{outside['kernels']}, {outside['data-dependent loops']} "
                 f"({outside['kernels per trip of those loops']}) | {most} |")
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  jax.config.update('jax_platforms', 'cpu')  # compile for the GPU, run nothing on one
  try:
    selected = benchmarks.select_cases(FLAGS.cases)
    configs = [(name, benchmarks._load_config(config_file, arg))  # pylint: disable=protected-access
               for name, config_file, arg in selected]
    for _, config in configs:
      benchmarks.check_variants(config, FLAGS.variants)
  except ValueError as e:
    sys.exit(str(e))
  results = {}
  for name, config in configs:
    for variant in [None] + FLAGS.variants:
      label = name if variant is None else f'{name}, {variant}'
      program = config if variant is None else benchmarks.config_variant(config, variant)
      hlo = compile_for_gpu(program, FLAGS.gpu, FLAGS.steps_per_dispatch)
      results[label] = count_kernels(hlo, FLAGS.steps_per_dispatch)
      print(f"{label}: {results[label]['kernels']} kernels per iteration", flush=True)
  text = table(results, FLAGS.gpu, FLAGS.steps_per_dispatch, FLAGS.networks, FLAGS.variants)
  print(text)
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  # a subset of the cases never overwrites the full table
  base = os.path.join(FLAGS.out_dir, benchmarks.results_name(f'gpu-kernels-{FLAGS.gpu}', selected))
  with open(base + '.json', 'w') as f:
    json.dump({'gpu': FLAGS.gpu, 'jax': jax.__version__,
               'steps_per_dispatch': FLAGS.steps_per_dispatch, 'variants': FLAGS.variants,
               'cases': results}, f, indent=2)
  with open(base + '.md', 'w') as f:
    f.write(text)


if __name__ == '__main__':
  app.run(main)
