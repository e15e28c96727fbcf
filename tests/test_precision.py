"""TF32 emulation: operands rounded as TF32 tensor cores round them, in every matmul of a step."""
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from mmali_jax import precision
from tests.conftest import small_config
from tests.test_train import _run_steps


def test_round_to_tf32_keeps_ten_mantissa_bits_rounding_to_nearest_even():
  ulp = 2.0 ** -10  # TF32's spacing just above 1
  x = jnp.asarray([1 + ulp / 2, 1 + 1.5 * ulp, 1 + ulp / 2 + 2.0 ** -20, 1 + ulp, -3.0,
                   1e-30, 2.0 ** 100], jnp.float32)
  expected = [1.0, 1 + 2 * ulp, 1 + ulp, 1 + ulp, -3.0, np.float32(1e-30), 2.0 ** 100]
  rounded = np.asarray(precision.round_to_tf32(x))
  np.testing.assert_array_equal(rounded[:5], np.asarray(expected[:5], np.float32))
  # Float32's exponent range is kept; tiny and huge values keep 10 bits of mantissa.
  np.testing.assert_allclose(rounded[5:], expected[5:], rtol=2.0 ** -11)
  assert np.all(np.asarray(jax.lax.bitcast_convert_type(precision.round_to_tf32(
      jax.random.normal(jax.random.PRNGKey(0), (1000,))), jnp.uint32)) & 0x1FFF == 0)


def _operands(seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(keys[0], (8, 16)), jax.random.normal(keys[1], (16, 4)),
          jax.random.normal(keys[2], (2, 6, 6, 3)))


def test_every_matmul_and_convolution_takes_rounded_operands():
  """Dots and convolutions at the top level, inside a jitted helper, a custom-derivative
  function and a scan: the emulated function equals the function of pre-rounded operands."""
  r = precision.round_to_tf32
  kernel = jax.random.normal(jax.random.PRNGKey(5), (3, 3, 3, 2))

  @jax.jit
  def helper(a, b):
    return a @ b

  def conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def fn(a, b, x):
    y = jax.nn.relu(helper(a, b))  # relu: a custom_jvp function around its input
    carry, _ = lax.scan(lambda c, _: (c @ b @ b.T, None), a, length=2)
    return y, carry, conv(x, kernel)

  def by_hand(a, b, x):
    y = jax.nn.relu(r(a) @ r(b))
    c = a
    for _ in range(2):
      c = r(r(c) @ r(b)) @ r(b.T)
    return y, c, conv(r(x), r(kernel))

  a, b, x = _operands()
  with jax.default_matmul_precision('highest'):
    emulated = jax.jit(precision.emulate_tf32(fn))(a, b, x)
    expected = jax.jit(by_hand)(a, b, x)
    exact = jax.jit(fn)(a, b, x)
  for e, h, f in zip(emulated, expected, exact):
    np.testing.assert_array_equal(e, h)
    assert np.max(np.abs(np.asarray(e) - np.asarray(f))) > 0  # the rounding is visible


def test_gradient_matmuls_are_rounded_too():
  """As on TF32 hardware, the backward matmuls round the cotangent and the saved operand."""
  r = precision.round_to_tf32
  a, b, _ = _operands(1)
  grad = lambda a, b: jax.grad(lambda b: jnp.sum((a @ b) ** 2))(b)
  with jax.default_matmul_precision('highest'):
    emulated = jax.jit(precision.emulate_tf32(grad))(a, b)
    cotangent = 2.0 * (r(a) @ r(b))
    expected = jax.jit(lambda a, g: r(a).T @ r(g))(a, cotangent)
  np.testing.assert_array_equal(emulated, expected)


def test_training_step_with_emulated_tf32_stays_close_to_float32():
  config = small_config('multimnist', 'modalities=2')
  exact_state, exact_metrics = _run_steps(config, [1, 1])
  config.matmul_precision = precision.EMULATED_TF32
  tf32_state, tf32_metrics = _run_steps(config, [1, 1])
  for name, value in exact_metrics[-1].items():
    np.testing.assert_allclose(tf32_metrics[-1][name], value, rtol=1e-2, atol=1e-3,
                               err_msg=name)
  diffs = [np.max(np.abs(np.asarray(x) - np.asarray(y))) for x, y in zip(
      jax.tree.leaves(exact_state.gen_params), jax.tree.leaves(tf32_state.gen_params))]
  assert max(diffs) > 0  # TF32 rounding changed the computation
