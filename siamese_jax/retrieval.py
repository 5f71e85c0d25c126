"""Exact nearest-neighbour retrieval over stored embeddings, and the metrics computed with it.

The index holds a trained model's embeddings of a labelled set (a gallery) and answers k-nearest
queries exactly, in chunks of queries so that the distance matrix of a 10k x 10k search never
exists at once. It is saved as a plain .npz (no pickle) next to the checkpoints.
"""

from __future__ import annotations

import functools
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from siamese_jax import losses
from siamese_jax.errors import UserError

METRICS = ('euclidean', 'cosine')
CHUNK_SIZE = 512  # Queries per step: a [512, N] float32 distance block, 20 MB for N = 10k.


def _unit(x: jax.Array) -> jax.Array:
  """Rows scaled to unit length; all-zero rows stay zero (cosine distance 1 to everything)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('k', 'metric', 'chunk_size'))
def _nearest(queries, gallery, exclude, k: int, metric: str, chunk_size: int):
  """Indices and distances [M, k] of the k nearest gallery rows, skipping gallery[exclude[i]]."""
  if metric == 'cosine':
    queries, gallery = _unit(queries), _unit(gallery)
  positions = jnp.arange(len(gallery))

  def one(args):  # Vectorised over `chunk_size` queries at a time by lax.map.
    query, skip = args
    if metric == 'cosine':
      d = 1.0 - jnp.matmul(gallery, query, precision=jax.lax.Precision.HIGHEST)
    else:
      d = losses.cross_distances(query[None], gallery)[0]
    neg_d, idx = jax.lax.top_k(-jnp.where(positions == skip, jnp.inf, d), k)
    return idx, -neg_d

  return jax.lax.map(one, (queries, exclude), batch_size=chunk_size)


class EmbeddingIndex:
  """Labelled embeddings searched exactly by 'euclidean' or 'cosine' (1 - cosine similarity) distance.

  Attributes:
    embeddings: float32 [N, D].
    labels: int [N], the class of each item.
    ids: optional [N] payload (file names, dataset indices) returned alongside results by callers.
    metric: 'euclidean' or 'cosine'.
  """

  def __init__(self, embeddings, labels, ids=None, metric: str = 'euclidean'):
    if metric not in METRICS:
      raise UserError(f'unknown retrieval metric {metric!r}; choose one of {", ".join(METRICS)}')
    self.embeddings = np.asarray(embeddings, np.float32)
    self.labels = np.asarray(labels)
    self.ids = None if ids is None else np.asarray(ids)
    self.metric = metric
    if self.embeddings.ndim != 2:
      raise ValueError(f'embeddings must be [N, D], got shape {self.embeddings.shape}')
    n = len(self.embeddings)
    if self.labels.shape != (n,) or (self.ids is not None and self.ids.shape != (n,)):
      raise ValueError(f'labels and ids must have one entry per embedding ({n})')
    if self.ids is not None and self.ids.dtype == object:
      raise ValueError('ids must be numbers or strings (they are saved without pickle)')

  def __len__(self) -> int:
    return len(self.embeddings)

  def query(self, queries, k: int, exclude=None, chunk_size: int = CHUNK_SIZE):
    """The k nearest items to each query, nearest first; ties go to the lower index.

    Args:
      queries: float [M, D].
      k: neighbours per query.
      exclude: optional int [M], an index position to leave out for each query (-1: none); pass
        `np.arange(len(index))` with the index's own embeddings for leave-one-out.
      chunk_size: queries searched at once; lower it if N is so large that [chunk_size, N] floats
        do not fit.

    Returns:
      indices int32 [M, k] into the index, and their distances float32 [M, k].
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
      raise ValueError(f'queries must be [M, {self.embeddings.shape[1]}], got shape {queries.shape}')
    available = len(self) - (exclude is not None)
    if not 1 <= k <= available:
      raise UserError(f'k={k} neighbours asked of an index with {available} candidates per query')
    exclude = np.full(len(queries), -1) if exclude is None else np.asarray(exclude)
    indices, distances = _nearest(
        queries, self.embeddings, exclude.astype(np.int32), k=k, metric=self.metric, chunk_size=chunk_size
    )
    return np.asarray(indices), np.asarray(distances)

  def leave_one_out(self, k: int, chunk_size: int = CHUNK_SIZE):
    """`query` with every item of the index, each leaving itself out."""
    return self.query(self.embeddings, k, exclude=np.arange(len(self)), chunk_size=chunk_size)

  def save(self, path) -> None:
    """Writes the index to `path` (a .npz; local or any path etils.epath can open)."""
    arrays = {'embeddings': self.embeddings, 'labels': self.labels, 'metric': np.array(self.metric)}
    if self.ids is not None:
      arrays['ids'] = self.ids
    with epath.Path(path).open('wb') as f:
      np.savez(f, **arrays)

  @classmethod
  def load(cls, path) -> 'EmbeddingIndex':
    """Reads an index written by `save`."""
    try:
      with epath.Path(path).open('rb') as f, np.load(f, allow_pickle=False) as data:
        return cls(data['embeddings'], data['labels'], data['ids'] if 'ids' in data else None,
                   str(data['metric']))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
      raise UserError(f'cannot read an embedding index from {path}: {e}') from e


def _others_of_same_class(labels: np.ndarray) -> np.ndarray:
  """R for each item: how many other items share its class. Items with R = 0 cannot be scored."""
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  r = counts[inverse] - 1
  if not r.any():
    raise UserError('retrieval metrics need a class with at least two items; every class has one')
  return r


def _hits(index: EmbeddingIndex, k: int, chunk_size: int) -> np.ndarray:
  """bool [N, k]: whether each item's j-th nearest other item shares its label."""
  neighbours, _ = index.leave_one_out(k, chunk_size)
  return index.labels[neighbours] == index.labels[:, None]


def precision_at_1(index: EmbeddingIndex, chunk_size: int = CHUNK_SIZE) -> float:
  """Fraction of items whose nearest other item shares its class (leave-one-out).

  Items that are alone in their class have no right answer and are left out.
  """
  scored = _others_of_same_class(index.labels) > 0
  return float(np.mean(_hits(index, 1, chunk_size)[scored, 0]))


def map_at_r(index: EmbeddingIndex, chunk_size: int = CHUNK_SIZE) -> float:
  """Mean average precision at R, leave-one-out (Musgrave et al. 2020, A Metric Learning Reality Check).

  For an item with R other items of its class, AP@R = (1/R) * sum over ranks i <= R of
  precision@i where the i-th neighbour is of its class (0 where not). Unlike precision@1 it
  rewards ranking the whole class first, and unlike plain MAP it does not reward ranking them
  anywhere in the list. Items alone in their class are left out.
  """
  r = _others_of_same_class(index.labels)
  k = int(r.max())
  hits = _hits(index, k, chunk_size) & (np.arange(k) < r[:, None])
  precision = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
  scored = r > 0
  return float(np.mean(np.sum(precision * hits, axis=1)[scored] / r[scored]))
