"""Distances between embeddings and their normalisation: one definition for the heads, the losses and the index.

The pair functions (`unit_length`, `squared_euclidean`, `euclidean`, `cosine_distance`) take NumPy or JAX
arrays and return the same kind, so the embedding database (NumPy, on faiss's candidates) scores with the
very formula the network's head computes. The batch functions (`cross_distances`, `pairwise_distances`) are
JAX only: they expand |x - y|^2 through a Gram matrix and are safe to differentiate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_EPSILON = 1e-12  # Floors norms and squared distances: no division by 0, no infinite gradient of sqrt at 0.


def _numpy_of(x):
  """jax.numpy for JAX arrays (tracers included), NumPy otherwise."""
  return jnp if isinstance(x, jax.Array) else np


def unit_length(embeddings):
  """Embeddings [..., D] scaled to unit Euclidean length (zero vectors stay zero)."""
  xp = _numpy_of(embeddings)
  return embeddings / xp.maximum(xp.linalg.norm(embeddings, axis=-1, keepdims=True), _EPSILON)


def squared_euclidean(x, y):
  """|x - y|^2 over the last axis, x and y broadcast against each other."""
  diff = x - y
  return (diff * diff).sum(axis=-1)


def euclidean(x, y):
  """|x - y| over the last axis, floored at 1e-6 so that its gradient stays finite for identical vectors."""
  xp = _numpy_of(x)
  return xp.sqrt(xp.maximum(squared_euclidean(x, y), _EPSILON))


def cosine_distance(x, y):
  """1 - cos(x, y) over the last axis, in [0, 2]."""
  xp = _numpy_of(x)
  norms = xp.linalg.norm(x, axis=-1) * xp.linalg.norm(y, axis=-1)
  return 1.0 - (x * y).sum(axis=-1) / xp.maximum(norms, _EPSILON)


def safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt whose gradient is 0 rather than inf/NaN where x is 0 (identical embeddings)."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def gram(x: jax.Array, y: jax.Array) -> jax.Array:
  """x @ y.T in full float32 precision: the |x|^2 - 2xy + |y|^2 expansion cancels badly at reduced precision."""
  return jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)


def _finish(squared_distances: jax.Array, squared: bool) -> jax.Array:
  squared_distances = jnp.maximum(squared_distances, 0.0)  # Rounding can push the expansion below 0.
  return squared_distances if squared else safe_sqrt(squared_distances)


def cross_distances(x: jax.Array, y: jax.Array, squared: bool = False) -> jax.Array:
  """Euclidean distances [M, N] between the rows of x [M, D] and y [N, D], safe to differentiate."""
  d2 = jnp.sum(x * x, -1)[:, None] - 2.0 * gram(x, y) + jnp.sum(y * y, -1)[None, :]
  return _finish(d2, squared)


def pairwise_distances(embeddings: jax.Array, squared: bool = False) -> jax.Array:
  """Euclidean distances [B, B] between all rows of embeddings [B, D], exactly 0 on the diagonal.

  Norms are read off the Gram matrix's diagonal so that identical rows cancel exactly, and the
  square root is safe at 0, so gradients stay finite when embeddings collapse.
  """
  g = gram(embeddings, embeddings)
  norms = jnp.diagonal(g)
  d2 = norms[:, None] - 2.0 * g + norms[None, :]
  d2 = jnp.where(jnp.eye(len(embeddings), dtype=bool), 0.0, d2)
  return _finish(d2, squared)
