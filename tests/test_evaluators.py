"""One-shot episodes and Lake-run scoring on models whose answers are known."""

import ml_collections
import numpy as np
import pytest
from conftest import synthetic_image_set

from siamese_jax import evaluators, lake_runs
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


def test_k_shot_averages_over_shots():
  image_set = synthetic_image_set(num_groups=2, classes_per_group=8, per_class=4)
  evaluator = evaluators.build('os', oneshot_config(shots=3, ways=4), {'validation': image_set})
  assert evaluator.support.shape == (400, 4, 3)
  assert evaluator(OracleScorer(image_set))['accuracy'] == 1.0


def test_impossible_episodes_are_a_user_error():
  image_set = synthetic_image_set(num_groups=2, classes_per_group=3, per_class=2)
  with pytest.raises(UserError, match='20-way'):
    evaluators.build('os', oneshot_config(ways=20), {'validation': image_set})
  with pytest.raises(UserError, match='kind'):
    evaluators.build('os', oneshot_config(kind='nope'), {'validation': image_set})


def test_lake_runs_scoring_with_known_models():
  image_set = synthetic_image_set(num_groups=1, classes_per_group=20, per_class=2)
  rng = np.random.default_rng(0)
  runs = []
  for r in range(3):
    order = rng.permutation(20)
    first, second = np.arange(0, 40, 2), np.arange(1, 40, 2)  # two images of each class
    runs.append(lake_runs.LakeRun(name=f'run{r + 1:02d}', support=image_set.images[first],
                                  queries=image_set.images[second][order], answers=order.astype(np.int32)))
  assert lake_runs.score_runs(OracleScorer(image_set), runs) == [1.0, 1.0, 1.0]
  chance = np.mean(lake_runs.score_runs(OracleScorer(image_set, constant=True), runs * 20))
  assert chance == pytest.approx(1 / 20, abs=0.03)
