"""Classification by comparison with labelled reference images (the malaria task).

A Siamese network has no classifier: it classifies a query by comparing it with K labelled references
of each class, drawn once from `reference_split`, and picks the class it is most similar to on average
(ties at random). For two classes, `threshold_split` instead places the decision point on the
difference of the two mean similarities where it is most accurate on that split's queries: classes
that differ in spread (malaria's varied parasitized cells against uniform uninfected ones) shift the
means, so "most similar on average" can sit away from the best point even when the ranking (AUC) is
good. With `knn` > 0 the embeddings are also judged on their own, by a k-nearest-neighbour
vote over every image of the reference split.
"""

from __future__ import annotations

import numpy as np

from siamese_jax import embedding_index, evaluators, inference, metrics
from siamese_jax.errors import UserError
from siamese_jax.evaluators.retrieval import subsample


def draw_references(rng: np.random.Generator, image_set, shots: int, split: str) -> np.ndarray:
  """int [C, shots]: `shots` distinct images of each class of `image_set`."""
  by_class = [np.flatnonzero(image_set.labels == c) for c in range(image_set.num_classes)]
  for name, members in zip(image_set.class_names, by_class):
    if len(members) < shots:
      raise UserError(f'shots={shots} but class {name!r} has {len(members)} images in {split!r}; lower shots')
  return np.stack([rng.choice(members, shots, replace=False) for members in by_class])


def knn_vote(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
  """The majority class of each row of neighbours [Q, k] (nearest first); a tied vote goes to the nearest."""
  k = neighbour_labels.shape[1]
  is_class = neighbour_labels[:, :, None] == np.arange(num_classes)  # [Q, k, C]
  votes = is_class.sum(axis=1)
  nearest_rank = np.where(is_class.any(axis=1), is_class.argmax(axis=1), k)
  return np.argmax(votes * (k + 1) - nearest_rank, axis=-1)  # Votes first; the rank only breaks ties.


def mean_similarity(scorer, queries: np.ndarray, references: np.ndarray, chunk: int) -> np.ndarray:
  """[Q, C]: each query's mean score against the references [C, K, D] of each class.

  `chunk` queries are compared at a time, the last chunk padded to full size so that a jitted scorer
  compiles once.
  """
  padded = np.zeros((-(-len(queries) // chunk) * chunk,) + queries.shape[1:], queries.dtype)
  padded[:len(queries)] = queries
  scores = [np.asarray(scorer.similarity(padded[start:start + chunk, None, None], references[None])).mean(-1)
            for start in range(0, len(padded), chunk)]
  return np.concatenate(scores)[:len(queries)]


def _class1_over_class0(scores: np.ndarray) -> np.ndarray:
  """[Q]: how much more a query is like class 1 than class 0, from two-class mean similarities [Q, 2]."""
  return scores[:, 1] - scores[:, 0]


class Evaluator:
  """Queries of `split` (all, or `max_queries`) against `shots` references per class from `reference_split`.

  `threshold_split` (two classes) chooses the decision point; `knn` > 0 adds a k-NN vote; `seed` draws the
  queries and references; `queries_per_chunk` queries are compared at a time.
  """

  def __init__(self, splits, *, split='validation', reference_split='train', threshold_split='', shots=5,
               max_queries=0, knn=5, seed=0, queries_per_chunk=256):
    self.queries = evaluators.get_split(splits, split, 'split')
    self.references = evaluators.get_split(splits, reference_split, 'reference_split')
    if reference_split == split:
      raise UserError(f'reference_split and split are both {split!r}; queries would be compared with '
                      'themselves: pick two different splits')
    if self.queries.class_names != self.references.class_names:
      raise UserError(f'{split!r} and {reference_split!r} have different classes; reference classification '
                      'needs the same classes in both')
    self.shots, self.knn, self.chunk, self.seed = shots, knn, queries_per_chunk, seed
    if self.shots < 1 or self.chunk < 1:
      raise UserError(f'shots={self.shots}, queries_per_chunk={self.chunk}; both must be at least 1')
    if not 0 <= self.knn <= len(self.references):
      raise UserError(f'knn={self.knn}; use 0 (off) up to the {len(self.references)} images of {reference_split!r}')
    # Queries and references are drawn once, so that every evaluation of a run scores the same task.
    rng = np.random.default_rng(self.seed)
    self.query_items = subsample(rng, len(self.queries), max_queries, 'max_queries')
    self.query_labels = self.queries.labels[self.query_items]
    if len(np.unique(self.query_labels)) < 2:
      raise UserError(f'the queries from {split!r} are all of one class; use a split (or max_queries) with two')
    self.reference_items = draw_references(rng, self.references, self.shots, reference_split)
    self.threshold_split = threshold_split
    if self.threshold_split:
      self._draw_threshold_queries(splits, split, reference_split, max_queries, rng)

  def _draw_threshold_queries(self, splits, split, reference_split, max_queries, rng):
    if self.threshold_split in (split, reference_split):
      raise UserError(f'threshold_split={self.threshold_split!r} is also split or reference_split; choose the '
                      'decision point on a third split (e.g. validation) so the score it reports stays honest')
    if self.references.num_classes != 2:
      raise UserError(f'threshold_split needs two classes; this dataset has {self.references.num_classes}')
    self.threshold_set = evaluators.get_split(splits, self.threshold_split, 'threshold_split')
    self.threshold_items = subsample(rng, len(self.threshold_set), max_queries, 'max_queries')
    self.threshold_labels = self.threshold_set.labels[self.threshold_items]
    if len(np.unique(self.threshold_labels)) < 2:
      raise UserError(f'the queries from {self.threshold_split!r} are all of one class; use a split with two')

  def __call__(self, scorer) -> dict[str, float]:
    queries = scorer.embed(self.queries.images[self.query_items])
    if self.knn:  # Every reference image is embedded for the vote; the K references are among them.
      gallery = scorer.embed(self.references.images)
      references = gallery[self.reference_items]
    else:
      references = scorer.embed(self.references.images[self.reference_items.ravel()])
      references = references.reshape(self.reference_items.shape + references.shape[-1:])
    scores = mean_similarity(scorer, queries, references, self.chunk)
    if self.threshold_split:
      chosen_on = mean_similarity(scorer, scorer.embed(self.threshold_set.images[self.threshold_items]), references,
                                  self.chunk)
      threshold = metrics.best_threshold(_class1_over_class0(chosen_on), self.threshold_labels)
      result = {'accuracy': metrics.accuracy_at(_class1_over_class0(scores), self.query_labels, threshold),
                'threshold': threshold}
    else:
      predicted = inference.pick_with_random_ties(np.random.default_rng(self.seed + 1), scores)
      result = {'accuracy': float(np.mean(predicted == self.query_labels))}
    if self.references.num_classes == 2:  # A threshold-free measure.
      result['auc'] = metrics.roc_auc(_class1_over_class0(scores), self.query_labels)
    if self.knn:
      index = embedding_index.Index(gallery.shape[1])
      index.add(gallery)
      voted = knn_vote(self.references.labels[index.search(queries, self.knn).ids], self.references.num_classes)
      result['knn_accuracy'] = float(np.mean(voted == self.query_labels))
    return result
