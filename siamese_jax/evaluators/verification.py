"""Pair verification: is this pair of images of one class? Accuracy, AUC and EER on fixed pairs.

The decision threshold is chosen on pairs of `threshold_split` (metrics.best_threshold) and applied to
the pairs of `split`, because a head's scores have no fixed scale: 0.5 only suits a calibrated
probability, and a distance head's scores (negated distances) are never near it. When the two splits
are the same, the threshold pairs are a second, independent draw from that split, so the threshold is
not fitted to the very pairs it is scored on (on a small split the draws may share a few pairs).
"""

from __future__ import annotations

import numpy as np

from siamese_jax import evaluators, metrics
from siamese_jax.errors import UserError


def verification_pairs(rng: np.random.Generator, labels: np.ndarray, num_pairs: int, split: str = 'the split'):
  """`num_pairs` image pairs, the first half of one class each and the rest of two different classes.

  Classes are drawn uniformly, not in proportion to their size, so that one large class does not make
  up most pairs: a same pair takes a class with two images or more and two distinct images of it, a
  different pair takes two distinct classes and one image of each.

  Returns:
    pairs int [P, 2] of indices into `labels`, and int32 [P] pair labels: 1 same class, 0 different.
  """
  if num_pairs < 2:
    raise UserError(f'pairs={num_pairs}; verification needs at least one same and one different pair')
  classes, counts = np.unique(labels, return_counts=True)
  eligible = np.flatnonzero(counts >= 2)
  if len(classes) < 2 or not len(eligible):
    raise UserError(f'verification pairs need two classes, one with two images, but {split!r} has '
                    f'{len(classes)} classes of at most {counts.max(initial=0)} images')
  order = np.argsort(labels, kind='stable')
  starts = np.cumsum(counts) - counts

  def member(c, i):  # The i-th image of the c-th class.
    return order[starts[c] + i]

  num_same = num_pairs // 2
  same = rng.choice(eligible, num_same)
  first = rng.integers(counts[same])
  second = rng.integers(counts[same] - 1)
  second += second >= first  # Distinct from `first`.
  num_different = num_pairs - num_same
  class_a = rng.integers(len(classes), size=num_different)
  class_b = rng.integers(len(classes) - 1, size=num_different)
  class_b += class_b >= class_a  # Distinct from `class_a`.
  pairs = np.concatenate([
      np.stack([member(same, first), member(same, second)], axis=1),
      np.stack([member(class_a, rng.integers(counts[class_a])), member(class_b, rng.integers(counts[class_b]))],
               axis=1),
  ])
  return pairs, np.repeat(np.array([1, 0], np.int32), [num_same, num_different])


def pair_scores(scorer, images: np.ndarray, *pair_sets: np.ndarray) -> list[np.ndarray]:
  """Scores of each set of index pairs into `images`, embedding every image they use exactly once."""
  used, position = np.unique(np.concatenate(pair_sets).ravel(), return_inverse=True)
  embeddings = scorer.embed(images[used])[position.reshape(-1, 2)]
  scores = np.asarray(scorer.similarity(embeddings[:, 0], embeddings[:, 1]))
  return np.split(scores, np.cumsum([len(pairs) for pairs in pair_sets])[:-1])


class Evaluator:
  """`pairs` pairs of `split` scored at the threshold chosen on `pairs` pairs of `threshold_split` (drawn by `seed`).

  Attributes:
    pairs, labels: the test pairs (int [P, 2] into `split`) and their labels (1 same, 0 different).
    threshold_pairs, threshold_labels: the pairs of `threshold_split` that choose the threshold.
  """

  def __init__(self, splits, *, split='validation', threshold_split='validation', pairs=2000, seed=0):
    self.split = evaluators.get_split(splits, split, 'split')
    self.threshold_set = evaluators.get_split(splits, threshold_split, 'threshold_split')
    self.same_split = split == threshold_split
    # Drawn once, so that every evaluation of a run scores the same pairs.
    rng = np.random.default_rng(seed)
    self.pairs, self.labels = verification_pairs(rng, self.split.labels, pairs, split)
    self.threshold_pairs, self.threshold_labels = verification_pairs(rng, self.threshold_set.labels, pairs,
                                                                     threshold_split)

  def scores(self, scorer) -> np.ndarray:
    """Scores [P] of the test pairs `self.pairs` (higher = more alike), e.g. to plot their histograms."""
    return pair_scores(scorer, self.split.images, self.pairs)[0]

  def __call__(self, scorer) -> dict[str, float]:
    if self.same_split:
      threshold_scores, scores = pair_scores(scorer, self.split.images, self.threshold_pairs, self.pairs)
    else:
      threshold_scores = pair_scores(scorer, self.threshold_set.images, self.threshold_pairs)[0]
      scores = self.scores(scorer)
    return metrics.verification_report(threshold_scores, self.threshold_labels, scores, self.labels)
