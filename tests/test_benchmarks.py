"""The benchmarks' bookkeeping: where an operation belongs, how busy the threads were, how many
kernels a GPU iteration launches, how variants of a config are read and compared, and what a
failed training loop or reference does to a run."""
import importlib
import json
import os
import sys

import pytest

from tests import test_train
from tests.conftest import ROOT
from tests.conftest import small_config


def _benchmark(name):
  """benchmarks/<name>.py, imported as the scripts import each other (once per process: their
  flags may be defined only once)."""
  if str(ROOT / 'benchmarks') not in sys.path:
    sys.path.insert(0, str(ROOT / 'benchmarks'))
  return importlib.import_module(name)


@pytest.fixture(scope='module')
def profile_step():
  return _benchmark('profile_step')


def test_operations_are_attributed_to_network_and_direction(profile_step):
  where = profile_step._where  # pylint: disable=protected-access
  assert where('jit(train_steps)/transpose(jvp(FactorizedDiscriminators.unimodal))/d0_1svhn/'
               'XFeatures_0/SpectralNorm_1/conv_general_dilated') == 'backward unimodal/d0_1svhn'
  assert where('jit(train_steps)/jvp(Generators.decode)/decoder_1svhn/ConvTranspose_2/'
               'dot_general') == 'forward decode/decoder_1svhn'
  assert where('jit(train_steps)/add') == 'other (optimizer, sampler, losses)'


def test_instructions_know_which_fuse_a_matmul(profile_step):
  hlo = '\n'.join([
      'HloModule m', '',
      '%fused_computation.1 (p: f32[4,4]) -> f32[4,4] {',
      '  %p = f32[4,4]{1,0} parameter(0)',
      '  ROOT %dot.1 = f32[4,4]{1,0} dot(%p, %p), lhs_contracting_dims={1}, '
      'rhs_contracting_dims={0}',
      '}', '',
      'ENTRY %main (a: f32[4,4]) -> f32[4,4] {',
      '  %a = f32[4,4]{1,0} parameter(0)',
      '  %ynn_fusion.1 = f32[4,4]{1,0} fusion(%a), kind=kCustom, calls=%fused_computation.1, '
      'metadata={op_name="jit(f)/dot_general"}',
      '  ROOT %copy.2 = f32[4,4]{0,1} copy(%ynn_fusion.1)',
      '}'])
  instructions = profile_step._instructions(hlo)  # pylint: disable=protected-access
  assert instructions['ynn_fusion.1'] == ('f32[4,4]{1,0}', 'fusion', 'jit(f)/dot_general', True)
  assert instructions['copy.2'][1:] == ('copy', 'jit(f)/dot_general', False)  # its operand's source
  kind = profile_step._kind  # pylint: disable=protected-access
  assert kind('fusion', True) == 'matmuls and convolutions'
  assert kind('copy', False) == 'copies and transposes'


def test_operations_without_a_source_take_their_nearest_operands(profile_step):
  # XLA rewrites a convolution's kernel gradient into a fusion without metadata that reads
  # transposed copies (also without) of the layer's input and of its output's gradient.
  forward = 'jit(f)/jvp(FactorizedDiscriminators.content)/d1_1svhn/XFeatures_0/select_n'
  backward = 'jit(f)/transpose(jvp(FactorizedDiscriminators.content))/d1_1svhn/XFeatures_0/div'
  hlo = '\n'.join([
      'HloModule m', '',
      'ENTRY %main (a: f32[4,4]) -> f32[4,4] {',
      '  %a = f32[4,4]{1,0} parameter(0)',
      f'  %act = f32[4,4]{{1,0}} negate(%a), metadata={{op_name="{forward}"}}',
      f'  %grad = f32[4,4]{{1,0}} exp(%a), metadata={{op_name="{backward}"}}',
      '  %t.1 = f32[4,4]{0,1} copy(%act)',
      '  %t.2 = f32[4,4]{0,1} copy(%grad)',
      '  %kernel_grad = f32[4,4]{1,0} add(%t.1, %t.2)',
      '  %from_forward = f32[4,4]{1,0} abs(%t.1)',
      '  %nearer_forward = f32[4,4]{1,0} add(%act, %t.2)',
      '  %orphan = f32[4,4]{1,0} abs(%a), control-predecessors={%act}',
      '  %pair = (f32[4,4]{1,0}, f32[4,4]{1,0}) tuple(%t.2, %a)',
      '  %from_pair = f32[4,4]{1,0} get-tuple-element(%pair), index=0',
      '  ROOT %r = f32[4,4]{1,0} add(%kernel_grad, %orphan)',
      '}'])
  instructions = profile_step._instructions(hlo)  # pylint: disable=protected-access
  where = lambda name: profile_step._where(instructions[name][2])  # pylint: disable=protected-access
  assert where('kernel_grad') == 'backward content/d1_1svhn'
  assert where('t.2') == 'backward content/d1_1svhn'
  assert where('from_forward') == 'forward content/d1_1svhn'
  assert where('nearer_forward') == 'backward content/d1_1svhn'  # the gradient, though further
  assert instructions['orphan'][2] == ''  # being ordered after an instruction is not reading it
  assert instructions['pair'][:2] == ('(f32[4,4]{1,0}, f32[4,4]{1,0})', 'tuple')
  assert where('from_pair') == 'backward content/d1_1svhn'
  assert instructions['act'][2] == forward


def test_busy_threads_counts_overlap_and_nesting(profile_step):
  # Thread a runs 0-10 (with a nested event 2-4), thread b 5-15 and 19-20: one thread is busy
  # 0-5, 10-15 and 19-20, both 5-10, none 15-19.
  events = [('a', 0, 10, 'x'), ('a', 2, 4, 'nested'), ('b', 5, 15, 'y'), ('b', 19, 20, 'z')]
  shares = profile_step._busy_threads(events)  # pylint: disable=protected-access
  assert shares == {'0': pytest.approx(0.2), '1': pytest.approx(0.55),
                    '2 or more': pytest.approx(0.25)}
  # Alone: x 0-2 and 4-5 (the nested event 2-4 counts, not x around it), y 10-15, z 19-20.
  alone = profile_step._alone(events)  # pylint: disable=protected-access
  assert alone == {'x': 3, 'nested': 2, 'y': 5, 'z': 1}


def test_gpu_kernels_counts_one_iteration_and_the_loops_inside_it():
  gpu_kernels = _benchmark('gpu_kernels')
  # The call's loop (3 trips) holds one iteration: 2 fusions (power iterations, one in the
  # discriminator D0 of modality 0, one run before the calls), a cuDNN call returning a tuple, a copy, free bitcasts and
  # tuple accesses, and a cycle-walking loop of unknown trip count (a fusion in its condition
  # and one in its body). The longest chain: fusion.1, fusion.2 reading it, the copy ordered
  # after fusion.2. (Training draws its batches before the iterations: the loop sits in
  # the iteration here to check that one found there is counted.)
  power = ('jit(train_steps)/while/body/jvp(FactorizedDiscriminators.unimodal)/d0_0mnist/'
           'SpectralNorm_0/power_iteration/dot_general')
  hlo = '\n'.join([
      'HloModule m', '',
      '%walk_cond (p: u32[8]) -> pred[] {',
      '  %p = u32[8]{0} parameter(0)',
      '  ROOT %fusion.8 = pred[] fusion(%p), kind=kInput, calls=%f8',
      '}', '',
      '%walk_body (p: u32[8]) -> u32[8] {',
      '  %p = u32[8]{0} parameter(0)',
      '  ROOT %fusion.9 = u32[8]{0} fusion(%p), kind=kLoop, calls=%f9',
      '}', '',
      '%iteration (s: (s32[], f32[4,4], u32[8])) -> (s32[], f32[4,4], u32[8]) {',
      '  %s = (s32[], f32[4,4]{1,0}, u32[8]{0}) parameter(0)',
      '  %w = f32[4,4]{1,0} get-tuple-element(%s), index=1',
      '  %b = f32[16]{0} bitcast(%w)',
      f'  %fusion.1 = f32[4]{{0}} fusion(%w), kind=kCustom, calls=%f1, '
      f'metadata={{op_name="{power}"}}',
      '  %fusion.2 = (f32[4,4]{1,0}, f32[4]{0}) fusion(%w, %fusion.1), kind=kInput, calls=%f2, '
      'metadata={op_name="jit(train_steps)/while/body/jvp(power_iteration)/vmap()/dot_general"}',
      '  %cudnn = (f32[4,4]{1,0}, u8[0]{0}) custom-call(%w), custom_call_target="__cudnn$convForward"',
      '  %copy.3 = f32[4,4]{0,1} copy(%w), control-predecessors={%fusion.2}',
      '  %u = u32[8]{0} get-tuple-element(%s), index=2',
      '  %walk = u32[8]{0} while(%u), condition=%walk_cond, body=%walk_body',
      '  ROOT %t = (s32[], f32[4,4]{1,0}, u32[8]{0}) tuple(%s, %copy.3, %walk)',
      '}', '',
      'ENTRY %main (a: (s32[], f32[4,4], u32[8])) -> (s32[], f32[4,4], u32[8]) {',
      '  %a = (s32[], f32[4,4]{1,0}, u32[8]{0}) parameter(0)',
      # Once per call: a fusion and a cycle-walking loop drawing the batches of the 3 trips.
      '  %keys = u32[8]{0} fusion(%a), kind=kLoop, calls=%f0',
      '  %batches = u32[8]{0} while(%keys), condition=%walk_cond, body=%walk_body',
      '  ROOT %loop = (s32[], f32[4,4]{1,0}, u32[8]{0}) while(%a), condition=%c, body=%iteration, '
      'backend_config={"known_trip_count":{"n":"3"},"known_init_step":{"init":"0","step":"1"}}',
      '}'])
  counts = gpu_kernels.count_kernels(hlo, steps_per_dispatch=3)
  assert counts['kernels'] == 4
  assert counts['by opcode'] == {'fusions': 2, 'library calls': 1, 'copies': 1}
  assert counts['spectral-norm power iterations'] == 2
  assert counts['by network'] == {'other (optimizer, sampler, losses)': 2,
                                  'forward unimodal/d0_0mnist': 1,
                                  'power iterations before the calls': 1}
  assert counts['longest chain'] == 3
  assert counts['on the longest chain'] == {'spectral-norm power iterations': 2,
                                            'other (optimizer, sampler, losses)': 1}
  # A trip runs the loop's condition (a reduction) and its body.
  assert counts['data-dependent loops'] == 1 and counts['kernels per trip of those loops'] == 2
  assert counts['per call, outside the loop'] == {
      'kernels': 1, 'data-dependent loops': 1, 'kernels per trip of those loops': 2}
  with pytest.raises(ValueError, match='one loop of 100 trips, found 0'):
    gpu_kernels.count_kernels(hlo, steps_per_dispatch=100)


def test_events_are_read_from_a_real_trace_of_this_backend(profile_step, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  f = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  a = jnp.ones((256, 256))
  f(a).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      f(a).block_until_ready()
  events = profile_step._events(str(tmp_path))  # pylint: disable=protected-access
  assert events and all(start < end for _, start, end, _ in events)
  # The two products of each of the 3 calls, as XLA names its operations in the trace.
  names = [name for *_, name in events]
  assert sum('dot' in n or 'fusion' in n for n in names) >= 6, sorted(set(names))


def test_a_gpu_trace_names_each_kernel_by_the_xla_operation_it_runs(profile_step, tmp_path):
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  # As a GPU's raw trace holds them: kernels on a line per CUDA stream, each with the operation
  # it runs in an 'hlo_op' stat (a library's kernel may have none); other lines are not kernels.
  xspace = """
  planes {
    id: 1 name: "/device:GPU:0"
    lines { id: 1 name: "Stream #13(Compute)" timestamp_ns: 1000
      events { metadata_id: 1 offset_ps: 0 duration_ps: 5000 stats { metadata_id: 1 str_value: "fusion.3" } }
      events { metadata_id: 2 offset_ps: 6000 duration_ps: 2000 } }
    lines { id: 2 name: "Stream #14(Compute)" timestamp_ns: 1000
      events { metadata_id: 1 offset_ps: 1000 duration_ps: 1000 stats { metadata_id: 1 str_value: "fusion.4" } } }
    lines { id: 3 name: "XLA Modules" timestamp_ns: 1000
      events { metadata_id: 2 offset_ps: 0 duration_ps: 9000 } }
    event_metadata { key: 1 value { id: 1 name: "loop_add_fusion" } }
    event_metadata { key: 2 value { id: 2 name: "sm90_xmma_gemm" } }
    stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
  }"""
  os.makedirs(tmp_path / 'plugins' / 'profile' / 'run')
  (tmp_path / 'plugins' / 'profile' / 'run' / 'gpu.xplane.pb').write_bytes(
      ProfileData.text_proto_to_serialized_xspace(xspace))
  events = profile_step._events(str(tmp_path))  # pylint: disable=protected-access
  assert sorted((name, end - start) for _, start, end, name in events) == [
      ('fusion.3', 5000), ('fusion.4', 1000), ('sm90_xmma_gemm', 2000)]
  # Two streams ran kernels side by side for 1 of the 8 ns traced.
  assert profile_step._busy_threads(events) == {  # pylint: disable=protected-access
      '0': 0.125, '1': 0.75, '2 or more': 0.125}


def test_cases_are_selected_by_name_and_a_subset_has_its_own_results():
  run = _benchmark('run')
  assert [c[0] for c in run.select_cases('M=2,MNIST-SVHN factorized')] == [
      'MNIST-SVHN factorized', 'MultiMNIST M=2 factorized', 'MultiMNIST M=2 monolithic']
  assert run.select_cases('') == list(run.CASES)
  with pytest.raises(ValueError, match=r"--cases=m2 selects none of the cases: 'MNIST-SVHN "
                     r"factorized', .*'MultiMNIST M=4 monolithic'\."):
    run.select_cases('m2')
  assert run.results_name('gpu-1x-H200', run.select_cases('M=2')) == 'gpu-1x-H200-subset'
  assert run.results_name('gpu-1x-H200', run.select_cases('')) == 'gpu-1x-H200'


def test_a_stopped_run_keeps_its_cases_beside_the_complete_table(tmp_path):
  run = _benchmark('run')
  summary = dict(device='gpu-1x-H200', command='benchmarks/run.py', date='2026-12-05', jax='x',
                 matmul_peak_gflop_per_s=1.0)
  case = dict(case='MultiMNIST M=2 factorized', step_iterations_per_s=1000.0)
  (tmp_path / 'gpu-1x-H200.md').write_text('an earlier complete table')
  run.write_results(str(tmp_path), 'gpu-1x-H200', summary, [case], 2)
  assert (tmp_path / 'gpu-1x-H200.md').read_text() == 'an earlier complete table'
  text = (tmp_path / 'gpu-1x-H200-incomplete.md').read_text()
  assert '**Incomplete: 1 of 2 cases measured' in text and '| MultiMNIST M=2 factorized |' in text
  # The last case's step measured, its training loop and reference to come.
  run.write_results(str(tmp_path), 'gpu-1x-H200', summary, [case, dict(case, case='M=4')], 2,
                    ['training loop', 'reference'])
  assert (tmp_path / 'gpu-1x-H200.md').read_text() == 'an earlier complete table'
  text = (tmp_path / 'gpu-1x-H200-incomplete.md').read_text()
  assert ('**Incomplete: 1 of 2 cases measured; M=4 still without its training loop, reference'
          in text) and '| M=4 |' in text
  assert (tmp_path / 'gpu-1x-H200-incomplete.png').exists()
  run.write_results(str(tmp_path), 'gpu-1x-H200', summary, [case, dict(case, case='M=4')], 2)
  assert sorted(os.listdir(tmp_path)) == ['gpu-1x-H200.json', 'gpu-1x-H200.md', 'gpu-1x-H200.png']
  text = (tmp_path / 'gpu-1x-H200.md').read_text()
  assert 'Incomplete' not in text and '| M=4 |' in text


def _bars(ax):
  """{row of the table: [bar lengths, top to bottom]} of a horizontal bar chart."""
  rows = {}
  for bar in sorted(ax.patches, key=lambda b: b.get_y()):
    rows.setdefault(round(bar.get_y() + bar.get_height() / 2), []).append(bar.get_width())
  return rows


def test_the_plot_shows_every_measured_rate_and_speed_up_and_the_device_s_target(tmp_path):
  plot = _benchmark('plot')
  summary = dict(device='cpu-2cores-X', date='2026-12-07', jax='x', matmul_peak_gflop_per_s=9.0,
                 results=[dict(case='MNIST-SVHN factorized', step_iterations_per_s=2.0,
                               loop_iterations_per_s=1.9, reference_iterations_per_s=1.5,
                               speedup_vs_reference=1.27),
                          dict(case='MultiMNIST M=2 factorized', step_iterations_per_s=18.0,
                               loop_error='MissingDatasetError',
                               reference_iterations_per_s=7.2, speedup_vs_reference=2.5),
                          dict(case='MultiMNIST M=4 factorized', step_error='XlaRuntimeError')])
  rates, speedups = plot.draw(summary).axes
  assert _bars(rates) == {0: [2.0, 1.9, 1.5], 1: [18.0, 7.2]}  # step, loop, reference
  assert _bars(speedups) == {0: [1.27], 1: [2.5]}
  # Each bar labelled with its value, each failure named where its bar would be: step bars,
  # step failures, loop bars, loop failures, reference bars.
  assert [(t.get_text().strip(), round(t.get_position()[1], 2) if 'failed' in t.get_text()
           else None) for t in rates.texts] == [
               ('2', None), ('18', None), ('step failed', 1.73), ('1.9', None),
               ('training loop failed', 1.0), ('1.5', None), ('7.2', None)]
  assert [t.get_text() for t in speedups.texts] == ['1.27x', '2.50x']
  assert [tuple(line.get_xdata()) for line in speedups.lines] == [(1, 1), (2.0, 2.0)]
  assert not rates.lines
  # On a GPU the targets are rates, marked on their cases' rows; no 2x line.
  gpu = dict(summary, device='gpu-1x-H200')
  rates, speedups = plot.draw(gpu).axes
  assert [(line.get_xdata()[0], tuple(line.get_ydata())) for line in rates.lines] == [
      (500, (-0.45, 0.45)), (1000, (0.55, 1.45))]
  assert [tuple(line.get_xdata()) for line in speedups.lines] == [(1, 1)]
  plot.write(gpu, str(tmp_path / 'gpu.png'))
  assert os.listdir(tmp_path) == ['gpu.png']
  assert (tmp_path / 'gpu.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_failed_training_loop_is_reported_and_the_benchmark_goes_on(tmp_path):
  run = _benchmark('run')
  # A preparation that stopped half-way: the command stops at once, naming the folder.
  os.makedirs(tmp_path / 'mnist' / 'incomplete.ABC_3.0.1')
  record = run.benchmark_loop('multimnist', 'modalities=2', 2, str(tmp_path))
  assert list(record) == ['loop_error']
  assert "Dataset 'mnist' was only partly prepared" in record['loop_error']


def test_variants_are_read_as_the_training_command_reads_config_overrides():
  run = _benchmark('run')
  config = small_config('multimnist', 'modalities=2')
  variant = run.config_variant(config, 'spectral_norm_estimates=per_phase+optim.learning_rate=1e-3')
  assert (variant.spectral_norm_estimates, variant.optim.learning_rate) == ('per_phase', 1e-3)
  assert (config.spectral_norm_estimates, config.optim.learning_rate) == ('per_call', 2e-4)
  with pytest.raises(ValueError, match=r"--variants: 'batch_size=16\+optim\.foo=1' names a field "
                     r"the config does not have \('optim\.foo'\)\. Give config fields as on the "
                     r'training command without "--config\."'):
    run.config_variant(config, 'batch_size=16+optim.foo=1')
  with pytest.raises(ValueError, match=r"names a field the config does not have "
                     r"\('optim\.learning_rat'\)\. Give"):
    run.config_variant(config, 'optim.learning_rat=1e-3')
  with pytest.raises(ValueError, match=r"--variants: 'spectral_norm_estimates=sometimes': "
                     r"config\.spectral_norm_estimates='sometimes'; choose one of"):
    run.config_variant(config, 'spectral_norm_estimates=sometimes')
  with pytest.raises(ValueError, match=r"--variants: 'batch_size=x': .*invalid literal for int"):
    run.config_variant(config, 'batch_size=x')


def test_variants_are_timed_against_the_config_and_show_what_they_change(monkeypatch):
  run = _benchmark('run')
  # The data of the other tests' runs (tests/test_train.py): the same program, compiled once.
  monkeypatch.setattr(run, '_random_data', test_train._random_data)  # pylint: disable=protected-access
  config = small_config('multimnist', 'modalities=2')
  # Two variants whose program is the config's own (kept for the process, mmali_jax/programs.py,
  # so nothing is compiled again): one computing the same numbers, one from other weights.
  results = run.benchmark_variants(config, ['matmul_precision=highest', 'seed=1'], seconds=0.5,
                                   rounds=2)
  configured, same, other_seed = results
  assert [r['variant'] for r in results] == ['as configured', 'matmul_precision=highest',
                                             'seed=1']
  assert configured['speed_vs_configured'] == 1.0
  assert all(r['step_ms'] > 0 for r in results)
  assert same['d_loss_change'] == same['g_loss_change'] == 0.0
  assert other_seed['d_loss_change'] > 1e-4 and other_seed['g_loss_change'] > 1e-4
  with pytest.raises(ValueError, match='lists a variant twice'):
    run.benchmark_variants(config, ['seed=1', 'seed=1'], seconds=0.5)
  table = run.variants_table([{'case': 'M=2', 'variants': results}])
  assert table.splitlines()[-1].startswith('| M=2 | seed=1 | ')


def test_a_failed_reference_is_reported_and_the_benchmark_goes_on(tmp_path):
  run = _benchmark('run')
  # An empty folder for the authors' code (and, here, a Python that may lack torch).
  record = run.benchmark_reference('multimnist', small_config('multimnist', 'modalities=2'),
                                   str(tmp_path), sys.executable, seconds=1)
  assert list(record) == ['reference_error']
  assert record['reference_error'].startswith('ModuleNotFoundError: No module named')


def test_the_training_loop_is_timed_in_calls_of_one_size():
  run = _benchmark('run')
  from mmali_jax import train  # pylint: disable=g-import-not-at-top
  for iterations, k in ((7845, 100), (3555, 100), (450, 100), (20, 1), (1234, 1), (30, 4),
                        (333, 7)):
    steps = run._loop_steps(iterations, k)  # pylint: disable=protected-access
    # The nearest multiple of 10 k, and at least 50.
    assert steps % (10 * k) == 0 and steps >= 50, (iterations, k, steps)
    assert abs(steps - iterations) <= 5 * k or steps < 50 + 10 * k, (iterations, k, steps)
    # As benchmark_loop runs it: a log every tenth of the steps, a checkpoint at the end.
    log_every = run._log_every(steps)  # pylint: disable=protected-access
    sizes = train.dispatch_sizes(0, steps, k, (log_every, steps, 0))
    assert {n for _, n in sizes} == {k}, (iterations, k)
    assert len(sizes) >= 10


def test_a_case_whose_step_fails_is_reported_and_the_next_is_measured(tmp_path, monkeypatch):
  run = _benchmark('run')
  measured = dict(compile_s=1.0, steps_per_dispatch=1, step_memory_mb=1, step_iterations_per_s=10.0,
                  step_ms=100.0, flops_per_iteration=1e9, achieved_gflop_per_s=10.0,
                  pipeline_batches_per_s=100.0)
  calls = []

  def benchmark_step(config, seconds):
    del config, seconds
    calls.append(1)
    if len(calls) == 1:
      raise RuntimeError('RESOURCE_EXHAUSTED: out of memory\nwhile compiling')
    return dict(measured)

  monkeypatch.setattr(run, 'benchmark_step', benchmark_step)
  monkeypatch.setattr(run, 'matmul_rate', lambda seconds: 1e11)
  monkeypatch.setattr(run, 'device_name', lambda: 'gpu-1x-H200')
  flags_before = run.FLAGS.flag_values_dict()
  run.FLAGS.unparse_flags()
  run.FLAGS(['run.py', '--cases=M=2', f'--out_dir={tmp_path}', '--seconds=0.1'])
  try:
    run.main([])
  finally:
    run.FLAGS.unparse_flags()
    for name in ('cases', 'out_dir', 'seconds'):
      setattr(run.FLAGS, name, flags_before[name])
  text = (tmp_path / 'gpu-1x-H200-subset.md').read_text()
  assert ('- MultiMNIST M=2 factorized: the step failed: RuntimeError: RESOURCE_EXHAUSTED: out of '
          'memory\n') in text
  assert text.count('| MultiMNIST M=2 factorized |') == 1
  assert '| MultiMNIST M=2 factorized | – | – |' in text
  assert '| MultiMNIST M=2 monolithic | 1.0 | 10.0 |' in text
  assert 'Incomplete' not in text
  results = json.loads((tmp_path / 'gpu-1x-H200-subset.json').read_text())['results']
  assert [('step_error' in r, r.get('step_iterations_per_s')) for r in results] == [
      (True, None), (False, 10.0)]


def _hlo(f, *args):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.jit(f).lower(*args).compile().as_text()


def test_matmul_flops_count_as_pytorch_counts_the_reference():
  """Every product of a compiled program counted as torch.utils.flop_counter counts it: 2 per
  multiply-add of every window tap, padding included; a transposed convolution over its input."""
  run = _benchmark('run')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dn = ('NHWC', 'HWIO', 'NHWC')
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                                   dimension_numbers=dn)
  x, k, g = jnp.ones((8, 16, 16, 32)), jnp.ones((4, 4, 32, 64)), jnp.ones((8, 8, 8, 64))
  # torch: batch * output positions * out channels * kernel taps * in channels * 2
  strided = 2 * 8 * 8 * 8 * 64 * 16 * 32
  compiled = jax.jit(conv).lower(x, k).compile()
  assert run.matmul_flops(compiled.as_text()) == strided
  # XLA's own count leaves out the taps over the padding: not comparable with torch's.
  assert compiled.cost_analysis()['flops'] < strided
  # The gradients, whatever form XLA gives them: each as many FLOPs as the forward pass.
  kernel_grad = lambda x, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0]
  input_grad = lambda k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0]
  assert run.matmul_flops(_hlo(kernel_grad, x, g)) == strided
  assert run.matmul_flops(_hlo(input_grad, k, g)) == strided
  # A transposed convolution: torch counts batch * input positions * kernel size * 2.
  transposed = lambda y, k: jax.lax.conv_transpose(y, k, (2, 2), ((2, 2), (2, 2)),
                                                   dimension_numbers=dn)
  y = jnp.ones((8, 4, 4, 128))
  assert jax.eval_shape(transposed, y, jnp.ones((4, 4, 128, 64))).shape == (8, 8, 8, 64)
  assert run.matmul_flops(_hlo(transposed, y, jnp.ones((4, 4, 128, 64)))) == (
      2 * 8 * 4 * 4 * 128 * 64 * 16)
  # Matmuls, batched ones and several in one program (summed), elementwise work not counted.
  a, b = jnp.ones((64, 300)), jnp.ones((300, 40))
  both = lambda a, b, c, d: (jnp.tanh(a @ b), jnp.einsum('bij,bjk->bik', c, d))
  assert run.matmul_flops(_hlo(both, a, b, jnp.ones((3, 5, 7)), jnp.ones((3, 7, 2)))) == (
      2 * 64 * 300 * 40 + 2 * 3 * 5 * 7 * 2)
  assert run.matmul_flops(_hlo(jnp.tanh, a)) == 0
  # Matrix-vector products (the power iterations) are left out, as torch leaves out aten.mv.
  assert run.matmul_flops(_hlo(lambda a, v: a @ v, a, jnp.ones(300))) == 0
  # Grouped convolutions (depthwise here: 32 groups) and a transposed convolution whose output is
  # not stride x input: the values torch 2.13's FlopCounterMode gives for the same calls.
  depthwise = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=dn, feature_group_count=32)
  assert run.matmul_flops(_hlo(depthwise, x, jnp.ones((3, 3, 1, 32)))) == 1179648
  grouped = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=4)
  assert run.matmul_flops(_hlo(grouped, x, jnp.ones((3, 3, 8, 64)))) == 4718592
  valid = lambda y, k: jax.lax.conv_transpose(y, k, (2, 2), 'VALID', dimension_numbers=dn)
  assert run.matmul_flops(_hlo(valid, jnp.ones((8, 5, 5, 16)), jnp.ones((3, 3, 16, 24)))) == 1382400


def test_matmul_flops_give_no_count_for_products_in_loops():
  """A loop's trip count is not in the text: no count rather than a wrong one; a loop without
  products (the sampler's cycle walking, say) does not stop the count."""
  run = _benchmark('run')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a, b = jnp.ones((64, 300)), jnp.ones((300, 300))
  scanned = lambda a, b: jax.lax.scan(lambda c, _: (jnp.tanh(c @ b), None), a, None, length=5)[0]
  assert run.matmul_flops(_hlo(scanned, a, b)) is None
  branch = lambda a, b: jax.lax.cond(a[0, 0] > 0, lambda: a @ b, lambda: a)
  assert run.matmul_flops(_hlo(branch, a, b)) is None
  counted = lambda a, b: jax.lax.while_loop(lambda c: c[0, 0] < 100, lambda c: c * 2 + 1, a) @ b
  assert run.matmul_flops(_hlo(counted, a, b)) == 2 * 64 * 300 * 300


def test_the_reference_count_of_flops_reaches_the_table(tmp_path):
  run = _benchmark('run')
  python = tmp_path / 'python'  # stands in for a Python with torch running reference_step.py
  python.write_text('#!/bin/sh\necho "FactorModel\'s parameters initialized: 1"\necho \'{"ms_per_'
                    'iteration": 125.0, "iterations_per_s": 8.0, "gflop_per_iteration": 6.01, '
                    '"torch": "2.13.0+cpu", "device": "cpu"}\'\n')
  python.chmod(0o755)
  record = run.benchmark_reference('multimnist', small_config('multimnist', 'modalities=2'),
                                   str(tmp_path), str(python), seconds=1)
  assert record['reference_gflop_per_iteration'] == 6.01
  record.update(case='M=2', matmul_gflop_per_iteration=5.35, gflop_per_iteration=5.55)
  header, _, row = run._table([record]).splitlines()  # pylint: disable=protected-access
  cells = dict(zip(header.split(' | '), row.split(' | ')))
  assert (cells['GFLOP/it'], cells['matmul GFLOP/it as torch counts'],
          cells['reference GFLOP/it']) == ('5.55', '5.35', '6.01')
  last = run._table([{'case': 'M=4', 'matmul_gflop_per_iteration': None}]).splitlines()[-1]  # pylint: disable=protected-access
  assert 'None' not in last and ' – ' in last


def test_matmul_flops_give_no_count_where_a_library_call_computes_a_product():
  run = _benchmark('run')
  hlo = ('ENTRY %main (a: f32[64,300], b: f32[300,40]) -> f32[64,40] {\n'
         '  %a = f32[64,300]{1,0} parameter(0)\n  %b = f32[300,40]{1,0} parameter(1)\n'
         '  ROOT %c = f32[64,40]{1,0} custom-call(%a, %b), custom_call_target="__onednn$matmul"\n}')
  assert run.matmul_flops(hlo) is None
  assert run.matmul_flops(hlo.replace('__onednn$matmul', 'some_other_call')) == 0
  assert run.matmul_flops(hlo.replace('custom-call(%a, %b), custom_call_target="__onednn$matmul"',
                                      'dot(%a, %b), lhs_contracting_dims={1}, '
                                      'rhs_contracting_dims={0}')) == 2 * 64 * 300 * 40
