"""The Koch tower's size and initialisation, the heads, and the pair batching of the Siamese net."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamese_jax import config_schema, models
from siamese_jax.errors import UserError


def koch_model(dtype='float32'):
  config = config_schema.base_config().model
  config.dtype = dtype
  return models.build(config)


def small_model(**fields):
  config = config_schema.base_config().model
  config.update(fields)
  return models.build(config)


def test_koch_parameter_count_and_shapes():
  params = jax.eval_shape(koch_model().init, jax.random.key(0), jnp.zeros((1, 2, 105, 105, 1)))['params']
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 38_951_745
  encoder = params['encoder']
  chex.assert_shape(encoder['conv0']['kernel'], (10, 10, 1, 64))
  chex.assert_shape(encoder['conv3']['kernel'], (4, 4, 128, 256))
  chex.assert_shape(encoder['embedding']['kernel'], (6 * 6 * 256, 4096))
  chex.assert_shape(params['head']['weights']['kernel'], (4096, 1))


def test_koch_initialisation_statistics():
  params = models.init_params(koch_model(), (105, 105, 1), jax.random.key(1))
  encoder = params['encoder']
  for name in ('conv0', 'conv1', 'conv2', 'conv3'):
    kernel, bias = np.asarray(encoder[name]['kernel']), np.asarray(encoder[name]['bias'])
    assert abs(kernel.mean()) < 2e-3 and kernel.std() == pytest.approx(1e-2, rel=0.05)
    assert bias.mean() == pytest.approx(0.5, abs=5e-3) and bias.std() < 2e-2
  dense = np.asarray(encoder['embedding']['kernel'])
  assert dense.std() == pytest.approx(0.2, rel=0.01)  # 0.2, not the 10e-2 misreading
  assert np.asarray(encoder['embedding']['bias']).mean() == pytest.approx(0.5, abs=2e-3)


def test_small_tower_output_and_bf16_compute_keeps_f32_params():
  model = small_model(features=(8, 16), kernel_sizes=(5, 3), embedding_dim=32, dtype='bfloat16')
  pairs = jax.random.uniform(jax.random.key(0), (3, 2, 28, 28, 1))
  variables = model.init(jax.random.key(1), pairs)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits = model.apply(variables, pairs)
  chex.assert_shape(logits, (3,))
  embeddings = model.apply(variables, pairs[:, 0], method=models.SiameseNet.embed)
  chex.assert_shape(embeddings, (3, 32))
  assert embeddings.dtype == jnp.float32 and np.all((embeddings >= 0) & (embeddings <= 1))  # sigmoid


def test_pair_call_equals_embedding_each_image_then_comparing():
  model = small_model(features=(4, 8), kernel_sizes=(3, 3), embedding_dim=16)
  pairs = jax.random.uniform(jax.random.key(0), (5, 2, 16, 16, 1))
  variables = model.init(jax.random.key(1), pairs)
  e1 = model.apply(variables, pairs[:, 0], method=models.SiameseNet.embed)
  e2 = model.apply(variables, pairs[:, 1], method=models.SiameseNet.embed)
  head = variables['params']['head']['weights']
  expected = (jnp.abs(e1 - e2) @ head['kernel'])[:, 0] + head['bias'][0]
  chex.assert_trees_all_close(model.apply(variables, pairs), expected, rtol=1e-5)


def test_distance_heads():
  e1 = jnp.array([[3.0, 0.0], [1.0, 1.0]])
  e2 = jnp.array([[0.0, 4.0], [2.0, 2.0]])
  chex.assert_trees_all_close(models.EuclideanHead()(e1, e2), jnp.array([5.0, np.sqrt(2)]), rtol=1e-6)
  chex.assert_trees_all_close(models.CosineHead()(e1, e2), jnp.array([1.0, 0.0]), atol=1e-6)
  assert models.similarity(jnp.array([2.0]), 'distance')[0] == -2.0


@pytest.mark.parametrize('width, groups', [(8, 2), (32, 8), (64, 16), (128, 32), (256, 32), (30, 6), (7, 1), (2, 1)])
def test_resnet_norm_groups_divide_any_width(width, groups):
  assert models.resnet_norm_groups(width) == groups


def test_resnet_encoder_with_a_width_four_does_not_divide():
  model = small_model(encoder='resnet', features=(6, 30), embedding_dim=4, head='euclidean', blocks_per_stage=1)
  pairs = jax.random.uniform(jax.random.key(0), (2, 2, 16, 16, 1))
  variables = model.init(jax.random.key(1), pairs)
  chex.assert_shape(model.apply(variables, pairs), (2,))


def test_resnet_encoder():
  model = small_model(encoder='resnet', features=(8, 16), embedding_dim=12, head='euclidean', blocks_per_stage=1)
  pairs = jax.random.uniform(jax.random.key(0), (2, 2, 32, 32, 3))
  variables = model.init(jax.random.key(1), pairs)
  params = variables['params']['encoder']
  # Bias-free 3x3 convolutions, GroupNorm scale and bias, a 1x1 projection where a block changes shape:
  # stem 3*3*3*8 = 216; stage 0 (8 -> 8): 16 + 576 + 16 + 576 = 1184; stage 1 (8 -> 16, stride 2):
  # 16 + 8*16 + 3*3*8*16 + 32 + 3*3*16*16 = 3632; final norm 32; embedding 16*12 + 12 = 204.
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 216 + 1184 + 3632 + 32 + 204
  assert set(params) == {'stem', 'stage0_block0', 'stage1_block0', 'norm', 'embedding'}
  assert 'project' not in params['stage0_block0'] and 'project' in params['stage1_block0']
  distances = model.apply(variables, pairs)
  chex.assert_shape(distances, (2,))
  # The pair distance is the Euclidean distance between the two images' embeddings.
  embeddings = [model.apply(variables, pairs[:, i], method=models.SiameseNet.embed) for i in (0, 1)]
  chex.assert_shape(embeddings, [(2, 12)] * 2)
  chex.assert_trees_all_close(distances, jnp.linalg.norm(embeddings[0] - embeddings[1], axis=-1), rtol=1e-5)
  assert np.all(np.asarray(distances) > 0)


def test_normalized_embeddings_have_unit_length_and_bounded_distances():
  model = small_model(features=(4, 8), kernel_sizes=(3, 3), embedding_dim=16, koch=False, head='euclidean',
                      normalize_embeddings=True)
  pairs = 100.0 * jax.random.uniform(jax.random.key(0), (6, 2, 16, 16, 1))
  variables = model.init(jax.random.key(1), pairs)
  embeddings = model.apply(variables, pairs[:, 0], method=models.SiameseNet.embed)
  chex.assert_trees_all_close(jnp.linalg.norm(embeddings, axis=-1), jnp.ones(6), rtol=1e-5)
  distances = model.apply(variables, pairs)
  assert np.all((np.asarray(distances) >= 0) & (np.asarray(distances) <= 2 + 1e-6))
  raw = small_model(features=(4, 8), kernel_sizes=(3, 3), embedding_dim=16, koch=False, head='euclidean')
  unnormalized = raw.apply(variables, pairs[:, 0], method=models.SiameseNet.embed)
  assert not np.allclose(np.linalg.norm(unnormalized, axis=-1), 1.0, atol=1e-2)


@pytest.mark.parametrize('field,value', [('encoder', 'vgg'), ('head', 'l2'), ('dtype', 'float8')])
def test_bad_model_config_is_a_user_error(field, value):
  config = config_schema.base_config().model
  config[field] = value
  with pytest.raises(UserError, match=field):
    models.build(config)
