"""Losses against brute-force loops over every pair and triplet."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from siamese_jax import distances, losses
from siamese_jax.errors import UserError


def np_distances(x, y, squared=False):
  d = np.array([[np.sum((a - b) ** 2) for b in x.astype(np.float64)] for a in y.astype(np.float64)]).T
  return d if squared else np.sqrt(d)


def ref_triplet(embeddings, labels, margin, mining, squared=False):
  """The triplet loss by explicit loops over all (anchor, positive, negative)."""
  d = np_distances(embeddings, embeddings, squared)
  n = len(labels)
  per_anchor, per_pair, per_triplet = [], [], []
  for a in range(n):
    pos = [d[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
    neg = [d[a, k] for k in range(n) if labels[k] != labels[a]]
    if not pos or not neg:
      continue
    per_anchor.append(max(0.0, max(pos) - min(neg) + margin))
    for d_ap in pos:
      farther = [d_an for d_an in neg if d_an > d_ap]
      per_pair.append(max(0.0, d_ap - (min(farther) if farther else max(neg)) + margin))
      per_triplet += [max(0.0, d_ap - d_an + margin) for d_an in neg]
  if mining == 'batch_hard':
    values = per_anchor
  elif mining == 'semi_hard':
    values = per_pair
  else:
    values = [v for v in per_triplet if v > 0]
  return np.mean(values) if values else 0.0


def random_batch(seed, size=12, dim=4, classes=4):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(size, dim)).astype(np.float32), rng.integers(0, classes, size).astype(np.int32)


class TripletTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(mining=losses.MINING, squared=(False, True))
  def test_matches_brute_force(self, mining, squared):
    margin = 4.0 if squared else 1.0  # Both mix satisfied and violated triplets.
    loss_fn = self.variant(functools.partial(losses.triplet, margin=margin, mining=mining, squared=squared))
    for seed in range(3):
      embeddings, labels = random_batch(seed)
      expected = ref_triplet(embeddings, labels, margin, mining, squared)
      assert expected > 0
      chex.assert_trees_all_close(loss_fn(embeddings, labels), expected, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*losses.MINING)
  def test_degenerate_batches_finite_with_finite_grads(self, mining):
    loss_fn = self.variant(
        jax.value_and_grad(functools.partial(losses.triplet, margin=0.5, mining=mining))
    )
    # Collapsed: all distances 0, where a plain sqrt has no gradient.
    for collapsed in (False, True):
      embeddings = np.ones((4, 3), np.float32) if collapsed else random_batch(0, size=4, dim=3)[0]
      for labels in ([3, 3, 3, 3], [0, 1, 2, 3], [0, 0, 1, 1]):  # No negatives; no positives; both.
        loss, grad = loss_fn(embeddings, jnp.asarray(labels))
        chex.assert_trees_all_close(loss, ref_triplet(embeddings, labels, 0.5, mining), rtol=1e-5)
        chex.assert_tree_all_finite(grad)

  @parameterized.parameters(*losses.MINING)
  def test_singleton_class_is_only_a_negative(self, mining):
    embeddings, _ = random_batch(3, size=5)
    labels = np.array([0, 0, 1, 1, 2], np.int32)  # Class 2 has no positive for its anchor.
    expected = ref_triplet(embeddings, labels, 1.0, mining)
    chex.assert_trees_all_close(losses.triplet(embeddings, labels, 1.0, mining), expected, rtol=1e-5)

  def test_semi_hard_hand_computed(self):
    # A at 0 and 2, B at 1 and 2.4; margin 0.5. Per (anchor, positive):
    # 0: nearest farther negative 2.4 -> 2 - 2.4 + 0.5 = 0.1 (the hardest, 1, would give 1.5).
    # 2: no negative farther than 2 -> farthest negative 1 -> 2 - 1 + 0.5 = 1.5.
    # 1: no negative farther than 1.4 -> farthest negative 1 -> 1.4 - 1 + 0.5 = 0.9.
    # 2.4: nearest farther negative 2.4 -> 1.4 - 2.4 + 0.5 < 0 -> 0.
    embeddings = jnp.array([[0.0], [2.0], [1.0], [2.4]])
    loss = losses.triplet(embeddings, jnp.array([0, 0, 1, 1]), 0.5, 'semi_hard')
    chex.assert_trees_all_close(loss, (0.1 + 1.5 + 0.9 + 0.0) / 4, rtol=1e-5)

  def test_unknown_mining_lists_choices(self):
    with pytest.raises(UserError, match='batch_hard'):
      losses.triplet(jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32), 1.0, 'hardest')


class DistancesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(False, True)
  def test_pairwise_matches_numpy_and_zero_diagonal(self, squared):
    embeddings, _ = random_batch(4, size=7, dim=5)
    d = self.variant(functools.partial(distances.pairwise_distances, squared=squared))(embeddings)
    chex.assert_shape(d, (7, 7))
    chex.assert_trees_all_close(d, np_distances(embeddings, embeddings, squared), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.diagonal(d), 0.0)

  def test_cross_matches_numpy(self):
    x, _ = random_batch(5, size=3, dim=6)
    y, _ = random_batch(6, size=8, dim=6)
    d = distances.cross_distances(x, y)
    chex.assert_shape(d, (3, 8))
    chex.assert_trees_all_close(d, np_distances(x, y), rtol=1e-5, atol=1e-5)

  def test_gradient_finite_at_identical_embeddings(self):
    grad = jax.grad(lambda e: jnp.sum(distances.pairwise_distances(e)))(jnp.ones((3, 4)))
    chex.assert_tree_all_finite(grad)
    chex.assert_trees_all_close(grad, jnp.zeros((3, 4)))


class PairLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_bce_hand_computed(self):
    logits = jnp.array([0.0, 2.0, -1.0])
    labels = jnp.array([1, 0, 0])
    # -log(sigmoid(0)), -log(1 - sigmoid(2)), -log(1 - sigmoid(-1)).
    expected = (math.log(2) + math.log1p(math.exp(2)) + math.log1p(math.exp(-1))) / 3
    chex.assert_trees_all_close(self.variant(losses.binary_cross_entropy)(logits, labels), expected)

  @chex.variants(with_jit=True, without_jit=True)
  def test_contrastive_each_pair_kind(self):
    loss_fn = self.variant(functools.partial(losses.contrastive, margin=1.0))
    distances = jnp.array([0.3, 0.3, 1.5])
    chex.assert_trees_all_close(loss_fn(distances[:1], jnp.array([1])), 0.09)  # Similar: D^2.
    chex.assert_trees_all_close(loss_fn(distances[1:2], jnp.array([0])), 0.49)  # Dissimilar: (m - D)^2.
    chex.assert_trees_all_close(loss_fn(distances[2:], jnp.array([0])), 0.0)  # Dissimilar, beyond m.

  @chex.variants(with_jit=True, without_jit=True)
  def test_contrastive_positive_margin(self):
    loss_fn = self.variant(functools.partial(losses.contrastive, margin=1.0, positive_margin=0.2))
    chex.assert_trees_all_close(loss_fn(jnp.array([0.5]), jnp.array([1])), 0.09)  # Similar: (D - m+)^2.
    chex.assert_trees_all_close(loss_fn(jnp.array([0.1]), jnp.array([1])), 0.0)  # Similar, within m+.
    chex.assert_trees_all_close(loss_fn(jnp.array([0.3]), jnp.array([0])), 0.49)  # Dissimilar: unchanged.

  def test_contrastive_matches_loop(self):
    rng = np.random.default_rng(7)
    distances = rng.uniform(0, 2, 20).astype(np.float32)
    labels = rng.integers(0, 2, 20)
    margin = 1.2
    for positive_margin in (0.0, 0.4):
      expected = np.mean([
          max(0.0, d - positive_margin) ** 2 if y else max(0.0, margin - d) ** 2
          for d, y in zip(distances.astype(np.float64), labels)
      ])
      chex.assert_trees_all_close(losses.contrastive(distances, labels, margin, positive_margin), expected,
                                  rtol=1e-6)

  def test_pair_losses_have_finite_grads_at_zero_distance(self):
    grads = jax.grad(
        lambda x: losses.contrastive(distances.pairwise_distances(x)[0, 1:], jnp.array([1, 0]), 1.0)
    )(jnp.zeros((3, 2)))
    chex.assert_tree_all_finite(grads)


class InstanceDiscriminationTest(chex.TestCase):

  @staticmethod
  def reference(views1, views2, temperature):
    """NT-Xent by a loop over the 2N anchors, in float64."""
    z = np.concatenate([views1, views2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(views1)
    total = 0.0
    for i in range(2 * n):
      partner = (i + n) % (2 * n)
      others = [np.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i]
      total -= np.log(np.exp(z[i] @ z[partner] / temperature) / np.sum(others))
    return total / (2 * n)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loop(self):
    rng = np.random.default_rng(3)
    views1, views2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
    for temperature in (0.1, 0.5):
      loss_fn = self.variant(functools.partial(losses.instance_discrimination, temperature=temperature))
      chex.assert_trees_all_close(loss_fn(views1, views2), self.reference(views1, views2, temperature), rtol=1e-5)

  def test_matching_views_score_lower_and_scale_is_ignored(self):
    rng = np.random.default_rng(4)
    views = rng.normal(size=(8, 4)).astype(np.float32)
    aligned = losses.instance_discrimination(views, 3.0 * views, 0.2)
    shuffled = losses.instance_discrimination(views, views[::-1], 0.2)
    assert aligned < shuffled
    chex.assert_trees_all_close(aligned, losses.instance_discrimination(views, views, 0.2), rtol=1e-6)


def test_brute_force_reference_counts_every_triplet():
  # Guards the reference itself: 2 classes of 2 give 4 (a, p) pairs with 2 negatives each.
  embeddings = np.array([[0.0], [1.0], [3.0], [3.5]], np.float32)
  labels = np.array([0, 0, 1, 1])
  assert ref_triplet(embeddings, labels, 10.0, 'batch_all') == pytest.approx(np.mean([
      1 - 3 + 10, 1 - 3.5 + 10, 1 - 2 + 10, 1 - 2.5 + 10,  # Anchors 0 and 1.
      0.5 - 3 + 10, 0.5 - 2 + 10, 0.5 - 3.5 + 10, 0.5 - 2.5 + 10,  # Anchors 2 and 3.
  ]))
