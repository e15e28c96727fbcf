"""The profile's bookkeeping: where an operation belongs, how busy the threads were."""
import importlib.util

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope='module')
def profile_step():
  spec = importlib.util.spec_from_file_location('profile_step',
                                                ROOT / 'benchmarks' / 'profile_step.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
  assert instructions['copy.2'][1:] == ('copy', '', False)
  kind = profile_step._kind  # pylint: disable=protected-access
  assert kind('fusion', True) == 'matmuls and convolutions'
  assert kind('copy', False) == 'copies and transposes'


def test_busy_threads_counts_overlap_and_nesting(profile_step):
  # Thread a runs 0-10 (with a nested event 2-4), thread b 5-15 and 19-20: one thread is busy
  # 0-5, 10-15 and 19-20, both 5-10, none 15-19.
  events = [('a', 0, 10, 'x'), ('a', 2, 4, 'nested'), ('b', 5, 15, 'y'), ('b', 19, 20, 'z')]
  shares = profile_step._busy_threads(events)  # pylint: disable=protected-access
  assert shares == {'0': pytest.approx(0.2), '1': pytest.approx(0.55),
                    '2 or more': pytest.approx(0.25)}
