"""One-shot episodes and Lake-run scoring on models whose answers are known."""

import ml_collections
import numpy as np
import pytest
from conftest import synthetic_image_set

from siamese_jax import evaluators, inference, lake_runs
from siamese_jax.errors import UserError
from siamese_jax.evaluators import oneshot


class OracleScorer:
  """Embeds an image as its class (read off a lookup of the images); alike iff same class."""

  def __init__(self, image_set, constant=False):
    self.lookup = {img.tobytes(): label for img, label in zip(image_set.images, image_set.labels)}
    self.constant = constant

  def embed(self, images):
    return np.array([[self.lookup[img.tobytes()]] for img in images], np.float32)

  def similarity(self, e1, e2):
    e1, e2 = np.broadcast_arrays(e1, e2)
    return np.zeros(e1.shape[:-1]) if self.constant else -np.abs(e1 - e2)[..., 0]


class DecoyScorer:
  """Knows each image's class and role (query, or else support): a query of class c scores 1 against the
  support images of its own class and of class c + 1 (its decoy), and 0 against every other.

  Where the decoy's column comes after the true class's, a plain argmax (first of the tied maxima) is always
  right; choosing at random among ties is right half the time.
  """

  def __init__(self, image_set, query_items):
    roles = np.isin(np.arange(len(image_set.labels)), query_items)
    self.table = {img.tobytes(): (label, role) for img, label, role in zip(image_set.images, image_set.labels, roles)}
    assert len(self.table) == len(image_set.labels)  # every image distinct

  def embed(self, images):
    return np.array([self.table[img.tobytes()] for img in images], np.float32)

  def similarity(self, e1, e2):
    e1, e2 = np.broadcast_arrays(e1, e2)
    (c1, r1), (c2, r2) = np.moveaxis(e1, -1, 0), np.moveaxis(e2, -1, 0)
    decoy = ((r1 == 1) & (r2 == 0) & (c2 == c1 + 1)) | ((r2 == 1) & (r1 == 0) & (c1 == c2 + 1))
    return ((c1 == c2) | decoy).astype(np.float32)


def test_pick_with_random_ties_chooses_uniformly_among_the_maxima():
  rng = np.random.default_rng(0)
  n, ways = 20000, 5
  # All scores equal: every column is picked about n / ways times (binomial SD ~57; bound ~5 SD).
  counts = np.bincount(inference.pick_with_random_ties(rng, np.zeros((n, ways))), minlength=ways)
  np.testing.assert_allclose(counts, n / ways, atol=300)
  # Two tied maxima at random places in each row, the other scores below: only those two are picked,
  # each about half the time (binomial SD ~0.0035).
  scores = rng.random((n, ways))
  tied = np.stack([rng.choice(ways, 2, replace=False) for _ in range(n)])
  rows = np.arange(n)
  scores[rows, tied[:, 0]] = scores[rows, tied[:, 1]] = 2.0
  picked = inference.pick_with_random_ties(rng, scores)
  assert np.all((picked == tied[:, 0]) | (picked == tied[:, 1]))
  assert np.mean(picked == tied[:, 0]) == pytest.approx(0.5, abs=0.02)
  assert np.mean(picked == tied.min(axis=1)) == pytest.approx(0.5, abs=0.02)  # not the first of the two
  # A unique maximum is always picked.
  distinct = rng.random((100, ways))
  np.testing.assert_array_equal(inference.pick_with_random_ties(rng, distinct), distinct.argmax(axis=1))


def oneshot_config(**kw):
  return ml_collections.ConfigDict(dict(kind='oneshot', split='validation', ways=5, shots=1, episodes=400,
                                        within_group=False) | kw)


def test_episodes_are_well_formed():
  image_set = synthetic_image_set(num_groups=3, classes_per_group=6, per_class=5)
  support, query = oneshot.sample_episodes(np.random.default_rng(0), image_set.labels, image_set.groups,
                                           ways=5, shots=2, episodes=50, within_group=True)
  labels, groups = image_set.labels, image_set.groups
  for s, q in zip(support, query):
    assert np.all(labels[s] == labels[q][:, None])  # support class i matches query i
    assert len(set(labels[q])) == 5  # five different classes
    assert len(set(groups[q])) == 1  # all from one group
    assert len(set(s.ravel()) | set(q)) == 15  # no image used twice


def test_oracle_is_perfect_and_constant_model_scores_chance():
  image_set = synthetic_image_set(num_groups=2, classes_per_group=8, per_class=4)
  evaluator = evaluators.build('os', oneshot_config(), {'validation': image_set})
  assert evaluator(OracleScorer(image_set))['accuracy'] == 1.0
  chance = evaluator(OracleScorer(image_set, constant=True))
  assert chance['accuracy'] == pytest.approx(1 / 5, abs=3 * chance['ci95'] + 0.01)
  assert chance['ci95'] > 0.01  # random ties vary from episode to episode (a first-column pick scores 1/5 in each)


def test_oneshot_ties_with_a_decoy_are_broken_at_random():
  # Episodes of five consecutive classes in order (support = each class's first image, query = its second):
  # queries of the first four classes tie with the next column, the last class's query does not.
  image_set = synthetic_image_set(num_groups=2, classes_per_group=8, per_class=4)
  evaluator = evaluators.build('os', oneshot_config(), {'validation': image_set})
  first = np.random.default_rng(1).integers(0, 16 - 5 + 1, size=400)
  classes = first[:, None] + np.arange(5)
  evaluator.support, evaluator.query = classes[:, :, None] * 4, classes * 4 + 1
  scorer = DecoyScorer(image_set, query_items=np.arange(1, 64, 4))
  # Random ties: (4 x 0.5 + 1) / 5 = 0.6, SE ~0.01 over 1600 tied queries; a plain argmax scores 1.0.
  assert evaluator(scorer)['accuracy'] == pytest.approx(0.6, abs=0.04)


class TableScorer:
  """Embeds an image as its index in `image_set`; a pair scores what the table [N, N] says."""

  def __init__(self, image_set, table):
    self.index = {img.tobytes(): i for i, img in enumerate(image_set.images)}
    assert len(self.index) == len(image_set.images)
    self.table = table

  def embed(self, images):
    return np.array([[self.index[img.tobytes()]] for img in images], np.float32)

  def similarity(self, e1, e2):
    e1, e2 = np.broadcast_arrays(e1, e2)
    return self.table[e1[..., 0].astype(int), e2[..., 0].astype(int)]


def test_k_shot_averages_over_shots():
  image_set = synthetic_image_set(num_groups=2, classes_per_group=8, per_class=4)
  evaluator = evaluators.build('os', oneshot_config(shots=3, ways=4), {'validation': image_set})
  assert evaluator.support.shape == (400, 4, 3)
  assert evaluator(OracleScorer(image_set))['accuracy'] == 1.0
  # Two-way three-shot episodes of classes (2k, 2k + 1): support = a class's first three images, query = its
  # fourth. Against its own class's shots a query scores (-0.6, -0.25, -0.25) (mean -0.367), against the
  # other's (-0.05, -0.55, -0.55) (mean -0.383): the mean picks the right class; the first shot, the best
  # shot and the worst shot all pick the wrong one.
  evaluator = evaluators.build('os', oneshot_config(shots=3, ways=2), {'validation': image_set})
  pairs = (np.arange(400) % 8 * 2)[:, None] + np.arange(2)  # [E, 2] classes
  evaluator.support = pairs[:, :, None] * 4 + np.arange(3)
  evaluator.query = pairs * 4 + 3
  table = np.full((64, 64), -10.0)
  for c in range(16):
    query, own, other = c * 4 + 3, c * 4 + np.arange(3), (c ^ 1) * 4 + np.arange(3)
    table[query, own] = table[own, query] = [-0.6, -0.25, -0.25]
    table[query, other] = table[other, query] = [-0.05, -0.55, -0.55]
  assert evaluator(TableScorer(image_set, table))['accuracy'] == 1.0


def test_impossible_episodes_are_a_user_error():
  image_set = synthetic_image_set(num_groups=2, classes_per_group=3, per_class=2)
  with pytest.raises(UserError, match='20-way'):
    evaluators.build('os', oneshot_config(ways=20), {'validation': image_set})
  with pytest.raises(UserError, match='kind'):
    evaluators.build('os', oneshot_config(kind='nope'), {'validation': image_set})


def test_lake_runs_scoring_with_known_models():
  image_set = synthetic_image_set(num_groups=1, classes_per_group=20, per_class=2)
  rng = np.random.default_rng(0)
  first, second = np.arange(0, 40, 2), np.arange(1, 40, 2)  # two images of each class
  runs = []
  for r in range(3):
    order = rng.permutation(20)
    runs.append(lake_runs.LakeRun(name=f'run{r + 1:02d}', support=image_set.images[first],
                                  queries=image_set.images[second][order], answers=order.astype(np.int32)))
  assert lake_runs.score_runs(OracleScorer(image_set), runs) == [1.0, 1.0, 1.0]
  chance = np.mean(lake_runs.score_runs(OracleScorer(image_set, constant=True), runs * 20))
  assert chance == pytest.approx(1 / 20, abs=0.03)
  # Each query of class c (c < 19) ties its own support image (column c) with class c + 1's (column c + 1):
  # random ties score (19 x 0.5 + 1) / 20 = 0.525 (SE ~0.015 over 60 runs); a plain argmax scores 1.0.
  decoy = DecoyScorer(image_set, query_items=second)
  assert np.mean(lake_runs.score_runs(decoy, runs * 20)) == pytest.approx(0.525, abs=0.06)


def test_lake_runs_from_disk_are_read_as_the_model_was_trained():
  data = ml_collections.ConfigDict({'name': 'omniglot', 'image_size': 32, 'crop_to_ink': True})
  blocks = {'files': {'kind': 'lake_runs', 'path': 'runs.zip'}, 'sized': {'kind': 'lake_runs', 'path': 'r', 'image_size': 48},
            'drawn': {'kind': 'lake_runs', 'split': 'test'}}
  read = inference.read_as_trained(blocks, data)
  assert read['files'] == {'kind': 'lake_runs', 'path': 'runs.zip', 'image_size': 32, 'crop_to_ink': True}
  assert read['sized']['image_size'] == 48 and read['drawn'] == blocks['drawn']
  assert 'image_size' not in blocks['files']  # the config's blocks are left as they are
