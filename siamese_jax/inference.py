"""A trained network as two functions: embed images, compare embeddings.

Evaluators, the Lake-run CLI and the pair tools (show_pairs, compare) all go through `Scorer`, so images are
preprocessed one way everywhere and each image is embedded once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from siamese_jax import augment, models, sharding
from siamese_jax.errors import UserError


def to_float(images):
  """uint8 images -> float32 in [0, 1]: the network's input everywhere."""
  return images.astype(jnp.float32) / 255.0


class Scorer:
  """Embeds image arrays in sharded batches and scores embedding pairs (higher = more alike).

  With `average_symmetries`, an image's embedding is the mean of its eight quarter turns and mirror
  images' embeddings (back on the unit sphere when the model normalises): for pictures with no up or
  down, such as cells, whose network was trained on all eight (`augment.dihedral`).
  """

  def __init__(self, model: models.SiameseNet, params, mesh, batch_size: int = 256,
               average_symmetries: bool = False):
    self.mesh = mesh
    self.batch_size = -(-batch_size // mesh.size) * mesh.size
    self.output_kind = model.head.output_kind
    self.set_params(params)

    @functools.partial(jax.jit, out_shardings=sharding.batch_sharded(mesh))
    def embed(params, images):
      x = to_float(images)
      if not average_symmetries:
        return model.apply({'params': params}, x, method=models.SiameseNet.embed)
      if x.shape[1] != x.shape[2]:  # Checked while tracing: quarter turns need square images.
        raise UserError(f'train.eval_average_symmetries needs square images, got {x.shape[1]}x{x.shape[2]}')
      views = jnp.concatenate(augment.dihedral_views(x))
      embeddings = model.apply({'params': params}, views, method=models.SiameseNet.embed)
      mean = embeddings.reshape((8,) + x.shape[:1] + embeddings.shape[1:]).mean(axis=0)
      return models.unit_length(mean) if model.normalize else mean

    @jax.jit
    def similarity(params, e1, e2):
      out = model.apply({'params': params}, e1, e2, method=models.SiameseNet.compare)
      return models.similarity(out, self.output_kind)

    self._embed = embed
    self._similarity = similarity

  @classmethod
  def for_config(cls, config, model: models.SiameseNet, params, mesh) -> Scorer:
    """The scorer a training config asks for (`train.eval_batch_size`, `train.eval_average_symmetries`)."""
    return cls(model, params, mesh, config.train.eval_batch_size, config.train.eval_average_symmetries)

  def set_params(self, params) -> None:
    """Scores with new parameters, reusing the compiled functions (one compilation per run)."""
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  def embed(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, D], padded into fixed-size sharded batches."""
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      padded = np.zeros((self.batch_size,) + chunk.shape[1:], chunk.dtype)
      padded[:len(chunk)] = chunk
      batch = jax.make_array_from_callback(padded.shape, sharding.batch_sharded(self.mesh),
                                           lambda index, padded=padded: padded[index])
      out.append(np.asarray(multihost_utils.process_allgather(self._embed(self.params, batch), tiled=True))
                 [:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def similarity(self, e1, e2) -> np.ndarray:
    """Scores of embedding pairs; e1 and e2 broadcast against each other on their leading axes."""
    e1, e2 = jnp.broadcast_arrays(jnp.asarray(e1), jnp.asarray(e2))
    return np.asarray(self._similarity(self.params, e1, e2))


def pick_with_random_ties(rng: np.random.Generator, scores: np.ndarray) -> np.ndarray:
  """argmax over the last axis, choosing uniformly among tied maxima.

  A plain argmax picks the first of equal scores, so a model that outputs a constant would look perfect
  whenever the right answer comes first; with random ties it scores chance, as it should.
  """
  is_max = scores == scores.max(axis=-1, keepdims=True)
  return np.argmax(is_max * (1.0 + rng.random(scores.shape)), axis=-1)
