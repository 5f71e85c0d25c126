"""Pair and M-per-class samplers: labels right, balance, groups respected, determinism."""

import chex
import jax
import numpy as np
import pytest

from siamese_jax import samplers
from siamese_jax.errors import UserError


def layout_for(labels, groups):
  return samplers.class_layout(np.asarray(labels), np.asarray(groups))


@pytest.fixture
def labels_groups():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(30), rng.integers(1, 6, 30))  # some classes have a single image
  groups = labels // 5  # 6 groups of 5 classes
  perm = rng.permutation(len(labels))
  return labels[perm].astype(np.int32), groups[perm].astype(np.int32)


@pytest.mark.parametrize('fraction', [0.5, 0.25, 1.0, 0.0])
def test_pairs_labels_and_balance(labels_groups, fraction):
  labels, groups = labels_groups
  layout = layout_for(labels, groups)
  indices, pair_labels = jax.jit(samplers.sample_pairs, static_argnums=(2, 3, 4))(
      jax.random.key(1), layout, 64, fraction, 0.5)
  chex.assert_shape(indices, (64, 2))
  indices, pair_labels = np.asarray(indices), np.asarray(pair_labels)
  assert pair_labels.sum() == round(64 * fraction)
  same = labels[indices[:, 0]] == labels[indices[:, 1]]
  np.testing.assert_array_equal(same, pair_labels == 1)
  positives = indices[pair_labels == 1]
  assert np.all(positives[:, 0] != positives[:, 1])  # two distinct images


def test_same_group_negatives(labels_groups):
  labels, groups = labels_groups
  layout = layout_for(labels, groups)
  for prob, expect in ((1.0, 1.0), (0.0, 4 / 29)):
    indices, pair_labels = samplers.sample_pairs(jax.random.key(2), layout, 4000, 0.0, prob)
    indices = np.asarray(indices)
    same_group = np.mean(groups[indices[:, 0]] == groups[indices[:, 1]])
    assert same_group == pytest.approx(expect, abs=0.03)
    assert not np.any(labels[indices[:, 0]] == labels[indices[:, 1]])


def test_pairs_are_deterministic(labels_groups):
  layout = layout_for(*labels_groups)
  a = samplers.sample_pairs(jax.random.key(3), layout, 16)
  b = samplers.sample_pairs(jax.random.key(3), layout, 16)
  c = samplers.sample_pairs(jax.random.key(4), layout, 16)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a[0], c[0])


def test_m_per_class_batch(labels_groups):
  labels, groups = labels_groups
  layout = layout_for(labels, groups)
  indices, batch_labels = samplers.sample_classes(jax.random.key(5), layout, 8, 4)
  indices, batch_labels = np.asarray(indices), np.asarray(batch_labels)
  chex.assert_shape(indices, (32,))
  np.testing.assert_array_equal(labels[indices], batch_labels)
  per_class = batch_labels.reshape(8, 4)
  assert len(set(per_class[:, 0])) == 8 and np.all(per_class == per_class[:, :1])
  for row, klass in zip(indices.reshape(8, 4), per_class[:, 0]):
    available = np.sum(labels == klass)
    assert len(set(row)) == min(4, available)  # distinct while the class has enough images


def test_layout_needs_two_classes():
  with pytest.raises(UserError):
    layout_for(np.zeros(5, np.int32), np.zeros(5, np.int32))
