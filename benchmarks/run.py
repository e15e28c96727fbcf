"""The speed benchmarks, one command for all, on whatever devices are present:

  python benchmarks/run.py                                    # every case, step benchmarks only
  python benchmarks/run.py --data_dir=/data/tfds              # + the real training loop
  python benchmarks/run.py --reference_dir=/src/mmali --reference_python=/venv-torch/bin/python

For MNIST-SVHN and MultiMNIST (M = 2 and 4), factorized and monolithic, at batch 64, it measures:
- compile time of the training step;
- iterations/s of the jitted step (batches drawn on the device, `steps_per_dispatch`
  iterations per call as training does), and of the input pipeline alone (sampling and
  gathering a batch on the device);
- XLA's FLOP count of one iteration, the FLOP/s achieved, and its fraction of the device's
  float32 matmul rate, measured in the same run (large square matmuls); and the FLOPs of its
  matmuls and convolutions counted as PyTorch counts the reference's (`matmul_flops`);
- peak memory: XLA's memory of the compiled step (arguments, outputs, temporaries), and the
  device's peak bytes in use so far in the run, this case's step included, where the backend
  reports it (GPU, TPU; the process's peak: the cases before count too);
- with --data_dir: iterations/s of the real training loop, `python -m mmali_jax.main` with
  evaluation off, read from the steps/s it logs (median after the first logging interval);
- with --reference_dir: the authors' PyTorch iteration on random tensors
  (benchmarks/reference_step.py), run in the same run on the same machine, and the FLOPs of its
  matmuls and convolutions (PyTorch's FlopCounterMode);
- with --variants: the jitted step under other settings of the config (e.g. the opt-in
  numerics modes), against the case's own config compiled in the same process and timed in
  alternating rounds, with how much each changes the losses of the first call.

Writes <out_dir>/<device>.json, <device>.md (a table) and <device>.png (its rates and speed-ups as
bars, `plot.py`) and prints the table; a subset of the cases (--cases) goes to
<device>-subset.{json,md,png} instead. Until every selected case is measured in full, the
measurements so far (written after each) are in <name>-incomplete.{json,md,png}, so that a run
stopped part-way keeps them, says what is missing and replaces no earlier complete table.
"""
import copy
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# On a GPU the training loop and the reference run as processes beside this one: JAX's default,
# taking 75% of the GPU's memory at start, would leave them too little. Inherited by the loop.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

# pylint: disable=g-import-not-at-top,wrong-import-position
from mmali_jax import config_checks
from mmali_jax import curves
from mmali_jax import networks
from mmali_jax import programs
from mmali_jax import train
from mmali_jax import train_step
from mmali_jax import writers
from mmali_jax.data import sampler
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot
# pylint: enable=g-import-not-at-top,wrong-import-position

CASES = (  # (name, config file, config argument)
    ('MNIST-SVHN factorized', 'mnist_svhn', 'discriminator=factorized'),
    ('MNIST-SVHN monolithic', 'mnist_svhn', 'discriminator=monolithic'),
    ('MultiMNIST M=2 factorized', 'multimnist', 'modalities=2,discriminator=factorized'),
    ('MultiMNIST M=2 monolithic', 'multimnist', 'modalities=2,discriminator=monolithic'),
    ('MultiMNIST M=4 factorized', 'multimnist', 'modalities=4,discriminator=factorized'),
    ('MultiMNIST M=4 monolithic', 'multimnist', 'modalities=4,discriminator=monolithic'),
)

flags.DEFINE_string('out_dir', os.path.join(ROOT, 'benchmarks', 'results'), 'Where results go.')
flags.DEFINE_float('seconds', 20.0, 'Approximate timed seconds per measurement.')
flags.DEFINE_string('cases', '', 'Comma-separated substrings selecting cases (default: all); '
                    'the results of a subset go to <device>-subset.{json,md,png}.')
flags.DEFINE_string('data_dir', None, 'TFDS data dir with mnist and svhn_cropped, to time the '
                    'real training loop (a stand-in svhn_cropped is fine for timing).')
flags.DEFINE_integer('loop_steps', 0, 'Steps of the training-loop run (0: from --seconds).')
flags.DEFINE_string('reference_dir', None, 'A checkout of the authors\' code (6b5d/mmali).')
flags.DEFINE_string('reference_python', sys.executable,
                    'A Python with PyTorch and the reference\'s dependencies.')
flags.DEFINE_list('variants', [], 'Settings of the config whose jitted step is timed against '
                  'each case\'s own: config overrides as on the training command without '
                  '"--config.", several in one variant joined by "+", variants separated by '
                  'commas (e.g. "spectral_norm_estimates=per_phase,matmul_precision=tensorfloat32,'
                  'spectral_norm_estimates=per_phase+matmul_precision=tensorfloat32").')
FLAGS = flags.FLAGS


def _load_config(name, arg):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def device_name():
  device = jax.devices()[0]
  if device.platform == 'cpu':
    model = ''
    try:
      with open('/proc/cpuinfo') as f:
        model = re.search(r'model name\s*:\s*(.*)', f.read()).group(1)
    except (OSError, AttributeError):
      model = platform.processor()
    return f'cpu-{os.cpu_count()}cores-' + re.sub(r'[^A-Za-z0-9]+', '-', model).strip('-')
  return re.sub(r'[^A-Za-z0-9]+', '-', f'{device.platform}-{jax.device_count()}x-'
                f'{device.device_kind}').strip('-')


def _timed(fn, seconds, min_reps=3):
  """Median seconds per call of fn() (which blocks), over repetitions filling `seconds`."""
  fn()
  times, start = [], time.perf_counter()
  while len(times) < min_reps or time.perf_counter() - start < seconds:
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def matmul_rate(seconds):
  """float32 FLOP/s of large square matmuls on the default device (the best of a few sizes)."""
  best = 0.0
  for n in (1024, 2048, 4096):
    a = jnp.ones((n, n), jnp.float32)
    with jax.default_matmul_precision('highest'):
      f = jax.jit(lambda a: a @ a)
      dt = _timed(lambda: f(a).block_until_ready(), seconds / 3)
    best = max(best, 2 * n ** 3 / dt)
  return best


def _program_memory(compiled):
  """XLA's peak memory of the compiled step (arguments, outputs and temporaries)."""
  m = compiled.memory_analysis()
  peak = getattr(m, 'peak_memory_in_bytes', 0)
  return peak or (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
                  m.alias_size_in_bytes)


def _device_peak_memory():
  """The device's peak bytes in use so far, where the backend reports it (GPU, TPU), else None."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def _random_data(config, mods, num_examples=2000, num_pairs=20000):
  rng = np.random.default_rng(0)
  return {'images': tuple(rng.integers(0, 256, (num_examples,) + m.image_shape, dtype=np.uint8)
                          for m in mods),
          'pairs': rng.integers(0, num_examples, (num_pairs, len(mods))).astype(np.int32),
          'key': train_step.data_key(config.seed)}


# An HLO instruction's name, shape (a tuple's has spaces) and opcode.
INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\(')
_HEADER = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) \(')
# Library calls that compute products (oneDNN's on CPU; cuBLAS, cuDNN), by their targets.
_PRODUCT_CALL = re.compile(r'custom_call_target="__(?:onednn|cublas|cudnn|xnn|ynn)')


def computations(hlo_text):
  """{computation name: [instruction lines]} of an HLO module's text."""
  out, current = {}, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and line.rstrip().endswith('{'):
      current = out.setdefault(header.group(1), [])
    elif line.startswith('}'):
      current = None
    elif current is not None and line.strip():
      current.append(line)
  return out


def _dims(shape):
  """The dimensions of an HLO shape's first array: 'f32[64,8]{1,0}' -> [64, 8]."""
  found = re.search(r'\[([\d,]*)\]', shape)
  return [int(d) for d in found.group(1).split(',') if d] if found else []


def _product_flops(line, name, opcode, operands, dims):
  """One dot's or convolution's FLOPs as torch counts them (`matmul_flops`)."""
  lhs, rhs = dims[operands[0]], dims[operands[1]]
  if opcode == 'dot':
    def listed(key):
      found = re.search(key + r'=\{([\d,]*)\}', line)
      return [int(i) for i in re.findall(r'\d+', found.group(1))] if found else []

    def free(shape, side):  # elements of the dimensions neither contracted nor batched
      kept = set(listed(side + '_contracting_dims') + listed(side + '_batch_dims'))
      return int(np.prod([d for i, d in enumerate(shape) if i not in kept]))

    if min(free(lhs, 'lhs'), free(rhs, 'rhs')) == 1:
      return 0  # a matrix-vector product: torch's count leaves out aten.mv
    k = int(np.prod([lhs[i] for i in listed('lhs_contracting_dims')]))
    return 2 * int(np.prod(dims[name])) * k
  lhs_labels, rhs_labels = re.search(r'dim_labels=(\w+)_(\w+)->', line).groups()
  taps = int(np.prod([rhs[i] for i, c in enumerate(rhs_labels) if c.isdigit()]))
  in_per_group, out_channels = rhs[rhs_labels.index('i')], rhs[rhs_labels.index('o')]
  if 'lhs_dilate=' in line:
    # A transposed convolution: torch counts every tap at every input position.
    positions = int(np.prod(lhs)) // lhs[lhs_labels.index('f')]
  else:
    positions = int(np.prod(dims[name])) // out_channels  # output positions, batch included
  return 2 * positions * in_per_group * out_channels * taps


def matmul_flops(hlo_text):
  """The FLOPs of a CPU program's matmuls and convolutions (its optimised HLO), counted as
  PyTorch's FlopCounterMode counts the reference's: 2 per multiply-add, every tap of every window
  at every output position (taps over padding included), a transposed convolution (XLA's
  convolution over a zero-dilated input) at every input position; matrix-vector products (the
  spectral-norm power iterations) left out, as torch leaves out aten.mv. XLA's own count
  (`cost_analysis`) leaves out the taps over padding, so only this one compares with the
  reference's. A stride-1 transposed convolution is an ordinary padded convolution in XLA's
  program and counts as one (this project's are all strided). None where the text gives no
  count: a library call computes a product (oneDNN's, where its flags are on), or a product
  runs in a loop or a conditional (trip counts are not in the text). Not for GPU programs:
  XLA:GPU interleaves a transposed convolution's input with zeros before cuDNN runs it and pads
  matmuls it splits along their contraction, so their products count work torch's count does
  not."""
  # An instruction's operands are defined before it in its own computation.
  dims, own, callees, looped = {}, {}, {}, set()
  for comp, lines in computations(hlo_text).items():
    own[comp], callees[comp] = 0, []
    for line in lines:
      m = INSTRUCTION.match(line)
      if not m:
        continue
      name, shape, opcode = m.groups()
      dims[name] = _dims(shape)
      if opcode == 'custom-call' and _PRODUCT_CALL.search(line):
        return None
      called = re.sub(r'metadata=\{[^}]*\}', '', line)
      callees[comp] += re.findall(r'(?:calls|to_apply)=%?([\w.\-]+)', called)
      for group in re.findall(r'(?:body|condition)=%?([\w.\-]+)|branch_computations=\{([^}]*)\}',
                              called):
        looped.update(re.findall(r'[\w.\-]+', ' '.join(group)))
      if opcode in ('dot', 'convolution'):
        operands = re.findall(r'%([\w.\-]+)', line[m.end():].split(')')[0])
        if len(operands) < 2 or not all(o in dims for o in operands[:2]):
          return None  # text without operand names: nothing to count by
        own[comp] += _product_flops(line, name, opcode, operands, dims)

  @functools.lru_cache(maxsize=None)
  def total(comp):  # its own products and those of what it calls, once per call
    return own.get(comp, 0) + sum(total(c) for c in callees.get(comp, ()))

  if any(total(comp) for comp in looped):
    return None
  entry = re.search(r'^ENTRY %?([\w.\-]+)', hlo_text, re.M)
  return None if entry is None else total(entry.group(1))


class _Program:
  """A config's training step compiled for `steps_per_dispatch` iterations per call, with its
  initial state and device-resident random data."""

  def __init__(self, config):
    mods, gen, disc = networks.build(config)
    mesh = train.make_mesh(config)
    self.fn, shardings = train.compile_train_steps(config, gen, disc, mods, mesh)
    self.state = jax.device_put(train_step.create_train_state(config, gen, disc, mods),
                                shardings.replicated)
    self.data = jax.device_put(_random_data(config, mods), shardings.replicated)
    self.k = train.steps_per_dispatch(config)
    self._one = None  # the program for one iteration per call, where k > 1 (`_single`)
    start = time.perf_counter()
    self.compiled = self.fn.lower(self.state, self.data, self.k).compile()
    self.compile_s = time.perf_counter() - start

  def __call__(self):
    """One call (k iterations), from the state the previous call left; -> its metrics, ready."""
    self.state, metrics = self.compiled(self.state, self.data)
    return jax.block_until_ready(metrics)

  def _single(self):
    """The program compiled for one iteration per call."""
    if self.k == 1:
      return self.compiled
    if self._one is None:
      self._one = self.fn.lower(self.state, self.data, 1).compile()
    return self._one

  def flops_per_iteration(self):
    """XLA's FLOP count of one iteration."""
    return self._single().cost_analysis().get('flops', float('nan'))

  def matmul_flops_per_iteration(self):
    """One iteration's matmul and convolution FLOPs as PyTorch counts them (`matmul_flops`), or
    None off the CPU."""
    if jax.devices()[0].platform != 'cpu':
      return None
    return matmul_flops(self._single().as_text())


def benchmark_step(config, seconds):
  """Compile time, step and input-pipeline rates, FLOPs of the jitted training step."""
  programs.clear()  # compile time as a new process sees it, not a program kept by an earlier case
  program = _Program(config)
  compiled, data, k = program.compiled, program.data, program.k
  flops = program.flops_per_iteration()
  matmul = program.matmul_flops_per_iteration()
  program_memory = _program_memory(compiled)
  compile_s = program.compile_s
  step_s = _timed(program, seconds) / k

  unpaired = bool(config.data.unpaired)
  sizes = [x.shape[0] for x in data['images']]

  @jax.jit
  def pipeline(data, first_step):
    # As a call of k iterations draws them: all indices first, then each iteration's images.
    indices = sampler.batch_indices_of_steps(data['key'], first_step, k, data['pairs'].shape[0],
                                             sizes, config.batch_size, unpaired)
    return [sampler.gather(data['images'], data['pairs'], jax.tree.map(lambda i: i[j], indices),
                           unpaired) for j in range(k)]

  counter = [0]

  def sample():
    counter[0] += 1
    jax.block_until_ready(pipeline(data, counter[0] * k))

  pipeline_s = _timed(sample, seconds / 4) / k
  return dict(compile_s=round(compile_s, 2), steps_per_dispatch=k,
              step_memory_mb=round(program_memory / 2 ** 20),
              step_iterations_per_s=round(1 / step_s, 2), step_ms=round(1000 * step_s, 2),
              flops_per_iteration=flops, achieved_gflop_per_s=round(flops / step_s / 1e9, 1),
              matmul_gflop_per_iteration=None if matmul is None else round(matmul / 1e9, 2),
              pipeline_batches_per_s=round(1 / pipeline_s, 1))


def _unknown_field(config, variant):
  """The first field a variant names that the config does not have, or None."""
  for item in variant.split('+'):
    node = config
    for part in item.partition('=')[0].strip().split('.'):
      if not hasattr(node, 'keys') or part not in node:
        return item.partition('=')[0].strip()
      node = node[part]
  return None


def config_variant(config, variant):
  """A copy of `config` with a variant's overrides, "field=value" joined by "+" and read as
  `--config.field=value` is on the training command; a variant that cannot be read or that sets
  an invalid value is a ValueError naming it."""
  unknown = _unknown_field(config, variant)
  if unknown is not None:
    raise ValueError(f'--variants: {variant!r} names a field the config does not have '
                     f'({unknown!r}). Give config fields as on the training command without '
                     '"--config.", several joined by "+": e.g. spectral_norm_estimates=per_phase'
                     '+matmul_precision=tensorfloat32.')
  argv = ['variant'] + [f'--config.{item}' for item in variant.split('+')]
  flag_values = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict('config', copy.deepcopy(config), flag_values=flag_values,
                                    sys_argv=argv)
    flag_values(argv)
    out = flag_values.config
    config_checks.check(out)
  except (flags.Error, ValueError) as e:
    raise ValueError(f'--variants: {variant!r}: {e}') from None
  return out


def check_variants(config, variants):
  """ValueError naming the problem where a list of variants of `config` cannot be measured."""
  if len(set(variants)) != len(variants):
    raise ValueError(f'--variants lists a variant twice: {variants}.')
  for variant in variants:
    config_variant(config, variant)


def benchmark_variants(config, variants, seconds, rounds=5):
  """The jitted step under each variant of `config` against `config`'s own: all compiled in one
  process and timed in `rounds` alternating rounds (a machine whose speed drifts slows them
  alike); median ms per iteration, and how much the variant changes the losses of the first call,
  |loss - the config's loss|: 0 for a variant that computes the same numbers (from the same
  initial state and batches unless the variant changes the seed, the batch size or the
  iterations per call)."""
  check_variants(config, variants)
  compiled_variants = [('as configured', _Program(config))]
  compiled_variants += [(v, _Program(config_variant(config, v))) for v in variants]
  first = {name: program() for name, program in compiled_variants}
  call_s = {name: _timed(program, 0, min_reps=1) for name, program in compiled_variants}
  times = {name: [] for name, _ in compiled_variants}
  for r in range(rounds):
    # Every other round in reverse order: no program is always the first after another.
    for name, program in compiled_variants if r % 2 == 0 else compiled_variants[::-1]:
      calls = max(1, round(seconds / (rounds * len(compiled_variants) * call_s[name])))
      start = time.perf_counter()
      for _ in range(calls):
        program()
      times[name].append((time.perf_counter() - start) / (calls * program.k))
  base_ms = 1000 * float(np.median(times['as configured']))
  out = []
  for name, _ in compiled_variants:
    ms = 1000 * float(np.median(times[name]))
    out.append(dict(variant=name, step_ms=round(ms, 2), speed_vs_configured=round(base_ms / ms, 3),
                    **{f'{phase}_loss_change': float(abs(first[name][f'{phase}/total'] -
                                                         first['as configured'][f'{phase}/total']))
                       for phase in ('d', 'g')}))
  return out


def _recording_error(record, key, fn, *args):
  """fn(*args), or None where it raised: a compiler's or the device's error on a case (memory,
  say) goes to record[key] as one line of the results, as a failed loop's does, and the
  other measurements and cases go on."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    record[key] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
    return None


def _last_line(result):
  """The last line a failed command wrote to stderr (its error, as a rule)."""
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  return (lines or ['exit status %d' % result.returncode])[-1][:300]


def _loop_steps(iterations, k):
  """About `iterations` (at least 50), a multiple of 10 k: the loop, logging every tenth of
  them (`_log_every`), then calls the step with k iterations every time, and compiles that
  program alone."""
  return 10 * k * max(round(iterations / (10 * k)), -(-5 // k))


def _log_every(steps):
  """The training loop's logging interval when it is timed over `steps`: a tenth of them."""
  return max(1, steps // 10)


def benchmark_loop(config_file, arg, steps, data_dir):
  """Iterations/s of `python -m mmali_jax.main` (evaluation off), from the steps/s it logs."""
  workdir = tempfile.mkdtemp(prefix='mmali_bench_')
  try:
    log_every = _log_every(steps)
    cmd = [sys.executable, '-m', 'mmali_jax.main', f'--config=configs/{config_file}.py:{arg}',
           f'--workdir={workdir}', f'--config.data.tfds_data_dir={data_dir}',
           f'--config.num_train_steps={steps}', f'--config.log_every_steps={log_every}',
           f'--config.checkpoint_every_steps={steps}', '--config.eval.every_steps=0',
           '--compilation_cache=']
    result = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True)
    if result.returncode != 0:
      # Reported in the results; the other measurements and cases go on.
      print(result.stderr[-3000:], file=sys.stderr)
      return dict(loop_error=_last_line(result))
    rates = [v for step, v in curves.read_scalars(workdir)['steps_per_sec'] if step > log_every]
    return dict(loop_iterations_per_s=round(float(np.median(rates)), 2), loop_steps=steps)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def benchmark_reference(config_file, config, reference_dir, reference_python, seconds):
  """The authors' iteration for the case (benchmarks/reference_step.py, run by
  `reference_python`): its ms and iterations/s, or the error it stopped with."""
  experiment = 'mnist_svhn' if config_file == 'mnist_svhn' else 'multimnist'
  kind = networks.discriminator_kind(config.discriminator)
  if experiment == 'mnist_svhn' and kind == 'monolithic':
    return {}  # the reference has no MNIST-SVHN baseline
  cmd = [reference_python, os.path.join(ROOT, 'benchmarks', 'reference_step.py'),
         f'--reference_dir={reference_dir}', f'--experiment={experiment}',
         f'--modalities={len(config.modalities)}', f'--discriminator={kind}',
         f'--batch_size={config.batch_size}',
         f'--device={"cuda" if jax.devices()[0].platform == "gpu" else "cpu"}',
         '--steps=5', f'--seconds={seconds}']
  result = subprocess.run(cmd, check=False, capture_output=True, text=True)
  if result.returncode != 0:
    # Reported in the results, as a failed loop is: the measurements so far are kept.
    print(result.stderr[-3000:], file=sys.stderr)
    return dict(reference_error=_last_line(result))
  record = json.loads(result.stdout.strip().splitlines()[-1])
  return dict(reference_ms=record['ms_per_iteration'],
              reference_iterations_per_s=record['iterations_per_s'],
              reference_gflop_per_iteration=record.get('gflop_per_iteration'),
              reference_torch=record['torch'], reference_device=record['device'])


def _table(results):
  cols = [('case', 'case'), ('compile s', 'compile_s'), ('step it/s', 'step_iterations_per_s'),
          ('loop it/s', 'loop_iterations_per_s'), ('reference it/s', 'reference_iterations_per_s'),
          ('speed-up vs reference', 'speedup_vs_reference'),
          ('GFLOP/it', 'gflop_per_iteration'),
          ('matmul GFLOP/it as torch counts', 'matmul_gflop_per_iteration'),
          ('reference GFLOP/it', 'reference_gflop_per_iteration'),
          ('achieved GFLOP/s', 'achieved_gflop_per_s'),
          ('% of matmul peak', 'percent_of_matmul_peak'),
          ('step memory MB', 'step_memory_mb'), ('device peak MB so far', 'device_peak_memory_mb'),
          ('pipeline batches/s', 'pipeline_batches_per_s'),
          ('250k steps take (h)', 'hours_for_250k_steps')]
  lines = ['| ' + ' | '.join(c for c, _ in cols) + ' |', '|' + '---|' * len(cols)]
  for r in results:
    lines.append('| ' + ' | '.join('–' if r.get(k) is None else str(r[k]) for _, k in cols)
                 + ' |')
  return '\n'.join(lines)


def variants_table(results):
  lines = ['| case | variant | step ms | speed vs as configured | loss change (D, G) |',
           '|---|---|---|---|---|']
  for r in results:
    for v in r.get('variants', ()):
      lines.append(f'| {r["case"]} | {v["variant"]} | {v["step_ms"]} | '
                   f'{v["speed_vs_configured"]}x | {v["d_loss_change"]:.3g}, '
                   f'{v["g_loss_change"]:.3g} |')
  return '\n'.join(lines)


def select_cases(cases_flag):
  """The cases a --cases value selects; a value that selects none is an error naming them all."""
  selected = [c for c in CASES
              if not cases_flag or any(s in c[0] for s in cases_flag.split(','))]
  if not selected:
    raise ValueError(f'--cases={cases_flag} selects none of the cases: '
                     + ', '.join(repr(c[0]) for c in CASES) + '. Give comma-separated parts of '
                     'their names (e.g. --cases="M=2,MNIST-SVHN factorized").')
  return selected


def results_name(device, selected):
  """The results' file name: a subset of the cases never overwrites a device's full table."""
  return device if len(selected) == len(CASES) else f'{device}-subset'


def main(argv):
  del argv
  try:
    selected = select_cases(FLAGS.cases)
    for _, config_file, arg in selected:  # every variant read before hours of measuring
      check_variants(_load_config(config_file, arg), FLAGS.variants)
  except ValueError as e:
    sys.exit(str(e))
  device = device_name()
  stem = results_name(device, selected)
  peak = matmul_rate(FLAGS.seconds)
  summary = dict(device=device, devices=[str(d) for d in jax.devices()], jax=jax.__version__,
                 matmul_peak_gflop_per_s=round(peak / 1e9, 1), command=' '.join(sys.argv),
                 date=time.strftime('%Y-%m-%d'))
  results, text = [], ''
  for case, config_file, arg in selected:
    config = _load_config(config_file, arg)
    record = dict(case=case, config=f'configs/{config_file}.py:{arg}',
                  batch_size=config.batch_size, devices=jax.device_count())

    def save(measuring):
      """Writes the results so far, this case's measurements included, so that a run stopped
      part-way (a time-limited lease, a crash in a later case) keeps what it measured."""
      _derive(record, peak)
      return write_results(FLAGS.out_dir, stem, summary, results + [record], len(selected),
                           measuring)

    step = _recording_error(record, 'step_error', benchmark_step, config, FLAGS.seconds)
    if step is None:
      text = save([])
      results.append(record)
      continue
    record.update(step)
    device_peak = _device_peak_memory()  # before the variants' programs add theirs
    if device_peak is not None:
      record['device_peak_memory_mb'] = round(device_peak / 2 ** 20)
    to_come = (['variants'] * bool(FLAGS.variants) + ['training loop'] * bool(FLAGS.data_dir) +
               ['reference'] * bool(FLAGS.reference_dir))
    save(to_come)
    if FLAGS.variants:
      variants = _recording_error(record, 'variants_error', benchmark_variants, config,
                                  FLAGS.variants, FLAGS.seconds)
      if variants is not None:
        record['variants'] = variants
      to_come.remove('variants')
      save(to_come)
    if FLAGS.data_dir:
      steps = FLAGS.loop_steps or _loop_steps(3 * FLAGS.seconds * record['step_iterations_per_s'],
                                              record['steps_per_dispatch'])
      record.update(benchmark_loop(config_file, arg, steps, FLAGS.data_dir))
      to_come.remove('training loop')
      save(to_come)
    if FLAGS.reference_dir:
      record.update(benchmark_reference(config_file, config, FLAGS.reference_dir,
                                        FLAGS.reference_python, FLAGS.seconds))
    text = save([])
    results.append(record)
    print(json.dumps(record), flush=True)
  print(text)


def _derive(record, peak):
  """The columns computed from a case's measurements so far."""
  if 'step_iterations_per_s' not in record:
    return  # its step failed
  rate = record.get('loop_iterations_per_s', record['step_iterations_per_s'])
  if 'reference_iterations_per_s' in record:
    record['speedup_vs_reference'] = round(rate / record['reference_iterations_per_s'], 2)
  flops = record['flops_per_iteration']
  record.update(
      gflop_per_iteration=round(flops / 1e9, 2),
      percent_of_matmul_peak=round(100 * flops * record['step_iterations_per_s'] / peak, 1),
      hours_for_250k_steps=round(250_000 / rate / 3600, 2))


def write_results(out_dir, stem, summary, results, num_cases, measuring=()):
  """Writes the results so far to <stem>-incomplete.{json,md,png} while cases or measurements of
  the last case (`measuring`: what is still to come) are missing, and once all are measured to
  <stem>.{json,md,png}, removing the incomplete ones; -> the markdown."""
  summary = dict(summary, results=results)
  partial = os.path.join(out_dir, f'{stem}-incomplete')
  done = len(results) - bool(measuring)
  if done < num_cases:
    summary['incomplete'] = f'{done} of {num_cases} cases measured' + (
        f'; {results[-1]["case"]} still without its {", ".join(measuring)}' if measuring else '')
    path = partial
  else:
    path = os.path.join(out_dir, stem)
  os.makedirs(out_dir, exist_ok=True)
  writers.write_atomically(path + '.json', json.dumps(summary, indent=2))
  text = (f'# Benchmarks on {summary["device"]}\n\n`{summary["command"]}` ({summary["date"]}, '
          f'jax {summary["jax"]}; float32 matmul peak measured in the same run: '
          f'{summary["matmul_peak_gflop_per_s"]} GFLOP/s). Step it/s: the jitted training step '
          'on device-resident random data; loop it/s: `python -m mmali_jax.main` on real data; '
          'reference: the authors\' PyTorch iteration on random tensors, same machine, same '
          'run. GFLOP/it: XLA\'s count; matmul GFLOP/it as torch counts: the matmuls and '
          'convolutions of the same program counted as PyTorch counts the reference\'s (taps '
          'over padding included, which XLA leaves out; on CPU only), beside the reference\'s '
          'own count (PyTorch\'s FlopCounterMode). '
          'Step memory: XLA\'s peak memory of the compiled step (dataset included). The '
          '250k-steps estimate uses the loop rate where measured.\n\n')
  if 'incomplete' in summary:
    text += f'**Incomplete: {summary["incomplete"]}; the run stopped or is still going.**\n\n'
  text += _table(results) + '\n'
  if any('variants' in r for r in results):
    text += ('\n## Variants\n\nThe jitted step under other settings of the config, against the '
             'case\'s own config compiled in the same process, timed in alternating rounds '
             '(median ms per iteration); loss change: |D loss - the case\'s own| and the same '
             'for the G loss, in the first call from the same initial state and batches (0: the '
             'same numbers).\n\n'
             + variants_table(results) + '\n')
  failed = [f'- {r["case"]}: {what} failed: {r[key]}' for r in results
            for what, key in (('the step', 'step_error'), ('the variants', 'variants_error'),
                              ('the training loop', 'loop_error'),
                              ('the reference', 'reference_error')) if key in r]
  if failed:
    text += '\n' + '\n'.join(failed) + '\n'
  writers.write_atomically(path + '.md', text)
  try:  # the bars are a view of the table: a failure to draw them must not stop a long run
    plot.write(summary, path + '.png')
  except Exception as e:  # pylint: disable=broad-except
    print(f'Could not draw {path}.png: {type(e).__name__}: {e}', file=sys.stderr)
  if path != partial:
    for ext in ('.json', '.md', '.png'):
      if os.path.exists(partial + ext):
        os.remove(partial + ext)
  return text


if __name__ == '__main__':
  app.run(main)
