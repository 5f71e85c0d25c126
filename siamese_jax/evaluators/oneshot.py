"""N-way K-shot classification episodes (Koch et al.'s and Lake et al.'s one-shot task).

An episode draws N classes (from one group, e.g. one alphabet, when `within_group`), K support images
and one query per class; each query is assigned the class whose support images it is most similar to
(mean score over the K shots). Every image of the split is embedded once per evaluation, episodes index
into those embeddings, and ties are broken at random.
"""

from __future__ import annotations

import numpy as np

from siamese_jax import evaluators, inference, metrics
from siamese_jax.errors import UserError


def sample_episodes(rng: np.random.Generator, labels: np.ndarray, groups: np.ndarray, ways: int, shots: int,
                    episodes: int, within_group: bool):
  """Image indices of `episodes` episodes.

  Returns:
    support int [E, ways, shots] and query int [E, ways]; query i belongs to support class i.
  """
  by_class = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
  eligible = np.array([len(members) >= shots + 1 for members in by_class])
  class_group = np.zeros(len(by_class), np.int64)
  class_group[labels] = groups
  if within_group:
    pools = [np.flatnonzero(eligible & (class_group == g)) for g in np.unique(groups)]
  else:
    pools = [np.flatnonzero(eligible)]
  pools = [pool for pool in pools if len(pool) >= ways]
  if not pools:
    raise UserError(f'no {"group" if within_group else "split"} has {ways} classes with {shots + 1} images '
                    f'for {ways}-way {shots}-shot episodes')
  support = np.empty((episodes, ways, shots), np.int64)
  query = np.empty((episodes, ways), np.int64)
  for e in range(episodes):
    pool = pools[rng.integers(len(pools))]
    for i, c in enumerate(rng.choice(pool, ways, replace=False)):
      picked = rng.choice(by_class[c], shots + 1, replace=False)
      support[e, i], query[e, i] = picked[:shots], picked[shots]
  return support, query


def choose_classes(scorer, rng: np.random.Generator, queries: np.ndarray, support: np.ndarray) -> np.ndarray:
  """The class each query is assigned: the one whose support images it is most similar to on average.

  Args:
    scorer: compares embeddings (`inference.Scorer`).
    rng: breaks ties at random (`inference.pick_with_random_ties`).
    queries: embeddings [..., Q, D].
    support: embeddings [..., W, K, D], K images of each of W classes.

  Returns:
    int [..., Q], an index into the W classes for each query.
  """
  scores = scorer.similarity(queries[..., :, None, None, :], support[..., None, :, :, :]).mean(-1)  # [..., Q, W]
  return inference.pick_with_random_ties(rng, scores)


class Evaluator:
  """`ways`-way `shots`-shot episodes drawn once from `split` (by `seed`), scored `episodes_per_chunk` at a time."""

  def __init__(self, splits, *, split='validation', ways=20, shots=1, episodes=320, within_group=True, seed=0,
               episodes_per_chunk=16):
    self.split = evaluators.get_split(splits, split, 'split')
    self.ways, self.shots, self.seed, self.chunk = ways, shots, seed, episodes_per_chunk
    # The episodes are fixed once, so every evaluation of a run scores the same tasks.
    self.support, self.query = sample_episodes(
        np.random.default_rng(seed), self.split.labels, self.split.groups, ways, shots, episodes, within_group)

  def __call__(self, scorer) -> dict[str, float]:
    embeddings = scorer.embed(self.split.images)
    rng = np.random.default_rng(self.seed + 1)
    correct = []
    for start in range(0, len(self.query), self.chunk):
      query = embeddings[self.query[start:start + self.chunk]]  # [e, W, D]
      support = embeddings[self.support[start:start + self.chunk]]  # [e, W, K, D]
      correct.append(choose_classes(scorer, rng, query, support) == np.arange(self.ways))
    per_episode = np.concatenate(correct).mean(axis=1)
    mean, ci95 = metrics.mean_and_ci95(per_episode)
    return {'accuracy': float(mean), 'ci95': float(ci95)}
