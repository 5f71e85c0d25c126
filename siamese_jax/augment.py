"""Koch et al. (2015) affine distortions, sampled and applied on the accelerator.

Each image gets its own transform T = (θ, ρx, ρy, sx, sy, tx, ty), by default with θ ∈ [-10°, 10°],
ρx, ρy ∈ [-0.3, 0.3], sx, sy ∈ [0.8, 1.2] and tx, ty ∈ [-2, 2] px. Each of these seven
components is drawn independently and kept with probability `prob`, else left at its identity
value (0 for θ, ρ and t; 1 for s), so that many pairs see only mild distortions.

Matrices are forward maps (source pixel -> output pixel) in homogeneous coordinates centred on
the image: x = column - (W - 1) / 2, y = row - (H - 1) / 2 (y points down, so a positive angle
turns the picture clockwise on screen). Being centred, they compose about the image centre and
do not depend on the image size. The composition order is

  M = Translate(tx, ty) · Rotate(θ) · Shear(ρx, ρy) · Scale(sx, sy),

i.e. scale first, then shear, then rotate, then translate, with Shear = [[1, ρx], [ρy, 1]].
With `dihedral`, one of the eight symmetries of the square (quarter turns, each mirrored or not) is
applied first, uniformly: for pictures with no up or down, such as cells under a microscope. On a
square image it moves whole pixels, so it adds no blur.
Everything is shape-static and built from jax.random, so it runs inside a jitted training step.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from siamese_jax.errors import UserError

_NUM_COMPONENTS = 7  # θ, ρx, ρy, sx, sy, tx, ty


@dataclasses.dataclass(frozen=True)
class AffineConfig:
  """Ranges of the distortions; hashable, so it can be a static argument of a jitted function.

  Attributes:
    rotation_deg: θ is drawn from [-rotation_deg, rotation_deg] degrees.
    shear: ρx and ρy are drawn from [-shear, shear].
    scale: sx and sy are drawn from [scale[0], scale[1]].
    translate_px: tx and ty are drawn from [-translate_px, translate_px] pixels.
    prob: the chance that each component is applied rather than left at identity.
    strength: multiplies every range's distance from identity; 0 turns the distortions off and
      values in between give a gentler version of the same distortions.
    dihedral: also apply a uniformly drawn quarter turn and mirror image (independent of strength).
  """

  rotation_deg: float = 10.0
  shear: float = 0.3
  scale: tuple[float, float] = (0.8, 1.2)
  translate_px: float = 2.0
  prob: float = 0.5
  strength: float = 1.0
  dihedral: bool = False

  def __post_init__(self):
    numbers = (self.rotation_deg, self.shear, self.translate_px, self.prob, self.strength, *self.scale)
    if len(self.scale) != 2 or not all(math.isfinite(v) for v in numbers):
      raise UserError(f'augment values must be finite and augment.scale a (low, high) pair, got {self}')
    for name in ('rotation_deg', 'shear', 'translate_px', 'strength'):
      if getattr(self, name) < 0:
        raise UserError(f'augment.{name} must be >= 0, got {getattr(self, name)}')
    if not 0 <= self.prob <= 1:
      raise UserError(f'augment.prob must be in [0, 1], got {self.prob}')
    low, high = self.scaled_scale
    if not 0 < low <= high:
      raise UserError(f'augment.scale {self.scale} at strength {self.strength} must give 0 < low <= high, '
                      f'got ({low}, {high})')

  @property
  def scaled_scale(self) -> tuple[float, float]:
    """The scale range after `strength` pulls it towards 1."""
    return tuple(1 + self.strength * (s - 1) for s in self.scale)

  @classmethod
  def from_config(cls, block) -> AffineConfig:
    """Builds the config from a `config.augment` ConfigDict (or dict); missing keys keep defaults."""
    values = dict(block.items())
    known = {field.name for field in dataclasses.fields(cls)}
    if unknown := sorted(set(values) - known):
      raise UserError(f'unknown augment key(s) {", ".join(unknown)}; '
                      f'expected some of {", ".join(sorted(known))}')
    if not isinstance(values.get('dihedral', False), bool):
      raise UserError(f'augment.dihedral must be True or False, got {values["dihedral"]!r}')
    try:
      values = {k: v if k == 'dihedral' else tuple(float(s) for s in v) if k == 'scale' else float(v)
                for k, v in values.items()}
    except (TypeError, ValueError) as e:
      raise UserError(f'augment values must be numbers and augment.scale a (low, high) pair: {e}') from None
    return cls(**values)


def default_config() -> ml_collections.ConfigDict:
  """The paper's settings as a ConfigDict block, to be placed at `config.augment`."""
  return ml_collections.ConfigDict(dataclasses.asdict(AffineConfig()))


def affine_matrices(key: jax.Array, n: int, config: AffineConfig) -> jax.Array:
  """Samples `n` forward transforms, f32 [n, 3, 3], in centred pixel coordinates (see module doc)."""
  s = config.strength
  low_scale, high_scale = config.scaled_scale
  rotation, shear, shift = s * math.radians(config.rotation_deg), s * config.shear, s * config.translate_px
  # Offsets from identity, so that "not applied" is 0 for every component.
  high = jnp.array([rotation, shear, shear, high_scale - 1, high_scale - 1, shift, shift], jnp.float32)
  low = jnp.array([-rotation, -shear, -shear, low_scale - 1, low_scale - 1, -shift, -shift], jnp.float32)
  apply_key, value_key, dihedral_key = jax.random.split(key, 3)
  applied = jax.random.bernoulli(apply_key, config.prob, (n, _NUM_COMPONENTS))
  values = jax.random.uniform(value_key, (n, _NUM_COMPONENTS), jnp.float32, low, high)
  theta, rho_x, rho_y, ds_x, ds_y, t_x, t_y = jnp.where(applied, values, 0.0).T

  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Rotate · Shear · Scale, written out: [[c, -s], [s, c]] · [[1, ρx], [ρy, 1]] · diag(sx, sy).
  s_x, s_y = 1 + ds_x, 1 + ds_y
  a = (cos - sin * rho_y) * s_x
  b = (cos * rho_x - sin) * s_y
  c = (sin + cos * rho_y) * s_x
  d = (sin * rho_x + cos) * s_y
  zeros, ones = jnp.zeros_like(theta), jnp.ones_like(theta)
  rows = [jnp.stack(row, -1) for row in ((a, b, t_x), (c, d, t_y), (zeros, zeros, ones))]
  matrices = jnp.stack(rows, -2)
  if config.dihedral:
    matrices = matrices @ dihedral_matrices(dihedral_key, n)
  return matrices


def dihedral_views(images: jax.Array) -> list[jax.Array]:
  """The eight symmetries of square images [N, S, S, C]: four quarter turns, then the same mirrored."""
  turns = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
  return turns + [jnp.flip(t, axis=2) for t in turns]


def shift_views(images: jax.Array, pixels: int) -> list[jax.Array]:
  """Images [N, H, W, C] and their shifts by `pixels` down, up, right and left (rolled, so nothing is lost:
  what leaves one edge, background in a centred drawing, comes back at the other)."""
  return [images] + [jnp.roll(images, shift, axis) for axis in (1, 2) for shift in (pixels, -pixels)]


def dihedral_matrices(key: jax.Array, n: int) -> jax.Array:
  """`n` uniform draws from the eight symmetries of the square: f32 [n, 3, 3], centred coordinates."""
  turns_key, mirror_key = jax.random.split(key)
  angle = jax.random.randint(turns_key, (n,), 0, 4) * (jnp.pi / 2)
  cos, sin = jnp.round(jnp.cos(angle)), jnp.round(jnp.sin(angle))  # exact 0 and ±1
  mirror = jnp.where(jax.random.bernoulli(mirror_key, 0.5, (n,)), -1.0, 1.0)  # x -> -x first
  zeros, ones = jnp.zeros_like(cos), jnp.ones_like(cos)
  rows = [jnp.stack(row, -1) for row in ((cos * mirror, -sin, zeros), (sin * mirror, cos, zeros),
                                         (zeros, zeros, ones))]
  return jnp.stack(rows, -2)


@jax.jit  # So that eager callers (plots, notebooks) compile it once rather than op by op.
def warp(images: jax.Array, matrices: jax.Array) -> jax.Array:
  """Applies forward transforms [n, 3, 3] (or [n, 2, 3]) to images [n, H, W, C].

  Each output pixel is read from the inverse-mapped source point with bilinear interpolation;
  points outside the image read 0, the background. Returns float32 in the input's value range
  (uint8 input gives floats in [0, 255]). An identity matrix returns the input exactly.
  """
  _, h, w, _ = images.shape
  centre_x, centre_y = (w - 1) / 2, (h - 1) / 2
  # Each entry [n, 1, 1], to broadcast over the output grid.
  (a, b, t_x), (c, d, t_y) = jnp.moveaxis(matrices[:, :2, :, None, None].astype(jnp.float32), 0, 2)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - centre_y,
                        jnp.arange(w, dtype=jnp.float32) - centre_x, indexing='ij')
  # Undo the translation, then the 2x2 part by its closed-form inverse (exact for the identity).
  u, v, det = xs - t_x, ys - t_y, a * d - b * c
  source_x = (d * u - b * v) / det + centre_x
  source_y = (a * v - c * u) / det + centre_y
  return jax.vmap(_bilinear)(images.astype(jnp.float32), source_y, source_x)


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """Samples image [H, W, C] at float coordinates y, x [H', W'] (rows, columns), 0 outside."""
  h, w, channels = image.shape
  flat = image.reshape(h * w, channels)
  y0, x0 = jnp.floor(y), jnp.floor(x)
  wy, wx = y - y0, x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  out = 0.0
  for dy, weight_y in ((0, 1 - wy), (1, wy)):
    for dx, weight_x in ((0, 1 - wx), (1, wx)):
      yi, xi = y0 + dy, x0 + dx
      inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      index = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
      out = out + jnp.where(inside, weight_y * weight_x, 0.0)[..., None] * flat[index]
  return out


def random_affine(key: jax.Array, images: jax.Array, config: AffineConfig) -> jax.Array:
  """Distorts each image of a batch [n, H, W, C] with its own sampled transform; float32 out."""
  if (config.strength == 0 or config.prob == 0) and not config.dihedral:  # Static: no warp when off.
    return images.astype(jnp.float32)
  return warp(images, affine_matrices(key, images.shape[0], config))
