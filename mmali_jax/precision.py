"""The float32 matmul precision of the training step, and TF32 emulated where no hardware has it.

`config.matmul_precision` is JAX's precision of float32 matmuls and convolutions ('highest':
full float32, the default; 'tensorfloat32', 'bfloat16', ...: what the accelerator offers).
`'tensorfloat32_emulated'` computes, on any backend, what TF32 tensor cores compute: every float32
matmul and convolution of the step (forward, backward and spectral-norm power iterations alike)
takes its operands rounded to TF32's 10-bit mantissa (to nearest, ties to even) and accumulates in
float32. It measures TF32's effect on training where no TF32 hardware is at hand (docs/algorithm.md
§5.3); it is slower than either, not a way to train faster.

Evaluation always computes in full float32 (`evaluation`).
"""
import contextlib

import jax
from jax import lax
from jax.extend import core
import jax.numpy as jnp

EMULATED_TF32 = 'tensorfloat32_emulated'
_MATMULS = (lax.dot_general_p, lax.conv_general_dilated_p)
# Primitives whose body is evaluated in place: the step is not differentiated again, so a
# custom derivative rule's primal is all that is needed.
_INLINED = {'pjit': 'jaxpr', 'closed_call': 'call_jaxpr', 'core_call': 'call_jaxpr',
            'custom_jvp_call': 'call_jaxpr', 'custom_vjp_call': 'call_jaxpr', 'remat2': 'jaxpr'}


@contextlib.contextmanager
def evaluation():
  """The precision of everything that measures a model (the evaluators, the coherence
  classifiers' training and predictions): full float32 on every backend, whatever the run trained
  with. JAX's own default computes float32 matmuls in TF32 on recent GPUs and in bfloat16 passes
  on TPU, so a checkpoint's metrics would depend on the machine that evaluated it. A context
  manager, or a decorator."""
  with jax.default_matmul_precision('highest'):
    yield


def jax_precision(name):
  """The precision JAX is given: the emulation rounds operands itself and accumulates in float32."""
  return 'highest' if name == EMULATED_TF32 else name


def round_to_tf32(x):
  """float32 -> the nearest float32 with TF32's 8 exponent and 10 mantissa bits."""
  return lax.reduce_precision(x, exponent_bits=8, mantissa_bits=10)


def emulate_tf32(fn):
  """fn(*arrays) with every float32 matmul and convolution it computes, including those inside
  loops, conditionals and called functions, taking TF32-rounded operands."""

  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return wrapped


def _transformed(closed):
  """A ClosedJaxpr computing the same function with rounded matmul operands."""
  avals = [v.aval for v in closed.jaxpr.invars]
  return jax.make_jaxpr(lambda *a: _evaluate(closed.jaxpr, closed.consts, a))(*avals)


def _transform_param(value):
  if isinstance(value, core.ClosedJaxpr):
    return _transformed(value)
  if isinstance(value, core.Jaxpr):
    new = _transformed(core.ClosedJaxpr(value, ()))
    if new.consts:
      raise NotImplementedError('TF32 emulation: a sub-computation captured constants.')
    return new.jaxpr
  if isinstance(value, tuple) and value and all(isinstance(v, core.ClosedJaxpr) for v in value):
    return tuple(_transformed(v) for v in value)
  return value


def _evaluate(jaxpr, consts, args):
  env = {}

  def read(var):
    return var.val if isinstance(var, core.Literal) else env[var]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    primitive, params = eqn.primitive, eqn.params
    if primitive in _MATMULS:
      inputs = [round_to_tf32(x) if jnp.result_type(x) == jnp.float32 else x for x in inputs]
      outputs = primitive.bind(*inputs, **params)
    elif primitive.name in _INLINED:
      body = params[_INLINED[primitive.name]]
      if isinstance(body, core.Jaxpr):
        body = core.ClosedJaxpr(body, ())
      outputs = _evaluate(body.jaxpr, body.consts, inputs)
    else:
      outputs = primitive.bind(*inputs, **{k: _transform_param(v) for k, v in params.items()})
    if not primitive.multiple_results and primitive.name not in _INLINED:
      outputs = [outputs]
    for var, value in zip(eqn.outvars, outputs):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]
