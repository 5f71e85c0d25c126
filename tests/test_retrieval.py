"""Exact search of `embedding_index.Index` and the retrieval metrics against brute-force numpy loops."""

import chex
import numpy as np
import pytest

from siamese_jax import embedding_index
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


def make_index(embeddings, labels=None, metric='euclidean', sources=None):
  embeddings = np.asarray(embeddings, np.float32)
  index = embedding_index.Index(embeddings.shape[1], metric)
  index.add(embeddings, labels, sources)
  return index


METRICS = ('euclidean', 'cosine')


@pytest.mark.parametrize('metric', METRICS)
def test_query_matches_brute_force(metric):
  gallery, labels = random_set(0)
  queries, _ = random_set(1, n=15)
  found = make_index(gallery, labels, metric).search(queries, k=5)
  expected_indices, expected_distances = ref_query(queries, gallery, 5, metric)
  chex.assert_shape((found.ids, found.scores, found.labels), (15, 5))
  np.testing.assert_array_equal(found.ids, expected_indices)
  np.testing.assert_allclose(-found.scores, expected_distances, rtol=1e-5, atol=1e-5)  # Scores are -distance.
  np.testing.assert_array_equal(found.labels, labels[expected_indices].astype(str))


@pytest.mark.parametrize('metric', METRICS)
def test_leave_one_out_never_returns_the_query(metric):
  gallery, labels = random_set(2)
  indices = make_index(gallery, labels, metric).leave_one_out(k=4).ids
  assert not np.any(indices == np.arange(len(gallery))[:, None])
  np.testing.assert_array_equal(indices, ref_query(gallery, gallery, 4, metric, np.arange(len(gallery)))[0])


def test_leave_one_out_with_duplicates_leaves_out_only_the_query():
  gallery = np.repeat(random_set(8, n=5)[0], 3, axis=0)  # Each vector three times: ties at distance 0.
  found = make_index(gallery, np.arange(15)).leave_one_out(k=2)
  assert not np.any(found.ids == np.arange(15)[:, None])
  np.testing.assert_array_equal(found.ids // 3, np.arange(15)[:, None] // 3 * np.ones((1, 2), int))
  np.testing.assert_allclose(found.scores, -1e-6, atol=1e-5)


def test_chunking_gives_the_same_answer():
  gallery, labels = random_set(3, n=50)
  index = make_index(gallery, labels)
  whole = index.leave_one_out(k=6, chunk_size=50)
  for chunk_size in (1, 7, 64):  # Single rows, a ragged last chunk, one oversized chunk.
    found = index.leave_one_out(k=6, chunk_size=chunk_size)
    np.testing.assert_array_equal(found.ids, whole.ids)
    np.testing.assert_allclose(found.scores, whole.scores, rtol=1e-6)


def test_metrics_match_brute_force_with_a_singleton_class():
  embeddings, labels = random_set(4)
  labels[7] = 99  # A class of one: no right answer, so left out.
  index = make_index(embeddings, labels)
  expected_p, expected_map = ref_precision_and_map(embeddings, labels)
  assert 0 < expected_map < expected_p < 1
  assert embedding_index.precision_at_1(index) == pytest.approx(expected_p)
  assert embedding_index.map_at_r(index, chunk_size=16) == pytest.approx(expected_map)


def test_metrics_hand_computed():
  # A at 0, 1, 2 and B at 1.4, 9, 10 (each R = 2). Top-2 hits: A0 [y n], A1 [n y], A2 [n y],
  # B1.4 [n n], B9 [y n], B10 [y n].
  index = make_index(np.array([[0.0], [1.0], [2.0], [1.4], [9.0], [10.0]]), [0, 0, 0, 1, 1, 1])
  assert embedding_index.precision_at_1(index) == pytest.approx(3 / 6)
  assert embedding_index.map_at_r(index) == pytest.approx((1 / 2 + 1 / 4 + 1 / 4 + 0 + 1 / 2 + 1 / 2) / 6)


def test_perfect_clusters_score_one():
  rng = np.random.default_rng(5)
  labels = np.repeat(np.arange(4), 6)
  embeddings = 100.0 * np.eye(8)[labels] + rng.normal(size=(24, 8))
  index = make_index(embeddings, labels, 'cosine')
  assert embedding_index.precision_at_1(index) == 1.0
  assert embedding_index.map_at_r(index) == 1.0


@pytest.mark.parametrize('with_sources', (False, True))
def test_save_load_round_trip(tmp_path, with_sources):
  embeddings, labels = random_set(6, n=10)
  sources = np.array([f'img_{i}.png' for i in range(10)]) if with_sources else None
  index = make_index(embeddings, labels, 'cosine', sources)
  index.save(str(tmp_path / 'index'))
  loaded = embedding_index.Index.load(str(tmp_path / 'index'))
  assert (loaded.metric, loaded.kind, len(loaded)) == ('cosine', 'flat', 10)
  chex.assert_trees_all_equal((loaded.vectors(), loaded.labels, loaded.sources),
                              (index.vectors(), index.labels, index.sources))
  chex.assert_trees_all_equal(vars(loaded.leave_one_out(3)), vars(index.leave_one_out(3)))


def test_user_errors(tmp_path):
  embeddings, labels = random_set(7, n=5)
  with pytest.raises(UserError, match='euclidean, cosine'):
    make_index(embeddings, labels, 'manhattan')
  with pytest.raises(UserError, match='4 candidates'):
    make_index(embeddings, labels).leave_one_out(k=5)
  with pytest.raises(UserError, match='at least two items'):
    embedding_index.precision_at_1(make_index(embeddings, np.arange(5)))
  with pytest.raises(UserError, match='shape'):
    make_index(embeddings, labels).search(embeddings[:, :3], k=1)
  with pytest.raises(UserError, match='missing'):
    embedding_index.Index.load(str(tmp_path / 'missing'))
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'CURRENT').write_text('version-x\n')
  with pytest.raises(UserError, match='bad'):
    embedding_index.Index.load(str(tmp_path / 'bad'))
