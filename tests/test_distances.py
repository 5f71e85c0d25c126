"""The shared distance math: NumPy and JAX give the same numbers, and the heads and the index use it."""

import jax.numpy as jnp
import numpy as np
import pytest

from siamese_jax import distances, embedding_index, models


@pytest.mark.parametrize('fn', [distances.unit_length, distances.squared_euclidean, distances.euclidean,
                                distances.cosine_distance])
def test_numpy_and_jax_agree(fn):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 5, 8)).astype(np.float32)
  args = (x,) if fn is distances.unit_length else (x, y)
  out = fn(*args)
  assert isinstance(out, np.ndarray)
  np.testing.assert_allclose(out, np.asarray(fn(*map(jnp.asarray, args))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('head,metric', [(models.EuclideanHead(), 'euclidean'), (models.CosineHead(), 'cosine')])
def test_index_scores_are_the_heads_similarity(head, metric):
  rng = np.random.default_rng(1)
  gallery, queries = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
  index = embedding_index.Index(8, metric)
  index.add(gallery)
  found = index.search(queries, 5)
  expected = -np.asarray(head.apply({}, jnp.asarray(queries[:, None]), jnp.asarray(gallery[found.ids])))
  np.testing.assert_allclose(found.scores, expected, rtol=1e-5, atol=1e-5)


def test_unit_length_keeps_zero_vectors():
  np.testing.assert_array_equal(distances.unit_length(np.zeros((2, 3), np.float32)), 0.0)
