"""Encoders, similarity heads and the Siamese network that ties them together.

The Siamese network runs its encoder ONCE over both images of every pair: the pair batch
[B, 2, H, W, C] is reshaped to [2B, H, W, C] (which keeps a batch sharded along B sharded, each device
holding both images of its own pairs), embedded in one batched call, and reshaped back.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from siamese_jax import distances, registry

Dtype = Any


def normal_init(mean: float, stddev: float):
  """N(mean, stddev^2) initialiser (Koch et al. give biases a mean of 0.5)."""

  def init(key, shape, dtype=jnp.float32):
    return mean + stddev * jax.random.normal(key, shape, dtype)

  return init


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 over [N, H, W, C] (an odd last row or column is dropped, as VALID does).

  Written as a reshape and a max rather than `nn.max_pool`: the same values, and on XLA:CPU the
  gradient of a plain reduction runs about twice as fast as the `reduce_window` one (BENCHMARKS.md).
  Gradients agree with `nn.max_pool` except where a window holds equal maxima, which share it here.
  """
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _kernel_spectrum(kernel: jax.Array, height: int, width: int) -> jax.Array:
  """The real 2-D FFT of the flipped kernel [kh, kw, C, F] zero-padded to height x width.

  Returns [height, width // 2 + 1, C * F]. Computed as products with the kh and kw DFT columns the taps
  reach rather than as FFTs of maps that are almost all zeros: Koch's 7x7 layer, forward and gradients,
  took 1.3 s instead of 1.7 s this way (a loaded machine).
  """
  kh, kw = kernel.shape[:2]
  taps = jnp.flip(kernel, (0, 1)).reshape(kh, kw, -1)

  def dft(frequencies, columns, size):  # cos and sin of 2 pi u a / size
    angles = 2 * np.pi * np.outer(np.arange(frequencies), np.arange(columns)) / size
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)

  cos_h, sin_h = dft(height, kh, height)
  cos_w, sin_w = dft(width // 2 + 1, kw, width)
  rows_cos = jnp.einsum('ua,abm->ubm', cos_h, taps)
  rows_sin = jnp.einsum('ua,abm->ubm', sin_h, taps)
  columns = lambda matrix, rows: jnp.einsum('vb,ubm->uvm', matrix, rows)
  real = columns(cos_w, rows_cos) - columns(sin_w, rows_sin)  # e^-i(a+b) = cos a cos b - sin a sin b - i(...)
  imag = -(columns(sin_w, rows_cos) + columns(cos_w, rows_sin))
  return lax.complex(real, imag)


def fft_conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A VALID, stride-1 convolution of x [N, H, W, C] with kernel [kh, kw, C, F] (float32), by the FFT.

  The product of the image's and the kernel's spectra at each of the H x (W // 2 + 1) frequencies is a
  [N, C] x [C, F] complex matrix product; the valid outputs are the circular convolution's that do not
  wrap. For large kernels this is far less arithmetic than the direct convolution (Koch's 7x7 layer:
  2.5 billion real multiply-adds at batch 64 instead of 45), and its gradients, which JAX derives, are
  the same FFTs and products. Equal to XLA's convolution to float tolerance.
  """
  n, height, width, channels = x.shape
  kh, kw, _, features = kernel.shape
  half_width = width // 2 + 1  # the real FFT's columns
  frequencies = height * half_width
  spectrum = jnp.fft.rfft2(x, axes=(1, 2)).transpose(1, 2, 0, 3).reshape(frequencies, n, channels)
  weights = _kernel_spectrum(kernel, height, width).reshape(frequencies, channels, features)
  product = jnp.einsum('tnc,tcf->tnf', spectrum, weights)
  product = product.reshape(height, half_width, n, features).transpose(2, 0, 1, 3)
  return jnp.fft.irfft2(product, s=(height, width), axes=(1, 2))[:, kh - 1:, kw - 1:]


# Input and output elements of the images in one batch slice of a kernel gradient (about 1 MB in float32).
KERNEL_GRAD_SLICE_ELEMENTS = 2 ** 18


def conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated` whose kernel gradient is summed over slices of the batch on the CPU.

  XLA:CPU computes a kernel gradient as one convolution over the whole batch, and for small maps and
  many images that runs far below its matrix-product speed: the 64->64 3x3 layer on 14x14 maps at batch
  200 took 75-200 ms, against about 40 ms in slices of 10 images (BENCHMARKS.md). Each slice holds
  about `KERNEL_GRAD_SLICE_ELEMENTS` input and output elements. Values and the input gradient are XLA's
  own; accelerators keep XLA's convolution throughout.
  """
  conv = lambda x, kernel: lax.conv_general_dilated(x, kernel, window_strides, padding, **kwargs)
  if jax.default_backend() != 'cpu':
    return conv(lhs, rhs)
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs.get('dimension_numbers'))
  out_shape = jax.eval_shape(conv, lhs, rhs).shape
  batch, out_batch = numbers.lhs_spec[0], numbers.out_spec[0]
  per_image = (math.prod(lhs.shape) // lhs.shape[batch]) + (math.prod(out_shape) // out_shape[out_batch])
  rows = max(1, KERNEL_GRAD_SLICE_ELEMENTS // per_image)
  if rows >= lhs.shape[batch]:
    return conv(lhs, rhs)

  @jax.custom_vjp
  def sliced(x, kernel):
    return conv(x, kernel)

  def forward(x, kernel):
    return conv(x, kernel), (x, kernel)

  def backward(saved, grad):
    x, kernel = saved
    (x_grad,) = jax.vjp(lambda x: conv(x, kernel), x)[1](grad)
    kernel_grad = jnp.zeros(kernel.shape, jnp.float32)
    for start in range(0, x.shape[batch], rows):
      x_part = lax.slice_in_dim(x, start, min(start + rows, x.shape[batch]), axis=batch)
      grad_part = lax.slice_in_dim(grad, start, min(start + rows, x.shape[batch]), axis=out_batch)
      (part,) = jax.vjp(lambda kernel: conv(x_part, kernel), kernel)[1](grad_part)
      kernel_grad = kernel_grad + part.astype(jnp.float32)
    return x_grad, kernel_grad.astype(kernel.dtype)

  sliced.defvjp(forward, backward)
  return sliced(lhs, rhs)


# Winograd's minimal filtering F(4x4, 3x3) (Lavin and Gray, 2016): each 6x6 input tile and the 3x3 kernel
# are transformed, multiplied elementwise (36 products per channel pair for 16 outputs, against 144) and
# the product transformed back to a 4x4 output tile. In two dimensions each transform is a Kronecker square.
_WINOGRAD_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float32)
_WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                        np.float32)
_WINOGRAD_INPUT = np.kron(_WINOGRAD_BT, _WINOGRAD_BT)  # [36, 36]
_WINOGRAD_KERNEL = np.kron(_WINOGRAD_G, _WINOGRAD_G)  # [36, 9]
_WINOGRAD_OUTPUT = np.kron(_WINOGRAD_AT, _WINOGRAD_AT)  # [16, 36]

# Input channels from which a SAME 3x3 layer runs by Winograd's algorithm on the CPU (see `Conv`).
WINOGRAD_MIN_CHANNELS = 128


def _winograd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
  """SAME 3x3 convolution of x [N, H, W, C] (H, W multiples of 4) by F(4x4, 3x3); also the transformed tiles."""
  n, h, w, c = x.shape
  f = kernel.shape[-1]
  rows, cols = h // 4, w // 4
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  tiles = jnp.stack([jnp.stack([padded[:, 4 * i:4 * i + 6, 4 * j:4 * j + 6] for j in range(cols)], 1)
                     for i in range(rows)], 1)  # [N, rows, cols, 6, 6, C]
  tiles = tiles.transpose(3, 4, 0, 1, 2, 5).reshape(36, -1)
  tiles = (_WINOGRAD_INPUT @ tiles).reshape(36, n * rows * cols, c)
  weights = (_WINOGRAD_KERNEL @ kernel.reshape(9, c * f)).reshape(36, c, f)
  products = jnp.einsum('tnc,tcf->tnf', tiles, weights).reshape(36, -1)
  y = (_WINOGRAD_OUTPUT @ products).reshape(4, 4, n, rows, cols, f)
  return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, h, w, f), tiles


@jax.custom_vjp
def winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """SAME, stride-1 3x3 convolution of x [N, H, W, C] (H and W multiples of 4) with kernel [3, 3, C, F].

  Computed with Winograd's F(4x4, 3x3): 2.25x fewer multiplications than the direct convolution, all of
  them in 36 batched matrix products. Equal to XLA's convolution to float tolerance (the transforms'
  rounding: relative errors near 1e-5). The input gradient is the same construction on the flipped,
  transposed kernel; the kernel gradient is a product of the saved tiles and the transformed gradient.
  """
  return _winograd(x, kernel)[0]


def _winograd_forward(x, kernel):
  y, tiles = _winograd(x, kernel)
  return y, (tiles, kernel)


def _winograd_backward(saved, grad):
  tiles, kernel = saved
  n, h, w, f = grad.shape
  c = kernel.shape[2]
  x_grad = _winograd(grad, jnp.flip(kernel, (0, 1)).swapaxes(2, 3))[0]
  grad_tiles = grad.reshape(n, h // 4, 4, w // 4, 4, f).transpose(2, 4, 0, 1, 3, 5).reshape(16, -1)
  grad_tiles = (_WINOGRAD_OUTPUT.T @ grad_tiles).reshape(36, -1, f)
  weights_grad = jnp.einsum('tnc,tnf->tcf', tiles, grad_tiles).reshape(36, c * f)
  return x_grad, (_WINOGRAD_KERNEL.T @ weights_grad).reshape(3, 3, c, f)


winograd_conv3x3.defvjp(_winograd_forward, _winograd_backward)


# A VALID layer runs by the FFT on the CPU (see `Conv`) from this many input channels, kernel side and
# output side on: below them XLA's convolution was faster on every layer measured (BENCHMARKS.md).
FFT_MIN_CHANNELS = 8
FFT_MIN_KERNEL = 4
FFT_MIN_OUTPUT = 8


class Conv(nn.Conv):
  """`nn.Conv` with CPU formulations: kernel gradients summed over batch slices (`conv_general_dilated`),
  VALID stride-1 layers with large kernels by the FFT (`fft_conv_valid`), and SAME 3x3 layers on wide
  inputs by Winograd's algorithm (`winograd_conv3x3`).

  The FFT from `FFT_MIN_CHANNELS` input channels, kernels `FFT_MIN_KERNEL` wide and outputs
  `FFT_MIN_OUTPUT` wide: Koch's 7x7 layer (64->128 on 48x48 maps, batch 64, forward and both gradients)
  takes 1.0 s against 2.9 s, but a first layer (one input channel: 0.72 against 0.19 s for Koch's), 3x3
  kernels and 6x6 outputs lose. Winograd from 128 input channels, on maps whose sides are multiples of 4:
  there its three passes beat XLA's on every layer measured (256->512 on 4x4 maps at batch 200: 86 against
  165 ms), while on narrower inputs its transforms can cost more than the multiplications it saves (32->64
  on 16x16 maps: 87 against 43 ms). Both in float32 only. The parameters are nn.Conv's (same names and
  shapes), so checkpoints move freely between backends; accelerators keep XLA's convolution, which cuDNN
  and TPUs run well.
  """

  conv_general_dilated: Callable | None = conv_general_dilated

  @nn.compact
  def __call__(self, inputs):
    formulation = self._cpu_formulation(inputs)
    if formulation is None:
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init, tuple(self.kernel_size) + (inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = formulation(inputs, kernel)
    return y if bias is None else y + bias

  def _cpu_formulation(self, inputs) -> Callable | None:
    """This layer's formulation on the CPU, or None for XLA's convolution."""
    if (jax.default_backend() != 'cpu' or self.strides not in (1, None, (1, 1))
        or self.kernel_dilation not in (1, None, (1, 1)) or self.feature_group_count != 1 or inputs.ndim != 4
        or inputs.dtype != jnp.float32 or self.dtype not in (None, jnp.float32)):
      return None
    kernel_size, sides = tuple(self.kernel_size), inputs.shape[1:3]
    if (self.padding == 'VALID' and inputs.shape[-1] >= FFT_MIN_CHANNELS and min(kernel_size) >= FFT_MIN_KERNEL
        and min(side - k + 1 for side, k in zip(sides, kernel_size)) >= FFT_MIN_OUTPUT):
      return fft_conv_valid
    if (self.padding == 'SAME' and kernel_size == (3, 3) and inputs.shape[-1] >= WINOGRAD_MIN_CHANNELS
        and sides[0] % 4 == 0 and sides[1] % 4 == 0):
      return winograd_conv3x3
    return None


class GroupNorm(nn.Module):
  """`nn.GroupNorm` (same parameters, values to float tolerance) computed from per-channel sums.

  The statistics are sums over the positions of each channel, added up by group afterwards, and the
  normalisation is one scale and shift per image and channel. Flax reduces over a [N, ..., G, C/G] view
  whose group axis sits between the reduced ones; on XLA:CPU that reduction and its gradient took 45 ms
  of a 32->32 layer at batch 200 on 32x32 maps against 14 ms this way (BENCHMARKS.md).
  """

  num_groups: int
  epsilon: float = 1e-6
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f'GroupNorm: {channels} channels do not split into {self.num_groups} groups')
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    per_group = channels // self.num_groups
    x32 = x.astype(jnp.float32)
    flat = x32.reshape(x.shape[0], -1, channels)
    count = flat.shape[1] * per_group
    group_sum = lambda values: values.sum(1).reshape(-1, self.num_groups, per_group).sum(-1)  # [N, G]
    mean = group_sum(flat) / count
    variance = jnp.maximum(group_sum(flat * flat) / count - mean * mean, 0.0)  # Flax's fast variance
    per_channel = lambda values: jnp.repeat(values, per_group, axis=1)  # [N, G] -> [N, C]
    multiplier = per_channel(lax.rsqrt(variance + self.epsilon)) * scale
    shift = bias - per_channel(mean) * multiplier
    expand = (x.shape[0],) + (1,) * (x.ndim - 2) + (channels,)
    y = x32 * multiplier.reshape(expand) + shift.reshape(expand)
    return y.astype(self.dtype or x.dtype)


class ConvTower(nn.Module):
  """Koch et al. (2015)'s convolutional tower, with the paper's initialisation.

  conv(64@10x10) - pool - conv(128@7x7) - pool - conv(128@4x4) - pool - conv(256@4x4) - dense(4096,
  sigmoid). Convolution weights ~ N(0, 1e-2), all biases ~ N(0.5, 1e-2), dense weights ~ N(0, 0.2).
  Smaller towers (for tests and small images) change the widths and kernel sizes. With `koch=False`
  the same tower uses Flax's default initialisation and a linear embedding, which suits the metric
  losses (a sigmoid bounds every distance).
  """

  features: Sequence[int] = (64, 128, 128, 256)
  kernel_sizes: Sequence[int] = (10, 7, 4, 4)
  embedding_dim: int = 4096
  koch: bool = True  # the paper's initialisation and sigmoid embedding; False: Flax's defaults, linear
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    inits = {}
    if self.koch:
      inits = dict(kernel_init=normal_init(0.0, 1e-2), bias_init=normal_init(0.5, 1e-2))
    for i, (features, size) in enumerate(zip(self.features, self.kernel_sizes)):
      x = Conv(features, (size, size), padding='VALID', dtype=self.dtype, name=f'conv{i}', **inits)(x)
      x = nn.relu(x)
      if i < len(self.features) - 1:
        x = max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    if self.koch:
      inits['kernel_init'] = normal_init(0.0, 0.2)
    x = nn.Dense(self.embedding_dim, dtype=self.dtype, name='embedding', **inits)(x)
    return nn.sigmoid(x) if self.koch else x


# How ConvBlocks pools its last map: '2x2' as every block does (on 28 px the 3x3 map then keeps only its
# top-left 2x2), or 'max' / 'mean' over the whole map.
FINAL_POOLS = {
    '2x2': max_pool_2x2,
    'max': lambda x: jnp.max(x, axis=(1, 2)),
    'mean': lambda x: jnp.mean(x, axis=(1, 2)),
}


class ConvBlocks(nn.Module):
  """Blocks of 3x3 convolution, normaliser, ReLU and 2x2 max-pool (Vinyals et al.'s and Snell et al.'s Conv4).

  On 28x28 images four blocks leave a 1x1 map as wide as the last block, which is the embedding when
  `embedding_dim` is 0; otherwise a linear layer maps the flattened map to `embedding_dim`. Widening only
  the last blocks, whose maps are 7x7 and 3x3, adds capacity for far less step time than widening all of
  them. The normaliser is GroupNorm (`norm_groups` groups; it keeps no statistics, so training and
  evaluation compute the same function and a checkpoint holds parameters only) or none (`norm_groups=0`).
  """

  features: Sequence[int] = (64, 64, 64, 64)
  embedding_dim: int = 0
  norm_groups: int = 8
  final_pool: str = '2x2'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    final_pool = registry.lookup(FINAL_POOLS, self.final_pool, 'model.final_pool')
    for i, features in enumerate(self.features):
      x = Conv(features, (3, 3), padding='SAME', use_bias=not self.norm_groups, dtype=self.dtype,
               name=f'conv{i}')(x)
      if self.norm_groups:
        x = GroupNorm(num_groups=self.norm_groups, dtype=self.dtype, name=f'norm{i}')(x)
      x = nn.relu(x)
      x = final_pool(x) if i == len(self.features) - 1 else max_pool_2x2(x)
    x = x.reshape((x.shape[0], -1))
    if self.embedding_dim:
      x = nn.Dense(self.embedding_dim, dtype=self.dtype, name='embedding')(x)
    return x


def resnet_norm_groups(width: int) -> int:
  """GroupNorm groups for a residual stage `width` channels wide: about four channels a group, at most 32
  groups, and always a divisor of the width, so that any stage width builds."""
  most = max(1, min(32, width // 4))
  return max(groups for groups in range(1, most + 1) if width % groups == 0)


class ResidualBlock(nn.Module):
  """Pre-activation residual block with GroupNorm (no batch statistics to carry in the state)."""

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    norm = lambda name: GroupNorm(num_groups=resnet_norm_groups(self.features), dtype=self.dtype, name=name)
    y = nn.relu(norm('norm0')(x))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False,
                         dtype=self.dtype, name='project')(y)
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False, dtype=self.dtype,
                name='conv0')(y)
    y = nn.relu(norm('norm1')(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype, name='conv1')(y)
    return shortcut + y


class ResNet(nn.Module):
  """A small ResNet for 32x32 images (CIFAR): stages of residual blocks, global pooling, projection."""

  stage_features: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 2
  embedding_dim: int = 128
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.stage_features[0], (3, 3), use_bias=False, dtype=self.dtype, name='stem')(x)
    for stage, features in enumerate(self.stage_features):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(features, strides, dtype=self.dtype, name=f'stage{stage}_block{block}')(x)
    x = nn.relu(GroupNorm(num_groups=resnet_norm_groups(x.shape[-1]), dtype=self.dtype, name='norm')(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.embedding_dim, dtype=self.dtype, name='embedding')(x)


class WeightedL1Head(nn.Module):
  """Koch's head: a learned weighting of |h1 - h2|, giving the logit of "same class"."""

  output_kind = 'logit'

  @nn.compact
  def __call__(self, e1, e2):
    logit = nn.Dense(1, kernel_init=normal_init(0.0, 0.2), bias_init=normal_init(0.5, 1e-2),
                     name='weights')(jnp.abs(e1 - e2).astype(jnp.float32))
    return logit[..., 0]


class EuclideanHead(nn.Module):
  """Euclidean distance between embeddings (no parameters), for the metric losses."""

  output_kind = 'distance'

  def __call__(self, e1, e2):
    return distances.euclidean(e1.astype(jnp.float32), e2.astype(jnp.float32))


class CosineHead(nn.Module):
  """Cosine distance, 1 - cos(e1, e2), in [0, 2]."""

  output_kind = 'distance'

  def __call__(self, e1, e2):
    return distances.cosine_distance(e1.astype(jnp.float32), e2.astype(jnp.float32))


class SiameseNet(nn.Module):
  """An encoder shared by both images of a pair, and a head that compares their embeddings."""

  encoder: nn.Module
  head: nn.Module
  # Project embeddings onto the unit sphere: distances are bounded by 2, so a margin means the same
  # thing throughout training and the metric losses cannot shrink or inflate the embedding scale.
  normalize: bool = False

  def embed(self, images):
    """Images (float, [N, H, W, C]) -> embeddings [N, D] in float32 (unit length if `normalize`)."""
    embeddings = self.encoder(images).astype(jnp.float32)
    return distances.unit_length(embeddings) if self.normalize else embeddings

  def compare(self, e1, e2):
    """The head's raw output for embedding pairs: a logit or a distance (see `output_kind`)."""
    return self.head(e1, e2)

  def compare_pairs(self, embeddings):
    """Embeddings [2B, D] of B pairs, each pair's two images adjacent -> head output [B]."""
    embeddings = embeddings.reshape((-1, 2, embeddings.shape[-1]))
    return self.compare(embeddings[:, 0], embeddings[:, 1])

  def __call__(self, pairs):
    """Pairs [B, 2, H, W, C] -> head output [B], both images embedded in one call."""
    return self.compare_pairs(self.embed(pairs.reshape((-1,) + pairs.shape[2:])))


def init_params(model: SiameseNet, image_shape, key):
  """Fresh parameters for images of `image_shape` (H, W, C), traced through one all-zero pair."""
  return model.init(key, jnp.zeros((1, 2) + tuple(image_shape), jnp.float32))['params']


def similarity(head_output, output_kind: str):
  """A score where higher means more alike, whatever the head returns."""
  return head_output if output_kind == 'logit' else -head_output


def _resnet(*, features, blocks_per_stage, embedding_dim, dtype) -> ResNet:
  """The ResNet whose stages are `model.features` wide."""
  return ResNet(stage_features=features, blocks_per_stage=blocks_per_stage, embedding_dim=embedding_dim, dtype=dtype)


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# model.encoder -> the encoder; model.head -> the head. A new one is one entry here.
ENCODERS = {'conv_tower': ConvTower, 'conv_blocks': ConvBlocks, 'resnet': _resnet}
HEADS = {'weighted_l1': WeightedL1Head, 'euclidean': EuclideanHead, 'cosine': CosineHead}


def build(model_config) -> SiameseNet:
  """The network a config's `model` block describes (fp32 parameters, `dtype` compute).

  The encoder gets the `model` keys among its keyword arguments (sequences as tuples, which Flax hashes).
  """
  dtype = registry.lookup(DTYPES, model_config.dtype, 'model.dtype')
  encoder = registry.lookup(ENCODERS, model_config.encoder, 'model.encoder')
  keys = [key for key in registry.keywords(encoder) if key in model_config and key != 'dtype']
  settings = {key: tuple(model_config[key]) if isinstance(model_config[key], (list, tuple)) else model_config[key]
              for key in keys}
  head = registry.lookup(HEADS, model_config.head, 'model.head')
  return SiameseNet(encoder=encoder(**settings, dtype=dtype), head=head(), normalize=model_config.normalize_embeddings)
