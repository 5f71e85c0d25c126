"""Retrieval over a split's embeddings: precision@1 and MAP@R, each item querying all the others.

The items go into an `embedding_index.Index` (exact search), the code a stored embedding database
searches with, so these are the figures a user of the database gets when its model's head compares by
the same metric. This judges the embedding space itself (e.g. on CIFAR-100 test): the distances are the
config's 'euclidean' or 'cosine', whatever head the network was trained with.
"""

from __future__ import annotations

import numpy as np

from siamese_jax import embedding_index, evaluators
from siamese_jax.errors import UserError

METRICS = ('euclidean', 'cosine')  # The index's metrics that need no head parameters.


def subsample(rng: np.random.Generator, n: int, max_items: int, key: str):
  """Which of n items to use: all (a slice, so that indexing copies nothing) or `max_items` at random.

  The chosen indices are sorted so that a subsample keeps the split's order.
  """
  if max_items < 0:
    raise UserError(f'{key}={max_items}; use a positive number, or 0 for all')
  if not max_items or max_items >= n:
    return slice(None)
  return np.sort(rng.choice(n, max_items, replace=False))


class Evaluator:
  """The items of `split` (all, or `max_items` drawn by `seed`) searched by `metric` ('euclidean' or 'cosine')."""

  def __init__(self, splits, *, split='validation', metric='euclidean', max_items=0, seed=0):
    self.metric = metric
    if self.metric not in METRICS:
      raise UserError(f'metric={self.metric!r}; choose one of {", ".join(METRICS)}')
    image_set = evaluators.get_split(splits, split, 'split')
    items = subsample(np.random.default_rng(seed), len(image_set), max_items, 'max_items')
    self.images = image_set.images[items]
    self.labels = image_set.labels[items]
    self.ids = np.arange(len(image_set))[items]  # Positions in the split, the items' sources in the index.
    self.split = split
    _, counts = np.unique(self.labels, return_counts=True)
    if len(counts) < 2 or counts.max() < 2:
      raise UserError(f'retrieval on {split!r} needs two classes, one with two items; the {len(self.labels)} '
                      f'items used have {len(counts)} classes of at most {counts.max(initial=0)} (raise max_items?)')

  def index(self, scorer) -> embedding_index.Index:
    """The embeddings of the items, labelled, ready to query or save."""
    embeddings = scorer.embed(self.images)
    index = embedding_index.Index(embeddings.shape[1], self.metric)
    index.add(embeddings, self.labels, [f'split:{self.split}:{i}' for i in self.ids])
    return index

  def __call__(self, scorer) -> dict[str, float]:
    index = self.index(scorer)
    return {'precision_at_1': embedding_index.precision_at_1(index), 'map_at_r': embedding_index.map_at_r(index)}
