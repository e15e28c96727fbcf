"""PyTorch-style convolutions (kernel k, stride s, padding p) on NHWC images, fast on XLA:CPU.

`Conv` and `ConvTranspose` hold the same parameters as `flax.linen.Conv` / `ConvTranspose`
(kernel [k, k, in, out] and bias, created in that order, so they initialise identically) and
compute the same function. On accelerators they call XLA's convolutions. On CPU, XLA runs
strided convolutions' input gradients and transposed convolutions' kernel gradients as
convolutions over zero-dilated inputs, about 4 times the arithmetic and many times the time of
the rest (docs/algorithm.md §6.1 has the measurements), so there those sums are computed
otherwise:

- stride 2, even k: pad, space-to-depth (2x2 blocks become channels), then a stride-1 k/2 x k/2
  convolution, done as one matmul over its k/2 * k/2 shifted windows; with many input channels
  only the input gradient takes this form (XLA's own strided forward and kernel gradient are
  faster there);
- a k x k window over a k x k input (the last encoder layer): one matmul;
- transposed, stride 2, k = 4: XLA's forward and input gradient; the kernel gradient as that of
  a strided convolution of the output gradient (XLA's own runs over a zero-dilated input);
- transposed, 1x1 input (the first decoder layer): one matmul with the spatially flipped kernel.

Only the order of the float additions differs from XLA's convolutions.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
# Below this many input channels, stride-2 convolutions run as matmuls in both directions.
_MATMUL_FORWARD_MAX_CHANNELS = 16


def _use_matmuls(impl):
  if impl not in ('auto', 'xla', 'matmul'):
    raise ValueError(f"Unknown convolution implementation {impl!r}: 'auto', 'xla' or 'matmul'.")
  return impl == 'matmul' or (impl == 'auto' and jax.default_backend() == 'cpu')


def _windows_matmul(x, kernel):
  """Stride-1 VALID convolution as one matmul over the shifted windows of x."""
  kh, kw, c, o = kernel.shape
  b, h, w, _ = x.shape
  ho, wo = h - kh + 1, w - kw + 1
  cols = jnp.concatenate([x[:, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)],
                         axis=-1)
  return (cols.reshape(-1, kh * kw * c) @ kernel.reshape(kh * kw * c, o)).reshape(b, ho, wo, o)


def _xla_conv(x, kernel, stride, padding):
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                  dimension_numbers=_DIMENSIONS)


def _space_to_depth_conv(x, kernel, padding):
  """A stride-2 convolution (even k) as space-to-depth and one stride-1 windows matmul."""
  k, _, c, o = kernel.shape
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  b, h, w, _ = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2,
                                                                              4 * c)
  # kernel[2i + a, 2j + b, c] applies to block (i, j), channel (a, b, c).
  kernel = kernel.reshape(k // 2, 2, k // 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
  return _windows_matmul(x, kernel.reshape(k // 2, k // 2, 4 * c, o))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _strided_conv(x, kernel, padding):
  """A stride-2 convolution whose input gradient avoids XLA's dilated convolution: XLA's strided
  convolution forward and for the kernel gradient (fast on CPU when channels are many), the
  space-to-depth matmul for the input gradient."""
  return _xla_conv(x, kernel, 2, padding)


def _strided_conv_fwd(x, kernel, padding):
  return _xla_conv(x, kernel, 2, padding), (x, kernel)


def _strided_conv_bwd(padding, residuals, grad):
  x, kernel = residuals
  _, kernel_vjp = jax.vjp(lambda k: _xla_conv(x, k, 2, padding), kernel)
  _, x_vjp = jax.vjp(lambda v: _space_to_depth_conv(v, kernel, padding), x)
  return x_vjp(grad)[0], kernel_vjp(grad)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def conv2d(x, kernel, stride, padding, impl='auto'):
  """torch.nn.functional.conv2d(x, kernel, stride=stride, padding=padding) in NHWC / HWIO."""
  k, _, c, o = kernel.shape
  b, h, w, _ = x.shape
  if _use_matmuls(impl):
    if stride == 1 and padding == 0 and (h, w) == (k, k):
      return (x.reshape(b, k * k * c) @ kernel.reshape(k * k * c, o)).reshape(b, 1, 1, o)
    if stride == 2 and k % 2 == 0 and (h + 2 * padding) % 2 == 0 and (w + 2 * padding) % 2 == 0:
      # Measured on a 2-core Xeon: with few input channels the matmul wins everywhere; with
      # more, XLA's strided forward and kernel gradient are faster, its input gradient is not.
      if c < _MATMUL_FORWARD_MAX_CHANNELS:
        return _space_to_depth_conv(x, kernel, padding)
      return _strided_conv(x, kernel, padding)
  return _xla_conv(x, kernel, stride, padding)


def conv_transpose2d(x, kernel, stride, padding, impl='auto'):
  """torch.nn.ConvTranspose2d(k, s, p) in NHWC, with flax.linen.ConvTranspose's kernel layout
  (no spatial flip, i.e. lax.conv_transpose with padding k - 1 - p): output (in - 1) s - 2p + k."""
  k, _, c, o = kernel.shape
  b, h, w, _ = x.shape
  if _use_matmuls(impl):
    if stride == 1 and padding == 0 and (h, w) == (1, 1):
      # Only the kernel taps that meet the single input pixel remain, in flipped order.
      flipped = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(c, k * k * o)
      return (x.reshape(b, c) @ flipped).reshape(b, k, k, o)
    if stride == 2 and k == 4 and padding == 1:
      return _transposed_conv(x, kernel)
  return _xla_conv_transpose(x, kernel, stride, padding)


def _xla_conv_transpose(x, kernel, stride, padding):
  pad = kernel.shape[0] - 1 - padding
  return lax.conv_transpose(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                            dimension_numbers=_DIMENSIONS)


@jax.custom_vjp
def _transposed_conv(x, kernel):
  """The transposed convolution k = 4, stride 2, padding 1 with XLA's forward and input gradient
  (a strided convolution). Its kernel gradient, which XLA computes over a zero-dilated input
  (10-60 times slower), is taken from a strided convolution of the output gradient instead:
  dW[a, b, c, o] = sum x[n, i, j, c] g[n, 2i + 2 - a, 2j + 2 - b, o] is the kernel gradient
  dK[3 - a, 3 - b, o, c] of conv(g, K, stride 2, padding 1) for the output gradient x."""
  return _xla_conv_transpose(x, kernel, 2, 1)


def _transposed_conv_fwd(x, kernel):
  return _xla_conv_transpose(x, kernel, 2, 1), (x, kernel)


def _transposed_conv_bwd(residuals, grad):
  x, kernel = residuals
  _, x_vjp = jax.vjp(lambda v: _xla_conv_transpose(v, kernel, 2, 1), x)
  swapped = jnp.zeros(kernel.shape[:2] + kernel.shape[:1:-1], kernel.dtype)  # [4, 4, out, in]
  _, swapped_vjp = jax.vjp(lambda k: _xla_conv(grad, k, 2, 1), swapped)
  kernel_grad = swapped_vjp(x)[0][::-1, ::-1].transpose(0, 1, 3, 2)
  return x_vjp(grad)[0], kernel_grad


_transposed_conv.defvjp(_transposed_conv_fwd, _transposed_conv_bwd)


class Conv(nn.Module):
  """nn.Conv2d(k, s, p) of PyTorch; parameters as flax.linen.Conv."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    return conv2d(x, kernel, self.stride, self.padding, self.impl) + bias


class ConvTranspose(nn.Module):
  """nn.ConvTranspose2d(k, s, p) of PyTorch; parameters as flax.linen.ConvTranspose."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    return conv_transpose2d(x, kernel, self.stride, self.padding, self.impl) + bias
