"""Exact retrieval and its metrics against brute-force numpy loops."""

import chex
import numpy as np
import pytest

from siamese_jax import retrieval
from siamese_jax.errors import UserError


def ref_distances(queries, gallery, metric):
  queries, gallery = queries.astype(np.float64), gallery.astype(np.float64)
  if metric == 'cosine':
    return np.array([[1 - q @ g / np.linalg.norm(q) / np.linalg.norm(g) for g in gallery] for q in queries])
  return np.array([[np.linalg.norm(q - g) for g in gallery] for q in queries])


def ref_query(queries, gallery, k, metric, exclude=None):
  d = ref_distances(queries, gallery, metric)
  if exclude is not None:
    d[np.arange(len(queries)), exclude] = np.inf
  order = np.argsort(d, axis=1, kind='stable')[:, :k]
  return order, np.take_along_axis(d, order, axis=1)


def ref_precision_and_map(embeddings, labels):
  """P@1 and MAP@R by explicit loops over queries, leaving each query and singleton classes out."""
  neighbours, _ = ref_query(embeddings, embeddings, len(labels) - 1, 'euclidean', np.arange(len(labels)))
  p_at_1, ap_at_r = [], []
  for i, row in enumerate(neighbours):
    r = np.sum(labels == labels[i]) - 1
    if r == 0:
      continue
    hits = labels[row[:r]] == labels[i]
    p_at_1.append(hits[0])
    ap_at_r.append(sum(hits[:j + 1].sum() / (j + 1) for j in range(r) if hits[j]) / r)
  return np.mean(p_at_1), np.mean(ap_at_r)


def random_set(seed, n=40, dim=6, classes=5):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, classes, n)


@pytest.mark.parametrize('metric', retrieval.METRICS)
def test_query_matches_brute_force(metric):
  gallery, labels = random_set(0)
  queries, _ = random_set(1, n=15)
  indices, distances = retrieval.EmbeddingIndex(gallery, labels, metric=metric).query(queries, k=5)
  expected_indices, expected_distances = ref_query(queries, gallery, 5, metric)
  chex.assert_shape((indices, distances), (15, 5))
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('metric', retrieval.METRICS)
def test_leave_one_out_never_returns_the_query(metric):
  gallery, labels = random_set(2)
  indices, _ = retrieval.EmbeddingIndex(gallery, labels, metric=metric).leave_one_out(k=4)
  assert not np.any(indices == np.arange(len(gallery))[:, None])
  np.testing.assert_array_equal(indices, ref_query(gallery, gallery, 4, metric, np.arange(len(gallery)))[0])


def test_chunking_gives_the_same_answer():
  gallery, labels = random_set(3, n=50)
  index = retrieval.EmbeddingIndex(gallery, labels)
  whole_indices, whole_distances = index.leave_one_out(k=6, chunk_size=50)
  for chunk_size in (1, 7, 64):  # Single rows, a ragged last chunk, one oversized chunk.
    indices, distances = index.leave_one_out(k=6, chunk_size=chunk_size)
    np.testing.assert_array_equal(indices, whole_indices)
    np.testing.assert_allclose(distances, whole_distances, rtol=1e-6)  # Matmul shapes differ by chunk.


def test_metrics_match_brute_force_with_a_singleton_class():
  embeddings, labels = random_set(4)
  labels[7] = 99  # A class of one: no right answer, so left out.
  index = retrieval.EmbeddingIndex(embeddings, labels)
  expected_p, expected_map = ref_precision_and_map(embeddings, labels)
  assert 0 < expected_map < expected_p < 1
  assert retrieval.precision_at_1(index) == pytest.approx(expected_p)
  assert retrieval.map_at_r(index, chunk_size=16) == pytest.approx(expected_map)


def test_metrics_hand_computed():
  # A at 0, 1, 2 and B at 1.4, 9, 10 (each R = 2). Top-2 hits: A0 [y n], A1 [n y], A2 [n y],
  # B1.4 [n n], B9 [y n], B10 [y n].
  index = retrieval.EmbeddingIndex(np.array([[0.0], [1.0], [2.0], [1.4], [9.0], [10.0]]), [0, 0, 0, 1, 1, 1])
  assert retrieval.precision_at_1(index) == pytest.approx(3 / 6)
  assert retrieval.map_at_r(index) == pytest.approx((1 / 2 + 1 / 4 + 1 / 4 + 0 + 1 / 2 + 1 / 2) / 6)


def test_perfect_clusters_score_one():
  rng = np.random.default_rng(5)
  labels = np.repeat(np.arange(4), 6)
  embeddings = 100.0 * np.eye(8)[labels] + rng.normal(size=(24, 8))
  index = retrieval.EmbeddingIndex(embeddings, labels, metric='cosine')
  assert retrieval.precision_at_1(index) == 1.0
  assert retrieval.map_at_r(index) == 1.0


@pytest.mark.parametrize('with_ids', (False, True))
def test_save_load_round_trip(tmp_path, with_ids):
  embeddings, labels = random_set(6, n=10)
  ids = np.array([f'img_{i}.png' for i in range(10)]) if with_ids else None
  index = retrieval.EmbeddingIndex(embeddings, labels, ids=ids, metric='cosine')
  path = tmp_path / 'index.npz'
  index.save(path)
  loaded = retrieval.EmbeddingIndex.load(path)
  assert loaded.metric == 'cosine'
  chex.assert_trees_all_equal(
      (loaded.embeddings, loaded.labels, loaded.ids), (index.embeddings, index.labels, index.ids)
  )
  chex.assert_trees_all_equal(loaded.leave_one_out(3), index.leave_one_out(3))


def test_user_errors(tmp_path):
  embeddings, labels = random_set(7, n=5)
  with pytest.raises(UserError, match='euclidean, cosine'):
    retrieval.EmbeddingIndex(embeddings, labels, metric='manhattan')
  with pytest.raises(UserError, match='4 candidates'):
    retrieval.EmbeddingIndex(embeddings, labels).leave_one_out(k=5)
  with pytest.raises(UserError, match='at least two items'):
    retrieval.precision_at_1(retrieval.EmbeddingIndex(embeddings, np.arange(5)))
  with pytest.raises(UserError, match='missing.npz'):
    retrieval.EmbeddingIndex.load(tmp_path / 'missing.npz')
  (tmp_path / 'bad.npz').write_text('not an archive')
  with pytest.raises(UserError, match='bad.npz'):
    retrieval.EmbeddingIndex.load(tmp_path / 'bad.npz')
