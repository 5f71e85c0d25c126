"""Verification, retrieval and reference-classification evaluators on models whose answers are known."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import synthetic_image_set

from siamese_jax import augment, config_schema, evaluators, inference, models, sharding
from siamese_jax.datasets import ImageSet
from siamese_jax.errors import UserError
from siamese_jax.evaluators import verification


class LookupScorer:
  """Embeds each image by a table lookup on its bytes; a pair scores offset + 1 if alike, else offset.

  Embeddings are [key, offset]: "alike" means equal keys, and the offset (the first image's) shifts
  the scores away from 0 and 1. Every embedded image is recorded, to check that none is embedded twice.
  """

  def __init__(self, table):
    self.table = table
    self.embedded = []

  def embed(self, images):
    self.embedded += [img.tobytes() for img in images]
    return np.array([self.table[img.tobytes()] for img in images], np.float32).reshape(len(images), 2)

  def similarity(self, e1, e2):
    e1, e2 = np.broadcast_arrays(e1, e2)
    return (e1[..., 0] == e2[..., 0]) + e1[..., 1]

  def embedded_once(self):
    return len(self.embedded) == len(set(self.embedded))


def oracle(*sets_and_offsets):
  """A scorer that knows every image's class: its key is the class, its offset that of its set."""
  return LookupScorer({img.tobytes(): (label, offset) for image_set, offset in sets_and_offsets
                       for img, label in zip(image_set.images, image_set.labels)})


class ConstantScorer:
  """Everything looks alike: zero embeddings, zero scores."""

  def embed(self, images):
    return np.zeros((len(images), 2), np.float32)

  def similarity(self, e1, e2):
    return np.zeros(np.broadcast_shapes(np.shape(e1), np.shape(e2))[:-1])


class NoiseScorer(ConstantScorer):
  """Embeddings that ignore the image: random, the same for every call."""

  def embed(self, images):
    return np.random.default_rng(0).normal(size=(len(images), 8)).astype(np.float32)


def config(kind, **kw):
  return ml_collections.ConfigDict(dict(kind=kind, split='test') | kw)


def two_splits(**kw):
  """'validation' and 'test' sets with the same class names and different images."""
  return {'validation': synthetic_image_set(seed=0, **kw), 'test': synthetic_image_set(seed=1, **kw)}


# Verification.


def test_pairs_are_labelled_right_balanced_and_fixed_by_the_seed():
  labels = synthetic_image_set(num_groups=2, classes_per_group=3, per_class=4).labels
  pairs, same = verification.verification_pairs(np.random.default_rng(0), labels, 101)
  chex.assert_shape(pairs, (101, 2))
  assert same.sum() == 50  # half (rounded down) are same pairs
  np.testing.assert_array_equal(same, labels[pairs[:, 0]] == labels[pairs[:, 1]])
  assert np.all(pairs[:, 0] != pairs[:, 1])
  assert len(np.unique(labels[pairs])) == 6  # every class is drawn
  again, _ = verification.verification_pairs(np.random.default_rng(0), labels, 101)
  other, _ = verification.verification_pairs(np.random.default_rng(1), labels, 101)
  np.testing.assert_array_equal(pairs, again)
  assert not np.array_equal(pairs, other)


def test_evaluator_pairs_are_drawn_once_and_threshold_pairs_are_a_separate_draw():
  splits = two_splits()
  first = evaluators.build('v', config('verification', split='validation', pairs=200), splits)
  second = evaluators.build('v', config('verification', split='validation', pairs=200), splits)
  np.testing.assert_array_equal(first.pairs, second.pairs)
  np.testing.assert_array_equal(first.threshold_pairs, second.threshold_pairs)
  assert not np.array_equal(first.pairs, first.threshold_pairs)
  np.testing.assert_array_equal(first.labels, first.threshold_labels)  # both balanced the same way


def test_verification_oracle_is_perfect_and_constant_model_is_chance():
  splits = two_splits()
  evaluator = evaluators.build('v', config('verification'), splits)
  scorer = oracle((splits['validation'], 0.0), (splits['test'], 0.0))
  assert evaluator(scorer) == {'accuracy': 1.0, 'threshold': 0.5, 'auc': 1.0, 'eer': 0.0}
  assert scorer.embedded_once()
  chance = evaluator(ConstantScorer())
  assert (chance['accuracy'], chance['auc'], chance['eer']) == (0.5, 0.5, 0.5)


def test_threshold_is_chosen_on_the_threshold_split():
  splits = two_splits()
  # Scores 9 (different) and 10 (same): a fixed 0.5 would accept every pair.
  same_split = evaluators.build('v', config('verification', split='test', threshold_split='test'), splits)
  scorer = oracle((splits['test'], 9.0))
  assert same_split(scorer) == {'accuracy': 1.0, 'threshold': 9.5, 'auc': 1.0, 'eer': 0.0}
  assert scorer.embedded_once()
  np.testing.assert_array_equal(same_split.scores(scorer), same_split.labels + 9.0)
  # Validation scores sit 9 above test scores: its threshold rejects every test pair, whatever the AUC.
  shifted = evaluators.build('v', config('verification', threshold_split='validation'), splits)
  result = shifted(oracle((splits['validation'], 9.0), (splits['test'], 0.0)))
  assert result == {'accuracy': 0.5, 'threshold': 9.5, 'auc': 1.0, 'eer': 0.0}


def test_impossible_verification_is_a_user_error():
  one_class = {'test': synthetic_image_set(num_groups=1, classes_per_group=1), 'validation': synthetic_image_set()}
  with pytest.raises(UserError, match="'test' has 1 classes"):
    evaluators.build('v', config('verification'), one_class)
  singletons = {'test': synthetic_image_set(per_class=1), 'validation': synthetic_image_set()}
  with pytest.raises(UserError, match='one with two images'):
    evaluators.build('v', config('verification'), singletons)
  with pytest.raises(UserError, match='threshold_split'):
    evaluators.build('v', config('verification', threshold_split='nope'), two_splits())
  with pytest.raises(UserError, match='pairs=1'):
    evaluators.build('v', config('verification', pairs=1), two_splits())


# Retrieval.


def test_retrieval_oracle_is_perfect_and_noise_is_chance():
  splits = two_splits(num_groups=2, classes_per_group=2, per_class=50)
  evaluator = evaluators.build('r', config('retrieval'), splits)
  scorer = oracle((splits['test'], 0.0))
  assert evaluator(scorer) == {'precision_at_1': 1.0, 'map_at_r': 1.0}
  assert scorer.embedded_once()
  chance = evaluator(NoiseScorer())
  assert chance['precision_at_1'] == pytest.approx(49 / 199, abs=0.1)  # 49 of the 199 others share a class
  assert chance['map_at_r'] < 0.2  # a random ranking's AP@R is about 0.08 here


def test_retrieval_index_of_a_fixed_subsample():
  splits = two_splits(per_class=10)
  evaluator = evaluators.build('r', config('retrieval', max_items=30, metric='cosine', seed=3), splits)
  index = evaluator.index(NoiseScorer())
  chex.assert_shape(index.vectors(), (30, 8))
  assert index.metric == 'cosine'
  assert np.all(np.diff(evaluator.ids) > 0)
  np.testing.assert_array_equal(index.sources, [f'split:test:{i}' for i in evaluator.ids])
  np.testing.assert_array_equal(index.labels, splits['test'].labels[evaluator.ids].astype(str))
  again = evaluators.build('r', config('retrieval', max_items=30, metric='cosine', seed=3), splits)
  np.testing.assert_array_equal(again.ids, evaluator.ids)
  assert len(evaluators.build('r', config('retrieval', max_items=0), splits).ids) == len(splits['test'])


@pytest.mark.parametrize('change, message', [
    (dict(metric='manhattan'), 'metric'),
    (dict(max_items=-1), 'max_items'),
    (dict(max_items=1), 'two classes'),
])
def test_impossible_retrieval_is_a_user_error(change, message):
  with pytest.raises(UserError, match=message):
    evaluators.build('r', config('retrieval', **change), two_splits())


# Reference classification.


def reference_splits(classes=2, per_class=40):
  """'train' references and 'test' queries of the same classes."""
  return {name: synthetic_image_set(num_groups=1, classes_per_group=classes, per_class=per_class, seed=seed)
          for seed, name in enumerate(('train', 'test'))}


def test_reference_oracle_is_perfect_and_constant_model_is_chance():
  splits = reference_splits(per_class=100)
  # 100 queries of class 0 and 10 of class 1: a constant model scores 0.5 only if its ties are broken at
  # random (picking the first class on ties would score 100 / 110).
  test = splits['test']
  splits['test'] = test.subset((test.labels == 0) | (np.arange(len(test.labels)) % 100 < 10))
  np.testing.assert_array_equal(np.bincount(splits['test'].labels), [100, 10])
  evaluator = evaluators.build('m', config('reference', shots=3, queries_per_chunk=64), splits)
  chex.assert_shape(evaluator.reference_items, (2, 3))
  np.testing.assert_array_equal(splits['train'].labels[evaluator.reference_items], [[0] * 3, [1] * 3])
  scorer = oracle((splits['train'], 0.0), (splits['test'], 0.0))
  assert evaluator(scorer) == {'accuracy': 1.0, 'auc': 1.0, 'knn_accuracy': 1.0}
  assert scorer.embedded_once()
  chance = evaluator(ConstantScorer())
  assert chance['accuracy'] == pytest.approx(0.5, abs=0.15)  # ties broken at random: SE ~0.048 over 110 queries
  assert chance['auc'] == 0.5


def test_reference_without_knn_embeds_only_the_references_and_queries():
  splits = reference_splits(classes=4)
  evaluator = evaluators.build('m', config('reference', shots=2, knn=0, max_queries=25), splits)
  scorer = oracle((splits['train'], 0.0), (splits['test'], 0.0))
  assert evaluator(scorer) == {'accuracy': 1.0}  # no AUC for four classes, no kNN when off
  assert len(scorer.embedded) == 4 * 2 + 25 and scorer.embedded_once()


def tagged_set(values, labels):
  """One-pixel images whose pixel is a tag, for hand-placed embeddings."""
  return ImageSet(images=np.array(values, np.uint8).reshape(-1, 1, 1, 1), labels=np.array(labels, np.int32),
                  groups=np.zeros(len(labels), np.int32), class_names=('a', 'b'))


@pytest.mark.parametrize('knn, expected', [(1, 1.0), (2, 1.0), (3, 0.5)])
def test_knn_votes_and_breaks_ties_toward_the_nearest(knn, expected):
  # Reference embeddings on a line: class a at 0, 1, 2 and class b at 2.5, 10, 11. Queries at 2.2 (a)
  # and 2.4 (b). k=2 ties for both; the nearest neighbour decides: a for 2.2, b for 2.4. k=3 outvotes b.
  splits = {'train': tagged_set([0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]), 'test': tagged_set([100, 101], [0, 1])}
  positions = {0: 0.0, 1: 1.0, 2: 2.0, 3: 2.5, 4: 10.0, 5: 11.0, 100: 2.2, 101: 2.4}
  scorer = LookupScorer({np.uint8(tag).tobytes(): (x, 0.0) for tag, x in positions.items()})
  evaluator = evaluators.build('m', config('reference', shots=1, knn=knn), splits)
  assert evaluator(scorer)['knn_accuracy'] == expected


class LineScorer:
  """Images at hand-placed points on a line (looked up by their one-pixel tag); similarity is -distance."""

  def __init__(self, positions):
    self.positions = positions

  def embed(self, images):
    return np.array([[self.positions[int(img.ravel()[0])]] for img in images], np.float32)

  def similarity(self, e1, e2):
    return -np.abs(e1[..., 0] - e2[..., 0])


def test_threshold_split_moves_the_decision_point_where_class_spreads_differ():
  # Class a's references spread wide (-10 and 0), class b's are tight (2 and 2.2): every query between 0
  # and 2 is more like b on average, so "most similar on average" calls the a queries b. The difference
  # of mean similarities is 2.9 + 2x there; a point chosen on validation (a at 0.3, 0.5; b at 1.5, 1.7)
  # separates the test queries.
  splits = {'train': tagged_set([0, 1, 2, 3], [0, 0, 1, 1]),
            'validation': tagged_set([10, 11, 12, 13], [0, 0, 1, 1]),
            'test': tagged_set([20, 21, 22, 23], [0, 0, 1, 1])}
  scorer = LineScorer({0: -10, 1: 0, 2: 2, 3: 2.2, 10: 0.3, 11: 0.5, 12: 1.5, 13: 1.7,
                       20: 0.2, 21: 0.4, 22: 1.6, 23: 1.8})
  most_similar = evaluators.build('m', config('reference', shots=2, knn=0), splits)(scorer)
  assert most_similar['accuracy'] == 0.5 and most_similar['auc'] == 1.0
  chosen = evaluators.build('m', config('reference', shots=2, knn=0, threshold_split='validation'), splits)(scorer)
  assert chosen['accuracy'] == 1.0 and chosen['auc'] == 1.0
  assert 2.9 + 2 * 0.5 < chosen['threshold'] < 2.9 + 2 * 1.5


@pytest.mark.parametrize('change, message', [
    (dict(threshold_split='test'), 'also split or reference_split'),
    (dict(threshold_split='nope'), 'threshold_split'),
    (dict(shots=41), "shots=41 but class 'class0' has 40 images in 'train'"),
    (dict(reference_split='test'), 'both'),
    (dict(reference_split='nope'), 'reference_split'),
    (dict(knn=81), 'knn=81'),
    (dict(max_queries=-1), 'max_queries'),
    (dict(max_queries=1), 'all of one class'),
])
def test_impossible_reference_settings_are_a_user_error(change, message):
  with pytest.raises(UserError, match=message):
    evaluators.build('m', config('reference', **change), reference_splits())


def test_threshold_split_needs_two_classes():
  splits = reference_splits(classes=3) | {'validation': reference_splits(classes=3)['test']}
  with pytest.raises(UserError, match='needs two classes'):
    evaluators.build('m', config('reference', threshold_split='validation'), splits)


def test_reference_needs_the_same_classes_in_both_splits():
  splits = reference_splits(classes=2) | {'train': reference_splits(classes=3)['train']}
  with pytest.raises(UserError, match='different classes'):
    evaluators.build('m', config('reference'), splits)


# All three through the registry, with a real network.


def test_real_scorer_through_run_all():
  splits = reference_splits(per_class=12) | {'validation': synthetic_image_set(num_groups=1, classes_per_group=2)}
  c = config_schema.base_config().model
  c.features, c.kernel_sizes, c.embedding_dim = (4, 8), (3, 3), 16
  model = models.build(c)
  # Random weights from the parameter shapes alone: tracing is much faster than compiling `init`.
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 2, 16, 16, 1), np.float32))['params']
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), shapes)
  scorer = inference.Scorer(model, params, sharding.data_mesh(), batch_size=16)
  evals = evaluators.build_all(ml_collections.ConfigDict({
      'verify': config('verification', pairs=40),
      'retrieve': config('retrieval'),
      'classify': config('reference', shots=2, knn=3, queries_per_chunk=5),
  }), splits)
  results = evaluators.run_all(evals, scorer)
  assert set(results) == {'verify/accuracy', 'verify/threshold', 'verify/auc', 'verify/eer',
                          'retrieve/precision_at_1', 'retrieve/map_at_r',
                          'classify/accuracy', 'classify/auc', 'classify/knn_accuracy'}
  assert all(0 <= v <= 1 for k, v in results.items() if k != 'verify/threshold')
  # Embedding the used images once and indexing gives the scores of embedding each pair directly.
  pairs = evals['verify'].pairs
  images = splits['test'].images
  direct = scorer.similarity(scorer.embed(images[pairs[:, 0]]), scorer.embed(images[pairs[:, 1]]))
  chex.assert_trees_all_close(evals['verify'].scores(scorer), direct, rtol=1e-5)


def tiny_tower(normalize=False):
  """One 3x3 block and an 8-d embedding for 9x9 images: (model, params)."""
  c = config_schema.base_config().model
  c.features, c.kernel_sizes, c.embedding_dim, c.normalize_embeddings = (4,), (3,), 8, normalize
  model = models.build(c)
  return model, models.init_params(model, (9, 9, 1), jax.random.key(0))


@pytest.mark.parametrize('normalize', [False, True])
def test_scorer_averages_the_eight_symmetries(normalize):
  model, params = tiny_tower(normalize)
  images = np.random.default_rng(0).integers(0, 256, (6, 9, 9, 1), np.uint8)
  plain = inference.Scorer(model, params, sharding.data_mesh(), batch_size=8)
  averaged = inference.Scorer(model, params, sharding.data_mesh(), batch_size=8, average_symmetries=True)
  embeddings = averaged.embed(images)
  # The mean over the eight views, taken from the plain scorer (back on the unit sphere if normalised).
  views = np.stack([plain.embed(np.asarray(v)) for v in augment.dihedral_views(jnp.asarray(images))])
  expected = views.mean(axis=0)
  if normalize:
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)
  chex.assert_trees_all_close(embeddings, expected, rtol=1e-4, atol=1e-6)
  # So every quarter turn or mirror image of an image gets the same embedding; the plain scorer's differ.
  turned = np.rot90(images, 1, axes=(1, 2)).copy()
  chex.assert_trees_all_close(averaged.embed(turned), embeddings, rtol=1e-4, atol=1e-6)
  assert not np.allclose(plain.embed(turned), plain.embed(images), rtol=1e-3)
  # Quarter turns of a non-square image change its shape: one clear error rather than a failed concatenate.
  with pytest.raises(UserError, match='needs square images, got 9x7'):
    averaged.embed(images[:, :, :7])


def test_scorer_averages_one_pixel_shifts_and_composes_with_the_symmetries():
  model, params = tiny_tower()
  images = np.zeros((2, 9, 9, 1), np.uint8)
  images[:, 4, 4] = 255  # One bright pixel: its shifts are the same pixel one step up, down, left, right.
  images[1, 2, 6] = 255
  mesh = sharding.data_mesh()
  plain = inference.Scorer(model, params, mesh, batch_size=8)
  shifted = inference.Scorer(model, params, mesh, batch_size=8, average_shifts=1)
  moved = [np.roll(images, (dy, dx), (1, 2)) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
  expected = np.mean([plain.embed(view) for view in moved], axis=0)
  chex.assert_trees_all_close(shifted.embed(images), expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(expected, plain.embed(images), rtol=1e-3)
  # With both: the mean over the five shifts of each of the eight symmetries.
  both = inference.Scorer(model, params, mesh, batch_size=8, average_symmetries=True, average_shifts=1)
  views = [v for d in augment.dihedral_views(jnp.asarray(images)) for v in augment.shift_views(d, 1)]
  chex.assert_shape(views, [(2, 9, 9, 1)] * 40)
  expected_both = np.mean([plain.embed(np.asarray(view)) for view in views], axis=0)
  chex.assert_trees_all_close(both.embed(images), expected_both, rtol=1e-4, atol=1e-6)


def test_eval_average_shifts_comes_from_the_config():
  config = config_schema.base_config()
  config.train.eval_average_shifts = 2
  model, params = tiny_tower()
  images = np.random.default_rng(0).integers(0, 256, (3, 9, 9, 1), np.uint8)
  scorer = inference.Scorer.for_config(config, model, params, sharding.data_mesh())
  direct = inference.Scorer(model, params, sharding.data_mesh(), average_shifts=2)
  chex.assert_trees_all_close(scorer.embed(images), direct.embed(images))
