"""Tests of the Koch et al. affine distortions: sampling ranges, probabilities and the warp."""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import parameterized

from siamese_jax import augment
from siamese_jax.augment import AffineConfig
from siamese_jax.errors import UserError

_NUM_SAMPLES = 20_000
# One component at a time: the config that turns on only it, the matrix entries it may touch,
# and how to read its parameters back from the matrices as offsets from identity.
_OFF = dict(rotation_deg=0.0, shear=0.0, scale=(1.0, 1.0), translate_px=0.0)
_COMPONENTS = {
    'rotation': (dict(_OFF, rotation_deg=10.0), [(0, 0), (0, 1), (1, 0), (1, 1)],
                 lambda m: np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))[:, None], (-10.0, 10.0)),
    'shear': (dict(_OFF, shear=0.3), [(0, 1), (1, 0)], lambda m: m[:, [0, 1], [1, 0]], (-0.3, 0.3)),
    'scale': (dict(_OFF, scale=(0.8, 1.2)), [(0, 0), (1, 1)], lambda m: m[:, [0, 1], [0, 1]] - 1,
              (-0.2, 0.2)),
    'translation': (dict(_OFF, translate_px=2.0), [(0, 2), (1, 2)], lambda m: m[:, :2, 2], (-2.0, 2.0)),
}


def _sample(config: AffineConfig, seed: int) -> np.ndarray:
  return np.asarray(augment.affine_matrices(jax.random.key(seed), _NUM_SAMPLES, config))


def _matrix(rows) -> jnp.ndarray:
  """A batch of one 3x3 matrix."""
  return jnp.asarray([rows], jnp.float32)


def _dot_image(size=(15, 17), row=7, col=8, value=255) -> np.ndarray:
  image = np.zeros((1, *size, 1), np.uint8)
  image[0, row, col, 0] = value
  return image


@pytest.mark.parametrize('strength', [1.0, 0.5])
@pytest.mark.parametrize('name', list(_COMPONENTS))
def test_each_component_stays_in_bounds_and_uses_its_range(name, strength):
  kwargs, touched, params_of, (low, high) = _COMPONENTS[name]
  matrices = _sample(AffineConfig(**kwargs, strength=strength), seed=0)
  params = params_of(matrices)
  tol = 1e-5 * (high - low)
  assert params.min() >= strength * low - tol and params.max() <= strength * high + tol
  assert params.min() < 0.95 * strength * low and params.max() > 0.95 * strength * high
  untouched = np.ones((3, 3), bool)
  untouched[tuple(zip(*touched))] = False
  np.testing.assert_array_equal(matrices[:, untouched], np.tile(np.eye(3)[untouched], (_NUM_SAMPLES, 1)))


@pytest.mark.parametrize('prob', [0.5, 0.2])
@pytest.mark.parametrize('name', list(_COMPONENTS))
def test_each_parameter_is_applied_with_prob(name, prob):
  kwargs, _, params_of, _ = _COMPONENTS[name]
  matrices = _sample(AffineConfig(**kwargs, prob=prob), seed=1)
  applied = params_of(matrices) != 0
  # ±0.02 is over 5 standard deviations at this sample size.
  np.testing.assert_allclose(applied.mean(axis=0), prob, atol=0.02)


def test_components_are_drawn_independently():
  matrices = _sample(AffineConfig(), seed=2)
  # Translation is applied last, so its column shows exactly whether tx and ty were drawn.
  shifted_x, shifted_y = matrices[:, 0, 2] != 0, matrices[:, 1, 2] != 0
  np.testing.assert_allclose((shifted_x & shifted_y).mean(), 0.25, atol=0.02)
  identity = np.all(matrices == np.eye(3), axis=(1, 2))
  np.testing.assert_allclose(identity.mean(), 0.5**7, atol=0.003)


@pytest.mark.parametrize('kwargs', [dict(strength=0.0), dict(prob=0.0)])
def test_matrices_are_identity_when_off(kwargs):
  matrices = augment.affine_matrices(jax.random.key(3), 64, AffineConfig(**kwargs))
  chex.assert_trees_all_equal(matrices, jnp.broadcast_to(jnp.eye(3), (64, 3, 3)))


@pytest.mark.parametrize('shape', [(3, 105, 105, 1), (2, 8, 6, 3)])
@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_identity_matrix_warps_exactly(shape, dtype):
  images = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
  out = augment.warp(images, jnp.broadcast_to(jnp.eye(3), (shape[0], 3, 3)))
  chex.assert_trees_all_equal(out, jnp.asarray(images, jnp.float32))


def test_two_by_three_matrices_are_accepted():
  images = np.random.default_rng(1).random((4, 12, 12, 1), np.float32)
  matrices = augment.affine_matrices(jax.random.key(4), 4, AffineConfig())
  chex.assert_trees_all_equal(augment.warp(images, matrices[:, :2]), augment.warp(images, matrices))


def test_rotation_by_90_degrees_turns_clockwise_on_screen():
  images = np.random.default_rng(2).random((2, 9, 9, 2), np.float32)
  quarter_turn = jnp.broadcast_to(jnp.asarray([[0, -1, 0], [1, 0, 0], [0, 0, 1]], jnp.float32), (2, 3, 3))
  out = augment.warp(images, quarter_turn)
  chex.assert_trees_all_close(out, np.rot90(images, k=-1, axes=(1, 2)), atol=1e-6)


def test_matches_map_coordinates_on_random_transforms():
  """The hand-written bilinear gather agrees with jax.scipy's, border handling included."""
  images = np.random.default_rng(3).random((8, 21, 19, 2), np.float32)
  matrices = augment.affine_matrices(jax.random.key(5), 8, AffineConfig(strength=3.0, scale=(0.9, 1.1)))
  inverse = np.linalg.inv(np.asarray(matrices, np.float64))
  rows, cols = np.meshgrid(np.arange(21) - 10.0, np.arange(19) - 9.0, indexing='ij')
  grid = np.stack([cols, rows, np.ones_like(rows)])
  expected = []
  for image, inv in zip(images, inverse):
    source_x, source_y, _ = np.einsum('ij,jhw->ihw', inv, grid)
    coordinates = [source_y + 10, source_x + 9]
    expected.append(np.stack([
        jax.scipy.ndimage.map_coordinates(channel, coordinates, order=1, mode='constant')
        for channel in np.moveaxis(image, -1, 0)], -1))
  chex.assert_trees_all_close(augment.warp(images, matrices), np.stack(expected), atol=1e-4)


def test_outputs_stay_in_the_input_range():
  images = np.random.default_rng(4).integers(0, 256, (16, 30, 30, 1), np.uint8)
  out = augment.random_affine(jax.random.key(6), images, AffineConfig(strength=2.0))
  assert float(out.min()) >= 0 and float(out.max()) <= 255


class RandomAffineTest(chex.TestCase):
  """Behaviour that must hold both eagerly and inside a jitted training step."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(('uint8', np.uint8), ('float32', np.float32))
  def test_shape_dtype_and_strength_zero_identity(self, dtype):
    images = np.random.default_rng(5).integers(0, 256, (6, 105, 105, 1)).astype(dtype)
    for strength in (0.0, 1.0):
      out = self.variant(functools.partial(augment.random_affine, config=AffineConfig(strength=strength)))(
          jax.random.key(7), images)
      chex.assert_shape(out, images.shape)
      chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_equal(
        self.variant(functools.partial(augment.random_affine, config=AffineConfig(strength=0.0)))(
            jax.random.key(7), images),
        jnp.asarray(images, jnp.float32))

  @chex.variants(with_jit=True, without_jit=True)
  def test_translation_moves_a_bright_pixel(self):
    warp = self.variant(augment.warp)
    right_two = warp(_dot_image(), _matrix([[1, 0, 2], [0, 1, 0], [0, 0, 1]]))
    chex.assert_trees_all_equal(right_two, jnp.asarray(_dot_image(col=10), jnp.float32))
    up_two = warp(_dot_image(), _matrix([[1, 0, 0], [0, 1, -2], [0, 0, 1]]))
    chex.assert_trees_all_equal(up_two, jnp.asarray(_dot_image(row=5), jnp.float32))
    # Half a pixel spreads the dot evenly over two pixels: the interpolation is bilinear.
    half = warp(_dot_image(value=200), _matrix([[1, 0, 0.5], [0, 1, 0], [0, 0, 1]]))
    spread = _dot_image(value=100) + _dot_image(col=9, value=100)
    chex.assert_trees_all_close(half, spread.astype(np.float32))

  @chex.variants(with_jit=True, without_jit=True)
  def test_fills_zero_outside(self):
    full = np.full((1, 12, 12, 1), 255, np.uint8)
    shifted = self.variant(augment.warp)(full, _matrix([[1, 0, 5], [0, 1, 0], [0, 0, 1]]))
    expected = full.astype(np.float32)
    expected[:, :, :5] = 0
    chex.assert_trees_all_equal(shifted, jnp.asarray(expected))
    gone = self.variant(augment.warp)(full, _matrix([[1, 0, 0], [0, 1, 40], [0, 0, 1]]))
    chex.assert_trees_all_equal(gone, jnp.zeros_like(gone))

  @chex.variants(with_jit=True, without_jit=True)
  def test_deterministic_per_key_and_different_per_image(self):
    images = np.broadcast_to(_dot_image(size=(20, 20), row=4, col=6), (8, 20, 20, 1))
    distort = self.variant(functools.partial(augment.random_affine, config=AffineConfig()))
    first, again, other = (distort(jax.random.key(k), images) for k in (8, 8, 9))
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({np.asarray(image).tobytes() for image in first}) > 1

  def test_vmaps_over_a_leading_axis(self):
    images = np.random.default_rng(6).random((2, 3, 10, 10, 1), np.float32)
    keys = jax.random.split(jax.random.key(10), 2)
    distort = functools.partial(augment.random_affine, config=AffineConfig())
    batched = jax.jit(jax.vmap(distort))(keys, images)
    distort = jax.jit(distort)
    chex.assert_trees_all_close(batched, jnp.stack([distort(k, x) for k, x in zip(keys, images)]), atol=1e-5)


def _symmetries(image: np.ndarray) -> list[np.ndarray]:
  """The eight quarter turns and mirror images of an [H, W, C] image."""
  turns = [np.rot90(image, k) for k in range(4)]
  return turns + [np.fliplr(t) for t in turns]


def test_dihedral_alone_moves_whole_pixels_and_draws_all_eight_symmetries():
  config = AffineConfig(strength=0.0, dihedral=True)
  images = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 9, 9, 1), np.uint8), 400, axis=0)
  out = np.asarray(augment.random_affine(jax.random.key(0), images, config))
  symmetries = _symmetries(images[0].astype(np.float32))
  matches = [[i for i, s in enumerate(symmetries) if np.array_equal(o, s)] for o in out]
  assert all(len(m) == 1 for m in matches)  # exact: no interpolation blur
  counts = np.bincount([m[0] for m in matches], minlength=8)
  assert counts.min() > 25, counts  # 400 draws over 8 symmetries: 50 each on average


def test_dihedral_composes_with_the_distortions():
  matrices = _sample(AffineConfig(dihedral=True), seed=3)
  plain = _sample(AffineConfig(), seed=3)
  dets = np.linalg.det(matrices[:, :2, :2])
  assert np.mean(dets < 0) == pytest.approx(0.5, abs=0.02)  # mirror images flip orientation
  np.testing.assert_allclose(np.abs(dets), np.abs(np.linalg.det(plain[:, :2, :2])), rtol=1e-5)


def test_config_from_config_block_round_trips_and_coerces():
  assert AffineConfig.from_config(augment.default_config()) == AffineConfig()
  block = ml_collections.ConfigDict(dict(rotation_deg=5, scale=[0.9, 1.1], strength=0.5))
  assert AffineConfig.from_config(block) == AffineConfig(rotation_deg=5.0, scale=(0.9, 1.1), strength=0.5)


@pytest.mark.parametrize('block, message', [
    (dict(rotation=10.0), 'unknown augment key'),
    (dict(shear='a lot'), 'must be numbers'),
    (dict(scale=1.2), 'must be numbers'),
    (dict(scale=(0.8, 1.0, 1.2)), 'scale'),
    (dict(translate_px=-1.0), 'augment.translate_px must be >= 0'),
    (dict(prob=1.5), 'augment.prob must be in'),
    (dict(scale=(1.2, 0.8)), 'augment.scale'),
    (dict(strength=6.0), 'augment.scale'),
    (dict(rotation_deg=float('nan')), 'finite'),
    (dict(dihedral='yes'), 'augment.dihedral must be True or False'),
])
def test_bad_config_values_raise_user_error(block, message):
  with pytest.raises(UserError, match=message):
    AffineConfig.from_config(ml_collections.ConfigDict(block))
