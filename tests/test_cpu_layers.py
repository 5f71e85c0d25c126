"""The CPU formulations of pooling and convolution compute what Flax's layers compute, gradients included."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from siamese_jax import models


@pytest.mark.parametrize('shape', [(2, 8, 8, 3), (2, 7, 9, 4), (1, 3, 3, 2)])
def test_max_pool_2x2_matches_flax_values_and_gradients(shape):
  x = jax.random.normal(jax.random.key(0), shape)  # continuous: no tied maxima
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  chex.assert_trees_all_close(models.max_pool_2x2(x), reference(x))
  weights = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
  chex.assert_trees_all_close(grad(models.max_pool_2x2), grad(reference))


@pytest.mark.parametrize('channels,kernel,by_fft', [(8, 4, True), (16, 3, False), (1, 5, False), (8, 5, False)])
def test_conv_matches_flax_conv_values_and_gradients(channels, kernel, by_fft):
  """VALID layers run by the FFT from 8 input channels, 4x4 kernels and 8x8 outputs (13x11 maps: a 5x5
  kernel leaves 9x7); otherwise as XLA's convolution. Either way Flax's values and gradients."""
  x = jax.random.normal(jax.random.key(0), (3, 13, 11, channels))
  ours, flax_conv = models.Conv(6, (kernel, kernel), padding='VALID'), nn.Conv(6, (kernel, kernel), padding='VALID')
  variables = flax_conv.init(jax.random.key(1), x)
  assert ('fft' in str(jax.make_jaxpr(ours.apply)(variables, x))) == by_fft
  chex.assert_trees_all_equal_shapes(ours.init(jax.random.key(1), x), variables)  # checkpoints interchange
  chex.assert_trees_all_close(ours.apply(variables, x), flax_conv.apply(variables, x), atol=1e-5)
  loss = lambda layer: lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))
  chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(variables, x),
                              jax.grad(loss(flax_conv), argnums=(0, 1))(variables, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('batch,images_per_slice', [(7, 3), (6, 6)])
def test_kernel_gradient_summed_over_batch_slices_matches_flax(monkeypatch, batch, images_per_slice):
  """Slices of 3, 3 and 1 images give the whole batch's values and gradients; a batch that fits one slice
  stays one convolution."""
  x = jax.random.normal(jax.random.key(0), (batch, 9, 7, 4))
  monkeypatch.setattr(models, 'KERNEL_GRAD_SLICE_ELEMENTS', images_per_slice * 9 * 7 * (4 + 5))
  ours, flax_conv = models.Conv(5, (3, 3), padding='SAME'), nn.Conv(5, (3, 3), padding='SAME')
  variables = flax_conv.init(jax.random.key(1), x)
  loss = lambda layer: lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))
  chex.assert_trees_all_close(ours.apply(variables, x), flax_conv.apply(variables, x))
  chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(variables, x),
                              jax.grad(loss(flax_conv), argnums=(0, 1))(variables, x), rtol=1e-5, atol=1e-5)
  kernel_step = jax.jit(jax.grad(loss(ours))).lower(variables, x).as_text()  # no input gradient needed
  assert kernel_step.count('stablehlo.convolution') == 1 + -(-batch // images_per_slice)  # forward + slices


def _xla_conv_valid(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape,kernel_shape', [((2, 12, 12, 3), (7, 7)), ((3, 9, 11, 2), (4, 3)),
                                                ((1, 5, 5, 1), (5, 5))])
def test_fft_conv_valid_matches_xla_values_and_gradients(shape, kernel_shape):
  """Odd and even sides, a rectangular kernel and map, a kernel as large as the map (one output)."""
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), kernel_shape + (shape[-1], 4))
  expected = _xla_conv_valid(x, kernel)
  chex.assert_trees_all_close(models.fft_conv_valid(x, kernel), expected, atol=1e-4)
  weights = jax.random.normal(jax.random.key(2), expected.shape)
  grad = lambda conv: jax.grad(lambda x, k: jnp.sum(conv(x, k) * weights), argnums=(0, 1))(x, kernel)
  chex.assert_trees_all_close(grad(models.fft_conv_valid), grad(_xla_conv_valid), atol=1e-4)


def _xla_conv_same(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('shape,features', [((2, 4, 4, 5), 3), ((3, 8, 12, 2), 4)])
def test_winograd_conv3x3_matches_xla_values_and_gradients(shape, features):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], features))
  chex.assert_trees_all_close(models.winograd_conv3x3(x, kernel), _xla_conv_same(x, kernel), atol=1e-4)
  weights = jax.random.normal(jax.random.key(2), shape[:-1] + (features,))
  grad = lambda conv: jax.grad(lambda x, k: jnp.sum(conv(x, k) * weights), argnums=(0, 1))(x, kernel)
  chex.assert_trees_all_close(grad(models.winograd_conv3x3), grad(_xla_conv_same), atol=1e-4)


@pytest.mark.parametrize('shape,by_winograd', [((2, 8, 12, 4), True), ((2, 8, 8, 3), False),
                                                ((2, 6, 8, 4), False), ((2, 8, 10, 4), False)])
def test_conv_takes_winograd_on_wide_inputs(monkeypatch, shape, by_winograd):
  """From WINOGRAD_MIN_CHANNELS input channels, on maps whose sides are multiples of 4; either way Flax's
  values and gradients."""
  monkeypatch.setattr(models, 'WINOGRAD_MIN_CHANNELS', 4)
  x = jax.random.normal(jax.random.key(0), shape)
  ours, flax_conv = models.Conv(5, (3, 3), padding='SAME'), nn.Conv(5, (3, 3), padding='SAME')
  variables = flax_conv.init(jax.random.key(1), x)
  assert ('conv_general_dilated' not in str(jax.make_jaxpr(ours.apply)(variables, x))) == by_winograd
  chex.assert_trees_all_close(ours.apply(variables, x), flax_conv.apply(variables, x), atol=1e-4)
  loss = lambda layer: lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))
  chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(variables, x),
                              jax.grad(loss(flax_conv), argnums=(0, 1))(variables, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape,groups', [((3, 5, 7, 8), 4), ((2, 4, 4, 16), 8), ((4, 6), 2)])
def test_group_norm_matches_flax_values_and_gradients(shape, groups):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)  # off-centre, not unit variance
  ours, flax_norm = models.GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups)
  variables = flax_norm.init(jax.random.key(1), x)
  chex.assert_trees_all_equal_shapes(ours.init(jax.random.key(1), x), variables)  # checkpoints interchange
  variables = jax.tree.map(lambda v: v + jax.random.normal(jax.random.key(2), v.shape), variables)
  chex.assert_trees_all_close(ours.apply(variables, x), flax_norm.apply(variables, x), atol=1e-5)
  loss = lambda layer: lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))
  chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(variables, x),
                              jax.grad(loss(flax_norm), argnums=(0, 1))(variables, x), rtol=1e-4, atol=1e-4)
