"""The one-shot training ingredients: episodic loss, episodes of one alphabet, turns as classes, Lake runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import lake_format
import pytest
from conftest import synthetic_image_set

from configs import omniglot as omniglot_config
from siamese_jax import config_schema, evaluators, inference, losses, models, samplers, sharding, train
from siamese_jax.datasets import omniglot
from siamese_jax.errors import UserError


def reference_episodic(scores, temperature):
  """Loop over episodes and queries in float64: -log softmax of the query's own class."""
  scores = np.asarray(scores, np.float64) / temperature
  episodes, num_queries, ways = scores.shape
  total, correct = 0.0, 0
  for e in range(episodes):
    for q in range(num_queries):
      target = q // (num_queries // ways)
      logits = scores[e, q]
      total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[target]
      correct += int(np.argmax(scores[e, q]) == target)
  return total / (episodes * num_queries), correct / (episodes * num_queries)


@pytest.mark.parametrize('temperature', [1.0, 0.1])
def test_episodic_loss_matches_a_loop(temperature):
  scores = jax.random.normal(jax.random.key(0), (3, 10, 5))  # 3 episodes, 5 ways, 2 queries per class
  loss, accuracy = jax.jit(losses.episodic, static_argnums=1)(scores, temperature)
  expected_loss, expected_accuracy = reference_episodic(scores, temperature)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(accuracy, expected_accuracy)


def test_episodic_loss_of_perfect_and_constant_scores():
  perfect = jnp.tile(jnp.repeat(jnp.eye(4), 2, axis=0)[None] * 50.0, (2, 1, 1))  # [2, 8, 4]
  loss, accuracy = losses.episodic(perfect, 1.0)
  assert loss < 1e-6 and accuracy == 1.0
  loss, accuracy = losses.episodic(jnp.zeros((2, 8, 4)), 1.0)
  np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)  # chance: log W
  assert accuracy == pytest.approx(0.25)  # argmax picks class 0, right for 1 query in 4


def test_symmetric_episodic_loss_averages_both_directions_of_a_square_episode():
  scores = jax.random.normal(jax.random.key(2), (3, 5, 5))  # one query per class
  loss, accuracy = losses.episodic(scores, 0.5, symmetric=True)
  forward, expected_accuracy = reference_episodic(scores, 0.5)
  backward, _ = reference_episodic(jnp.swapaxes(scores, 1, 2), 0.5)
  np.testing.assert_allclose(loss, (forward + backward) / 2, rtol=1e-5)
  np.testing.assert_allclose(accuracy, expected_accuracy)  # accuracy stays that of the queries
  assert abs(forward - backward) > 0.05  # the two directions differ, so the average is a real check
  with pytest.raises(ValueError, match='one query per class'):
    losses.episodic(jnp.zeros((1, 10, 5)), 1.0, symmetric=True)


def episodic_config(head='euclidean', **overrides):
  config = omniglot_config.get_config('cpu')
  config.model.head = head
  config.model.features = (8, 8)
  config.model.final_pool = '2x2'  # keeps the tiny tower's 4x4 map: a 128-d embedding, not an 8-d one
  config.batch.size = 24
  config.batch.images_per_class = 3
  config.batch.classes_per_group = 4
  config.loss.shots = 2
  for key, value in overrides.items():
    config[key.split('.')[0]][key.split('.')[1]] = value
  return config


@pytest.mark.parametrize('head', ['euclidean', 'cosine', 'weighted_l1'])
def test_episode_scores_compare_each_query_with_each_class_through_the_head(head):
  config = episodic_config(head)
  model = models.build(config.model)
  params = models.init_params(model, (16, 16, 1), jax.random.key(0))
  embeddings = jax.random.normal(jax.random.key(1), (24, 128))  # 2 episodes x 4 classes x 3 images
  scores = train.episode_scores(model, params, embeddings, config)
  chex.assert_shape(scores, (2, 4, 4))  # one query per class (3 images, 2 shots)
  grouped = embeddings.reshape(2, 4, 3, 128)
  for e in range(2):
    for q in range(4):
      for c in range(4):
        shots = [model.apply({'params': params}, grouped[e, q, 2], grouped[e, c, k],
                             method=models.SiameseNet.compare) for k in range(2)]
        expected = np.mean([models.similarity(s, model.head.output_kind) for s in shots])
        np.testing.assert_allclose(scores[e, q, c], expected, rtol=1e-5, atol=1e-6)


def test_episodic_training_learns_synthetic_classes():
  config = episodic_config()
  config.train.num_steps = 30
  image_set = synthetic_image_set(num_groups=3, classes_per_group=8, per_class=6)
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  mesh = sharding.data_mesh()
  state = train.init_state(config, model, tx, image_set.image_shape, jax.random.key(0))
  layout = samplers.class_layout(image_set.labels, image_set.groups)
  data = train.put_dataset(image_set, layout, config, mesh)
  step = jax.jit(lambda s, k: train.device_resident_steps(s, data, k, num_steps=1, mesh=mesh, model=model, tx=tx,
                                                          config=config))
  losses_seen, accuracies = [], []
  for i in range(60):
    state, m = step(state, jax.random.key(i))
    losses_seen.append(float(m['loss']))
    accuracies.append(float(m['accuracy']))
  assert np.mean(losses_seen[-10:]) < 0.5 * np.mean(losses_seen[:5])
  assert np.mean(accuracies[-10:]) > 0.85  # 4-way episodes: chance 0.25


def test_class_batches_of_one_group_per_episode():
  image_set = synthetic_image_set(num_groups=5, classes_per_group=6, per_class=4)
  layout = samplers.class_layout(image_set.labels, image_set.groups)
  for seed in range(20):
    indices, labels = samplers.sample_classes(jax.random.key(seed), layout, 12, 2, classes_per_group=4)
    chex.assert_shape([indices, labels], (24,))
    np.testing.assert_array_equal(image_set.labels[np.asarray(indices)], labels)
    classes = np.asarray(labels).reshape(3, 4, 2)
    assert (classes == classes[..., :1]).all()  # class-major: a class's images are adjacent
    for episode in classes[..., 0]:
      assert len(set(episode)) == 4
      assert len(set(image_set.groups[np.isin(image_set.labels, episode)])) == 1
    pairs = np.asarray(indices).reshape(12, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_episodes_fill_up_from_other_groups_when_a_group_is_small():
  image_set = synthetic_image_set(num_groups=4, classes_per_group=3, per_class=2)
  layout = samplers.class_layout(image_set.labels, image_set.groups)
  _, labels = samplers.sample_classes(jax.random.key(0), layout, 10, 1, classes_per_group=5)
  for episode in np.asarray(labels).reshape(2, 5):
    assert len(set(episode)) == 5
    groups = image_set.groups[np.searchsorted(image_set.labels, episode)]
    assert np.bincount(groups).max() == 3  # all of one group's 3 classes, then 2 from others


def test_quarter_turns_and_mirrors_become_classes_of_their_own():
  image_set = synthetic_image_set(num_groups=2, classes_per_group=3, per_class=2, size=8)
  turned = image_set.with_symmetries_as_classes(quarter_turns=True, mirror=True)
  assert len(turned) == 8 * len(image_set) and turned.num_classes == 8 * image_set.num_classes
  assert len(turned.group_names) == 16
  n, c = len(image_set), image_set.num_classes
  np.testing.assert_array_equal(turned.images[n:2 * n], np.rot90(image_set.images, 1, axes=(1, 2)))
  np.testing.assert_array_equal(turned.images[4 * n:5 * n], np.flip(image_set.images, 2))
  np.testing.assert_array_equal(turned.labels[n:2 * n], image_set.labels + c)
  assert turned.class_names[c] == 'class0@rot90' and turned.group_names[2] == 'group0@rot90'
  # An image's turns share no class with it, and each turned class is in one group.
  for label in range(turned.num_classes):
    assert len(set(turned.groups[turned.labels == label])) == 1
  oblong = type(image_set)(images=np.zeros((1, 4, 6, 1), np.uint8), labels=np.zeros(1, np.int32),
                           groups=np.zeros(1, np.int32), class_names=('a',))
  with pytest.raises(ValueError, match='square'):
    oblong.with_symmetries_as_classes()


def test_conv_blocks_embed_each_image_on_its_own():
  """GroupNorm keeps no batch statistics: an image's embedding does not depend on its batch."""
  encoder = models.ConvBlocks(features=(8, 8, 8, 8), norm_groups=4)
  images = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
  variables = encoder.init(jax.random.key(1), images)
  assert set(variables) == {'params'}
  together = encoder.apply(variables, images)
  chex.assert_shape(together, (6, 8))  # 28 -> 14 -> 7 -> 3 -> 1
  alone = jnp.concatenate([encoder.apply(variables, images[i:i + 1]) for i in range(6)])
  chex.assert_trees_all_close(together, alone, atol=1e-5)
  plain = models.ConvBlocks(features=(8,), norm_groups=0, embedding_dim=5)
  variables = plain.init(jax.random.key(1), images)
  assert 'bias' in variables['params']['conv0'] and 'norm0' not in variables['params']
  chex.assert_shape(plain.apply(variables, images), (6, 5))


@pytest.mark.parametrize('final_pool,reduce', [('max', np.max), ('mean', np.mean), ('2x2', None)])
def test_conv_blocks_pool_the_last_map_as_asked(final_pool, reduce):
  """A 3x3 last map: '2x2' keeps its top-left window, 'max' and 'mean' all nine positions."""
  encoder = models.ConvBlocks(features=(4,), norm_groups=0, final_pool=final_pool)
  images = jax.random.uniform(jax.random.key(0), (2, 3, 3, 1))
  variables = encoder.init(jax.random.key(1), images)
  conv = variables['params']['conv0']
  feature_map = np.maximum(0.0, np.asarray(jax.lax.conv_general_dilated(
      images, conv['kernel'], (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + conv['bias']))
  expected = feature_map[:, :2, :2].max(axis=(1, 2)) if reduce is None else reduce(feature_map, axis=(1, 2))
  chex.assert_trees_all_close(encoder.apply(variables, images), expected, atol=1e-5)
  with pytest.raises(UserError, match='final_pool'):
    models.ConvBlocks(features=(4,), final_pool='avg').init(jax.random.key(1), images)


@pytest.mark.parametrize('overrides,message', [
    ({'batch.kind': 'pairs'}, "batch.kind='classes'"),
    ({'batch.classes_per_group': 7}, 'classes_per_group'),
    ({'loss.shots': 3}, 'loss.shots'),
    ({'loss.shots': 1, 'loss.symmetric': True}, 'one query per class'),
    ({'loss.name': 'triplet', 'loss.symmetric': True}, 'setting of the episodic loss'),
    ({'optimizer.schedule': 'linear'}, 'optimizer.schedule'),
    ({'model.final_pool': 'avg'}, 'model.final_pool'),
])
def test_episodic_config_mistakes_are_caught(overrides, message):
  config_schema.validate(episodic_config())
  with pytest.raises(UserError, match=message):
    config_schema.validate(episodic_config(**overrides))


def test_cosine_schedule_decays_to_zero_at_decay_steps():
  config = episodic_config()
  schedule = train.learning_rate_schedule(config)
  assert schedule(0) == pytest.approx(config.optimizer.learning_rate)
  steps = train.decay_steps(config)
  assert steps == config.train.num_steps  # the config's 0: the decay ends with the run
  assert schedule(steps // 2) == pytest.approx(config.optimizer.learning_rate / 2)
  assert schedule(steps) == pytest.approx(0.0)


def test_cpu_config_tests_on_alphabets_and_drawers_it_never_trained_on():
  data = omniglot_config.get_config('cpu').data
  assert not set(data.train_alphabets) & set(data.test_alphabets)
  assert not set(data.train_drawers) & set(data.test_drawers)
  final = omniglot_config.get_config('final').data
  assert set(final.train_alphabets) == set(omniglot.BACKGROUND_ALPHABETS + omniglot.OPEN_EVALUATION_ALPHABETS)
  assert set(final.validation_alphabets) == set(final.train_alphabets)
  assert not set(final.train_drawers) & set(final.validation_drawers)


def lake_split(num_alphabets=2, characters=6, drawers=(1, 2, 3), size=8):
  """An Omniglot-like split whose images spell their character in their first row."""
  rows = [(a, c, d) for a in range(num_alphabets) for c in range(characters) for d in drawers]
  alphabet, character, drawer = (np.array(v) for v in zip(*rows))
  labels = alphabet * characters + character
  images = np.zeros((len(rows), size, size, 1), np.uint8)
  images[:, 0, :, 0] = ((labels[:, None] >> np.arange(size)) & 1) * 255
  return omniglot.Drawings(images=images, alphabets=np.array([f'A{a}' for a in alphabet]),
                           characters=np.array([f'A{a}/character{c:02d}' for a, c in zip(alphabet, character)]),
                           drawers=drawer.astype(np.int32), source='synthetic').image_set()


class PixelScorer:
  """Embeds an image as its first row; similarity: minus the L1 distance (an oracle on `lake_split`)."""
  output_kind = 'logit'

  def embed(self, images):
    return images[:, 0, :, 0].astype(np.float32)

  def similarity(self, e1, e2):
    return -np.abs(np.asarray(e1) - np.asarray(e2)).sum(-1)


def test_lake_runs_evaluator_draws_runs_from_a_split_and_scores_them():
  splits = {'train': lake_split(), 'test': lake_split()}
  config = {'kind': 'lake_runs', 'split': 'test', 'num_runs': 4, 'run_sets': 3, 'ways': 5}
  evaluator = evaluators.build('lake', config, splits)
  assert len(evaluator.run_sets) == 3 and all(len(s) == 4 for s in evaluator.run_sets)
  assert not np.array_equal(evaluator.run_sets[0][0].support, evaluator.run_sets[1][0].support)
  metrics = evaluator(PixelScorer())
  assert metrics['accuracy'] == 1.0 and metrics['set_min'] == 1.0
  constant = PixelScorer()
  constant.similarity = lambda e1, e2: np.zeros(np.broadcast_shapes(np.shape(e1), np.shape(e2))[:-1])
  assert evaluator(constant)['accuracy'] < 0.5  # chance is 1/5
  with pytest.raises(UserError, match='who drew'):
    evaluators.build('lake', config, {'test': synthetic_image_set()})  # no drawers
  with pytest.raises(UserError, match='run_sets'):
    evaluators.build('lake', config | {'run_sets': 0}, splits)


def test_lake_runs_evaluator_reads_published_runs(tmp_path):
  from siamese_jax import lake_runs  # pylint: disable=g-import-not-at-top
  split = lake_split(size=8)
  runs = lake_runs.make_runs(omniglot.Drawings.from_image_set(split), num_runs=2, ways=5, seed=1)
  lake_format.write_runs(tmp_path / 'runs', runs)
  evaluator = evaluators.build('lake', {'kind': 'lake_runs', 'path': str(tmp_path / 'runs')}, {'train': split})
  assert [run.name for run in evaluator.run_sets[0]] == ['run01', 'run02']
  assert evaluator(PixelScorer())['accuracy'] == 1.0
