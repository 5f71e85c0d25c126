"""Losses for Siamese training: pair losses on head outputs and triplet losses with online mining.

Each loss is a pure, jit-able function that returns the scalar mean over its batch. They differ
in what they consume, which decides how batches are built:

- 'bce': `binary_cross_entropy(logits, labels)`, one logit per pair (a learned similarity head).
- 'contrastive': `contrastive(distances, labels, margin, positive_margin)`, one embedding distance per pair.
- 'triplet': `triplet(embeddings, labels, margin, mining)`, a batch of labelled embeddings [B, D]
  from which triplets are mined online.
- 'episodic': `episodic(scores, temperature)`, the similarities [E, Q, W] of each query of an episode to
  each of its W classes (the head's output, higher = more alike), classified by a softmax over them.
- `instance_discrimination(views1, views2, temperature)`: an unsupervised NT-Xent term between two
  distortions of the same images, added to a pair loss with weight `loss.instance_weight`.

Pair labels are 1 for a same-class pair and 0 otherwise throughout.

`LOSSES` maps each `loss.name` to a `Loss`: what it consumes, and a function of those inputs and the
batch labels that gives the loss and a training accuracy; its keyword arguments are the `loss` keys it
reads. `train.objective` builds the inputs the entry asks for and `config_schema.validate` derives the
batch kind and the heads allowed from it, so a new loss is one entry here plus its config line.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from siamese_jax.distances import gram, pairwise_distances, unit_length
from siamese_jax.errors import UserError

MINING = ('batch_all', 'batch_hard', 'semi_hard')


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean sigmoid cross-entropy of pair logits [B] against pair labels [B] (1 = same class)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))


def contrastive(distances: jax.Array, labels: jax.Array, margin: float, positive_margin: float = 0.0) -> jax.Array:
  """Mean contrastive loss (Hadsell, Chopra & LeCun 2006) of pair distances [B].

  Per pair: y * max(0, D - positive_margin)^2 + (1 - y) * max(0, margin - D)^2, pulling same-class
  pairs together and pushing different-class pairs at least `margin` apart. With the default
  `positive_margin` of 0 this is Hadsell et al.'s loss; a positive one (the double-margin form) stops
  pulling a same-class pair once it is that close, so a class is not squeezed into a single point and
  the embedding keeps more of what tells images apart within a class.

  Label convention: y = 1 for a similar (same-class) pair, 0 for a dissimilar one, matching the
  other losses here. Hadsell et al. use the opposite (Y = 0 for similar). We also drop their
  factor 1/2, so this loss and its gradients are twice theirs.
  """
  y = labels.astype(distances.dtype)
  per_pair = y * jax.nn.relu(distances - positive_margin) ** 2 + (1.0 - y) * jax.nn.relu(margin - distances) ** 2
  return jnp.mean(per_pair)


def instance_discrimination(views1: jax.Array, views2: jax.Array, temperature: float) -> jax.Array:
  """NT-Xent (Chen et al. 2020, SimCLR) between two views [N, D] of the same N images.

  Each embedding's positive is the other view of its image; its negatives are both views of every
  other image in the batch, whatever their class. Cosine similarities are divided by `temperature`.
  Class labels play no part: the term spreads the embedding over the sphere and keeps what tells two
  images apart even within a class, which classes unseen in training need.
  """
  z = unit_length(jnp.concatenate([views1, views2]))
  n = len(views1)
  logits = gram(z, z) / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, partner))


def episodic(scores: jax.Array, temperature: float, symmetric: bool = False) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy of classifying each query among the classes of its episode, and its accuracy.

  Args:
    scores: float [E, W * Q, W]: for each of E episodes, the similarity of each query to each of the W
      classes (higher = more alike), queries in class-major order: query q belongs to class q // Q.
    temperature: the similarities are divided by it before the softmax.
    symmetric: also classify each class's support among the episode's queries (the transposed scores,
      which needs one query per class) and average the two losses: a second W-way decision from the same
      similarities, as CLIP's loss takes both directions of its batch.

  Every query is compared with every class of its episode at once, so each step trains against W - 1
  negatives per query instead of one: the N-way decision the one-shot task asks for (Vinyals et al.
  2016; Snell et al. 2017).

  Returns:
    (loss, accuracy), both scalars.
  """
  ways = scores.shape[-1]
  targets = jnp.repeat(jnp.arange(ways), scores.shape[1] // ways)
  targets = jnp.broadcast_to(targets, scores.shape[:2])
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(scores / temperature, targets))
  if symmetric:
    if scores.shape[1] != ways:
      raise ValueError(f'a symmetric episodic loss needs one query per class, not scores of shape {scores.shape}')
    transposed = jnp.swapaxes(scores, 1, 2) / temperature
    loss = (loss + jnp.mean(optax.softmax_cross_entropy_with_integer_labels(transposed, targets))) / 2
  return loss, jnp.mean(jnp.argmax(scores, axis=-1) == targets)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of values where mask holds; 0 (with zero gradient) when it holds nowhere."""
  return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def triplet(
    embeddings: jax.Array,
    labels: jax.Array,
    margin: float,
    mining: str,
    squared: bool = False,
) -> jax.Array:
  """Triplet margin loss max(0, d(a, p) - d(a, n) + margin) with triplets mined in the batch.

  Args:
    embeddings: float [B, D].
    labels: int [B], the class of each embedding.
    margin: the required gap between the negative and the positive distance.
    mining: how triplets are chosen, each anchor being every item of the batch:
      'batch_all' (Hermans et al. 2017, their "BA≠0"): every valid (a, p, n), averaged over those
        with positive loss only, so that the many already-satisfied triplets do not dilute the
        gradient as training proceeds.
      'batch_hard' (Hermans et al. 2017): per anchor, its farthest positive and nearest negative;
        averaged over anchors.
      'semi_hard' (Schroff et al. 2015): per (anchor, positive) pair, the nearest negative that
        is farther than the positive (inside the margin if it contributes at all). When no
        negative is farther, it falls back to the anchor's farthest negative, the easiest of the
        hard ones, which still gives a signal without the collapse that the hardest negatives
        cause early on (as TensorFlow Addons does); averaged over all (anchor, positive) pairs.
    squared: use squared Euclidean distances (as FaceNet) instead of distances (as Hermans et al.).

  Anchors without a positive or without a negative in the batch are left out; a batch without
  any valid triplet gives 0.

  Returns:
    The scalar loss.
  """
  if mining not in MINING:
    raise UserError(f'unknown triplet mining {mining!r}; choose one of {", ".join(MINING)}')
  d = pairwise_distances(embeddings, squared)
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(len(labels), dtype=bool)  # [anchor, positive]
  negative = ~same  # [anchor, negative]
  has_negative = jnp.any(negative, axis=1)

  if mining == 'batch_hard':
    hardest_positive = jnp.max(jnp.where(positive, d, 0.0), axis=1)
    hardest_negative = jnp.min(jnp.where(negative, d, jnp.inf), axis=1)
    loss = jax.nn.relu(hardest_positive - hardest_negative + margin)
    return _masked_mean(loss, jnp.any(positive, axis=1) & has_negative)

  d_ap = d[:, :, None]  # [a, p, 1]
  d_an = d[:, None, :]  # [a, 1, n]
  if mining == 'batch_all':
    loss = jax.nn.relu(d_ap - d_an + margin)
    valid = positive[:, :, None] & negative[:, None, :]
    return _masked_mean(loss, valid & (loss > 0))

  farther = negative[:, None, :] & (d_an > d_ap)  # [a, p, n]
  nearest_farther = jnp.min(jnp.where(farther, d_an, jnp.inf), axis=2)
  farthest_negative = jnp.max(jnp.where(negative, d, 0.0), axis=1, keepdims=True)
  chosen = jnp.where(jnp.any(farther, axis=2), nearest_farther, farthest_negative)
  loss = jax.nn.relu(d - chosen + margin)
  return _masked_mean(loss, positive & has_negative[:, None])


@dataclasses.dataclass(frozen=True)
class Loss:
  """A training loss and what it consumes.

  consumes: 'logit' or 'distance' (the head's output for each pair of a batch of pairs), 'embeddings'
    (an M-per-class batch of embeddings [B, D]) or 'episodes' (`train.episode_scores` of an M-per-class
    batch split into episodes).
  fn: (inputs, labels, **loss keys) -> (loss, accuracy), both scalars.
  """

  consumes: str
  fn: Callable[..., tuple[jax.Array, jax.Array]]

  @property
  def pairs(self) -> bool:
    """Trains on batches of pairs (else on M-per-class batches)."""
    return self.consumes in ('logit', 'distance')

  @property
  def head(self) -> str | None:
    """The head output kind the network needs; None: any head.

    A loss on embeddings trains no head parameters, so it needs a head without any (a distance).
    """
    return {'logit': 'logit', 'distance': 'distance', 'embeddings': 'distance'}.get(self.consumes)


def _bce(logits, labels):
  return binary_cross_entropy(logits, labels), jnp.mean((logits > 0) == (labels == 1))


def _contrastive(distances, labels, *, margin, positive_margin):
  # A training-time proxy for accuracy, midway between the margins; evaluation picks thresholds.
  predicted_same = distances < (margin + positive_margin) / 2
  return contrastive(distances, labels, margin, positive_margin), jnp.mean(predicted_same == (labels == 1))


def _triplet(embeddings, labels, *, margin, mining):
  distances = pairwise_distances(embeddings) + jnp.where(jnp.eye(len(labels)), jnp.inf, 0.0)
  precision_at_1 = jnp.mean(labels[jnp.argmin(distances, axis=1)] == labels)
  return triplet(embeddings, labels, margin, mining), precision_at_1


def _episodic(scores, labels, *, temperature, symmetric):
  del labels  # Each query's class is its position in the episode.
  return episodic(scores, temperature, symmetric)


LOSSES = {
    'bce': Loss('logit', _bce),
    'contrastive': Loss('distance', _contrastive),
    'triplet': Loss('embeddings', _triplet),
    'episodic': Loss('episodes', _episodic),
}
