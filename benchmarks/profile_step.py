"""Where the time of one training iteration goes, from XLA's own trace of the jitted step.

  python benchmarks/profile_step.py --config=configs/mnist_svhn.py [--steps=5] [--top=20]
  python benchmarks/profile_step.py --config=configs/multimnist.py:modalities=2 --config.batch_size=128

Runs the step of the config on device-resident random data (as benchmarks/run.py does), traces
`--steps` calls of it (each of the config's `steps_per_dispatch` iterations, as training runs
them) with jax.profiler, and prints per iteration:
- the wall time, untraced and traced;
- the time of the step's XLA operations by kind (matmuls and convolutions, copies and transposes,
  everything else), by network and direction (forward or backward, from each operation's
  source location; one XLA made without, a convolution's kernel gradient say, takes its nearest
  operands'), and the most expensive operations with their shapes;
- XLA's FLOP count of the iteration and the rate it implies while matmuls run, per thread;
- how busy the executing threads were (CPU: how long 0, 1 or 2+ of them ran operations), and
  by network, the time during which one thread alone ran operations: the step's serial part,
  which more threads cannot shorten.
Times are summed over threads: on a 2-core CPU two operations run side by side, so the sums can
exceed the wall time. On a GPU the threads are CUDA streams, and while it traces, XLA launches
the kernels one by one instead of as the CUDA graph it runs untraced
(`--xla_enable_command_buffers_during_profiling`, off by default): the traced time and the
busy streams describe that run, the untraced time the graph's. Writes the trace (open it with
TensorBoard's profile plugin or xprof) to --trace_dir and the summary to
<trace_dir>/summary.json.
"""
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=g-import-not-at-top,wrong-import-position
import run as benchmarks
# pylint: enable=g-import-not-at-top,wrong-import-position

config_flags.DEFINE_config_file('config', None, 'Experiment config.', lock_config=True)
flags.DEFINE_integer('steps', 5, 'Traced calls of the step, each of `steps_per_dispatch` '
                     'iterations as training runs them (1 on CPU, 100 on accelerators).')
flags.DEFINE_integer('top', 20, 'Most expensive operations listed.')
flags.DEFINE_string('trace_dir', None, 'Where the trace goes (default: a new temporary folder).')
FLAGS = flags.FLAGS

_SKIPPED_EVENTS = ('ThunkExecutor', 'end:', 'Slinky', 'ThreadpoolListener')
_NOT_OPERANDS = re.compile(r'(?:calls|to_apply|body|condition|branch_computations)='
                           r'(?:\{[^}]*\}|%?[\w.\-]+)|metadata=\{[^}]*\}')
_CONTROL = re.compile(r'control-predecessors=\{[^}]*\}')


def op_name(line):
  """The instruction's source location (its op_name metadata), or ''."""
  found = re.search(r'op_name="([^"]*)"', line)
  return found.group(1) if found else ''


def operands(line, opcode_start, control=True):
  """The names an instruction reads, in the order written (its text from the opcode on), and
  with control=True those it is ordered after (control-predecessors)."""
  text = _NOT_OPERANDS.sub('', line[opcode_start:])
  if not control:
    text = _CONTROL.sub('', text)
  return list(dict.fromkeys(re.findall(r'%([\w.\-]+)', text)))


def _source_from_operands(name, sources, reads):
  """For an instruction XLA made without a source location (the kernel gradients it rewrites
  convolutions into, say): the sources of the first instructions with one on each path back
  through its operands, a backward one where any is backward (what reads a gradient is part of
  the backward pass), else the first found."""
  seen, level, found = {name}, reads.get(name, []), []
  while level:
    seen.update(level)
    found += [sources[n] for n in level if sources.get(n)]
    level = [r for n in level if not sources.get(n) for r in reads.get(n, []) if r not in seen]
  return next((s for s in found if 'transpose(' in s), found[0] if found else '')


def _instructions(hlo_text):
  """name -> (shape, opcode, source op name, whether it is or fuses a matmul/convolution).

  An instruction without a source location takes its nearest operands' (_source_from_operands).
  """
  bodies = benchmarks.computations(hlo_text)
  has_matmul = lambda lines: any(' dot(' in l or ' convolution(' in l or 'custom_call_target="__'
                                 in l for l in lines)
  out, sources, reads = {}, {}, {}
  for line in hlo_text.splitlines():
    m = benchmarks.INSTRUCTION.match(line)
    if not m or m.group(1) in out:
      continue
    called = re.search(r'calls=%?([\w.\-]+)', line)
    matmul = has_matmul([line]) or bool(called and has_matmul(bodies.get(called.group(1), [])))
    sources[m.group(1)] = op_name(line)
    reads[m.group(1)] = operands(line, m.start(3), control=False)
    out[m.group(1)] = (m.group(2), m.group(3), sources[m.group(1)], matmul)
  for name, (shape, opcode, source, matmul) in out.items():
    if not source:
      out[name] = (shape, opcode, _source_from_operands(name, sources, reads), matmul)
  return out


def _kind(opcode, matmul):
  if matmul:
    return 'matmuls and convolutions'
  if opcode in ('copy', 'transpose') or opcode.startswith('copy'):
    return 'copies and transposes'
  return 'elementwise, reductions, data movement'


def _where(op_name):
  """'forward|backward <network>' from an operation's source location."""
  path = op_name.split('/', 1)[-1]
  direction = 'backward' if 'transpose(' in path else 'forward'
  parts = [p for p in re.sub(r'transpose\(|jvp\(|\)', '', path).split('/') if p]
  network = next((p for p in parts if p.split('.')[0] in ('Generators', 'FactorizedDiscriminators',
                                                          'MonolithicDiscriminator')), None)
  if network is None:
    return 'other (optimizer, sampler, losses)'
  i = parts.index(network)
  method = network.split('.')[-1]
  return f'{direction} {method}/{parts[i + 1] if i + 1 < len(parts) else ""}'.rstrip('/')


def _events(trace_dir):
  """[(thread, start ps, end ps, operation name)] of the XLA operations in the trace."""
  path = max(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True),
             key=os.path.getmtime)  # this run's, where the folder holds earlier ones
  events = []
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    # A TPU's trace has XLA's operations on a line of their own; a GPU's has its kernels on one
    # line per CUDA stream, each naming the XLA operation it runs in an 'hlo_op' stat (a library
    # call's kernels have the library's names otherwise). A trace that has both (one xprof has
    # processed) holds each kernel twice: its operations line is read.
    names = [line.name for line in plane.lines]
    device_lines = ('XLA Ops',) if 'XLA Ops' in names else ('Stream',)
    for k, line in enumerate(plane.lines):
      # XLA:CPU runs operations on its thread pool, and on the client's thread that starts
      # the program (where a program has little to run side by side, most of them).
      cpu = plane.name == '/host:CPU' and line.name.startswith(('tf_XLAEigen',
                                                                'tf_XLAPjRtCpuClient'))
      device = plane.name.startswith('/device:') and line.name.startswith(device_lines)
      if not (cpu or device):
        continue
      for ev in line.events:
        name = dict(ev.stats).get('hlo_op', ev.name) if device else ev.name
        if not name.startswith(_SKIPPED_EVENTS):
          start = round(ev.start_ns * 1000)
          events.append((f'{plane.name}/{k}', start, start + round(ev.duration_ns * 1000),
                         name))
  return events


def _sweep(events):
  """(duration, {thread: events running on it, innermost last}) for each span between two of
  the events' starts or ends."""
  points = sorted([(s, 1, i) for i, (_, s, _, _) in enumerate(events)] +
                  [(e, -1, i) for i, (_, _, e, _) in enumerate(events)])
  running, last = collections.defaultdict(list), points[0][0]
  for t, delta, i in points:
    yield t - last, {thread: evs for thread, evs in running.items() if evs}
    thread = events[i][0]
    if delta > 0:
      running[thread].append(i)  # events may nest; one starting later is inside the others
    else:
      running[thread].remove(i)
    last = t


def _busy_threads(events):
  """Shares of the traced span during which 0, 1, or 2 or more threads ran an operation."""
  share = collections.Counter()
  for span, running in _sweep(events):
    share[min(2, len(running))] += span
  total = sum(share.values())
  return {('2 or more' if k == 2 else str(k)): round(v / total, 3)
          for k, v in sorted(share.items())}


def _alone(events):
  """Picoseconds during which each operation ran while no other thread ran one: the serial
  part of the step, which more threads cannot shorten (a nested operation counts, not its
  parent)."""
  alone = collections.Counter()
  for span, running in _sweep(events):
    if len(running) == 1:
      alone[events[next(iter(running.values()))[-1]][3]] += span
  return alone


def main(argv):
  del argv
  program = benchmarks._Program(FLAGS.config)  # pylint: disable=protected-access
  instructions = _instructions(program.compiled.as_text())
  flops = program.flops_per_iteration()

  def run(n):
    start = time.perf_counter()
    for _ in range(n):
      program()
    return (time.perf_counter() - start) / n / program.k  # per iteration

  run(3)
  wall = run(max(FLAGS.steps, 10))
  trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix='mmali_profile_')
  with jax.profiler.trace(trace_dir):
    traced = run(FLAGS.steps)
  events = _events(trace_dir)
  if not events:
    # Nothing to sum: say so, keeping the trace for a tool that reads this backend's.
    sys.exit(f'{benchmarks.device_name()}: {1000 * wall:.1f} ms per iteration ({1000 * traced:.1f} '
             f'traced); no XLA operations found in the trace. Open it with TensorBoard\'s '
             f'profile plugin or xprof: {trace_dir}')
  ms_per_iteration = lambda ps: ps / 1e9 / (FLAGS.steps * program.k)
  # (shape, opcode, source, matmul); an operation the compiled text lacks is unknown.
  instruction = lambda name: instructions.get(name, ('?', '?', '', False))
  per_op = collections.Counter()
  for _, start, end, name in events:
    per_op[name] += ms_per_iteration(end - start)
  by_kind, by_where, alone = collections.Counter(), collections.Counter(), collections.Counter()
  for name, ms in per_op.items():
    _, opcode, op_name, matmul = instruction(name)
    by_kind[_kind(opcode, matmul)] += ms
    by_where[_where(op_name)] += ms
  for name, ps in _alone(events).items():
    alone[_where(instruction(name)[2])] += ms_per_iteration(ps)
  total = sum(per_op.values())
  top = [dict(op=n, ms=round(ms, 2), shape=instruction(n)[0],
              source=instruction(n)[2].split('/', 1)[-1][:100])
         for n, ms in per_op.most_common(FLAGS.top)]
  matmul_ms = by_kind['matmuls and convolutions']
  summary = dict(device=benchmarks.device_name(), wall_ms=round(1000 * wall, 1),
                 traced_wall_ms=round(1000 * traced, 1), operations_ms=round(total, 1),
                 gflop_per_iteration=round(flops / 1e9, 2),
                 # Nearly all of XLA's FLOPs are in matmuls and convolutions: their rate while one
                 # runs, per thread.
                 matmul_gflop_per_s_per_thread=round(flops / 1e6 / matmul_ms, 1) if matmul_ms
                 else None,
                 by_kind={k: round(v, 1) for k, v in by_kind.most_common()},
                 by_network={k: round(v, 1) for k, v in by_where.most_common()},
                 busy_threads=_busy_threads(events),
                 one_thread_by_network={k: round(v, 1) for k, v in alone.most_common()},
                 top_operations=top, trace_dir=trace_dir)
  with open(os.path.join(trace_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  print(f'{summary["device"]}: {summary["wall_ms"]} ms per iteration ({summary["traced_wall_ms"]} '
        f'traced); XLA operations {summary["operations_ms"]} ms summed over threads')
  print(f'XLA counts {summary["gflop_per_iteration"]} GFLOP per iteration: '
        f'{summary["matmul_gflop_per_s_per_thread"]} GFLOP/s per thread while matmuls and '
        'convolutions run')
  print('threads running operations (share of the traced time):', summary['busy_threads'])
  for title, table in (('by kind', by_kind), ('by network', by_where)):
    print(f'\n{title}:')
    for k, v in table.most_common():
      print(f'  {v:8.1f} ms  {100 * v / total:5.1f}%  {k}')
  # Where a second thread would wait: more threads cannot shorten these spans, only a shorter
  # chain of dependent operations (or faster ones) can.
  print(f'\nwhile one thread alone runs operations ({sum(alone.values()):.1f} ms per iteration), '
        'by network:')
  for k, v in alone.most_common(8):
    print(f'  {v:8.1f} ms  {k}')
  print(f'\ntop {FLAGS.top} operations:')
  for row in top:
    print(f'  {row["ms"]:7.2f} ms  {row["op"]:28s} {row["shape"]:28s} {row["source"]}')
  print(f'\ntrace and summary.json: {trace_dir}')


if __name__ == '__main__':
  np.set_printoptions(precision=3)
  flags.mark_flags_as_required(['config'])
  app.run(main)
