"""The training loop: sharded steps, no batch gathering, checkpoints, resume, and bad input."""

import functools
import json
import os
import re
import types

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import synthetic_image_set

from siamese_jax import augment, checkpoints, config_schema, datasets, models, samplers, sharding, train
from siamese_jax.errors import UserError


def tiny_config(**train_overrides):
  c = config_schema.base_config()
  c.data.name = 'omniglot'  # replaced by the synthetic splits below
  c.model.features = (8, 16)
  c.model.kernel_sizes = (3, 3)
  c.model.embedding_dim = 32
  c.batch.size = 16
  c.optimizer.learning_rate = 1e-3
  c.train.num_steps = 40
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.eval_batch_size = 32
  c.train.best_metric = 'oneshot/accuracy'
  c.evaluators.oneshot = dict(kind='oneshot', split='validation', ways=4, shots=1, episodes=20)
  c.train.update(train_overrides)
  return c


def make_synthetic_splits():
  return {'train': synthetic_image_set(seed=0), 'validation': synthetic_image_set(seed=1)}


@pytest.fixture
def synthetic_splits(monkeypatch):
  splits = make_synthetic_splits()
  monkeypatch.setattr(datasets, 'load_splits', lambda data_config: splits)
  return splits


def resume_config(num_steps):
  config = tiny_config(num_steps=num_steps)
  config.test_evaluators.heldout = dict(kind='oneshot', split='validation', ways=3, shots=1, episodes=10)
  return config


@pytest.fixture(scope='module')
def uninterrupted_run(tmp_path_factory):
  """A 40-step device-resident run without a break, one step per call: the reference for resuming and for the
  host pipeline. Returns its workdir, best metrics, and the parameters and history of its step-40 checkpoint."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted') / 'run')
  with pytest.MonkeyPatch.context() as patch:
    splits = make_synthetic_splits()
    patch.setattr(datasets, 'load_splits', lambda data_config: splits)
    best = train.train_and_evaluate(resume_config(40), workdir)
  manager = checkpoints.Manager(workdir, 'oneshot/accuracy')
  return workdir, best, manager.restore_params(40), manager.history(40)


def without_timing(history):
  """The history without `elapsed_s`, which differs between any two runs."""
  return [{k: v for k, v in entry.items() if k != 'elapsed_s'} for entry in history]


def one_step(config, mesh, image_set):
  """A single fused device-resident step on `mesh`; returns the new state and metrics."""
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  state = train.init_state(config, model, tx, image_set.image_shape, jax.random.key(0))
  state = jax.device_put(state, sharding.replicated(mesh))
  data = train.put_dataset(image_set, samplers.class_layout(image_set.labels, image_set.groups), config, mesh)
  step_fn = train.compile_training_call(config, model, tx, mesh, sharding.replicated(mesh))
  return step_fn, (state, data, jax.random.key(7))


@pytest.mark.parametrize('shard_dataset', [False, True])
def test_two_device_step_equals_single_device_step(shard_dataset):
  assert jax.device_count() == 2, 'conftest sets two simulated CPU devices'
  config = tiny_config(steps_per_call=2)
  image_set = synthetic_image_set(per_class=5)  # 60 images: an odd number per device when sharded
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    config.shard_dataset = shard_dataset and len(devices) > 1
    step_fn, args = one_step(config, sharding.data_mesh(devices), image_set)
    state, sums = step_fn(*args)
    results.append((jax.device_get(state.params), jax.device_get(sums)))
  chex.assert_trees_all_close(results[0][1], results[1][1], rtol=1e-5)  # losses and accuracies
  # Adam's first steps are ~lr * sign(g): where |g| is near eps, float reassociation of the gradient
  # all-reduce moves a parameter by a few percent of one step (lr = 1e-3).
  chex.assert_trees_all_close(results[0][0], results[1][0], atol=5e-5)
  assert int(jax.device_get(state.step)) == 2


@pytest.mark.parametrize('shard_dataset', [False, True])
def test_step_keeps_the_batch_sharded(shard_dataset):
  """The pair batch must not be gathered onto every device: only gradients are all-reduced."""
  config = tiny_config()
  config.shard_dataset = shard_dataset
  mesh = sharding.data_mesh()
  step_fn, args = one_step(config, mesh, synthetic_image_set())
  hlo = step_fn.lower(*args).compile().as_text()
  assert 'all-reduce' in hlo
  assert 'all-to-all' not in hlo
  # Images never travel by all-gather; with a sharded dataset the 16x2 pair indices may (int32).
  gathered = re.findall(r'= (\w+)\[[\d,]*\]\{[\d,]*\} all-gather\(', hlo)
  assert set(gathered) <= ({'s32'} if shard_dataset else set()), gathered
  # A sharded dataset is assembled into the batch by one reduce-scatter, never gathered whole.
  assert ('reduce-scatter' in hlo) == shard_dataset


def test_train_resume_and_best_checkpoint(tmp_path, synthetic_splits, uninterrupted_run):
  workdir = str(tmp_path / 'run')
  best = train.train_and_evaluate(resume_config(20), workdir)
  # 4-way validation over 80 queries and 3-way heldout over 30: chance is 0.25 (SE 0.05) and 0.33 (SE 0.09);
  # this data is learnt to ~0.75 and ~0.9 within 20 steps.
  assert best['oneshot/accuracy'] >= 0.5
  assert best['test/heldout/accuracy'] >= 0.6
  results = json.loads(open(os.path.join(workdir, 'results.json')).read())
  assert results['step'] == best['step'] and results['metrics']['heldout/accuracy'] == best['test/heldout/accuracy']
  assert '| heldout |' in open(os.path.join(workdir, 'results.md')).read()
  for name in ('config.json', 'history.json', 'learning_curve.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  manager = checkpoints.Manager(workdir, 'oneshot/accuracy')
  assert manager.steps() == [20]

  # Resuming continues from step 20 and leaves the first 20 steps' history in place; the run ends where one
  # without a break ends: the same parameters and the same validations.
  train.train_and_evaluate(resume_config(40), workdir)
  manager = checkpoints.Manager(workdir, 'oneshot/accuracy')
  assert 40 in manager.steps() and len(manager.steps()) <= 2  # the latest and the best
  model = models.build(tiny_config().model)
  tx = train.make_optimizer(tiny_config())
  template = train.init_state(tiny_config(), model, tx, (16, 16, 1), jax.random.key(0))
  state, history = manager.restore(template, 40)
  assert int(state.step) == 40
  assert [h['step'] for h in history] == [20, 40]
  _, _, uninterrupted_params, uninterrupted_history = uninterrupted_run
  chex.assert_trees_all_close(state.params, uninterrupted_params, atol=5e-5)  # as between one and two devices
  chex.assert_trees_all_close(without_timing(history), without_timing(uninterrupted_history), rtol=1e-5)
  # Training time keeps counting across the resume.
  elapsed = [h['elapsed_s'] for h in history]
  assert 0 < elapsed[0] < elapsed[1]

  # num_steps below the latest step: no further training, the best checkpoint is scored on the test sets.
  os.remove(os.path.join(workdir, 'results.json'))
  rescored = train.train_and_evaluate(resume_config(1), workdir)
  assert checkpoints.Manager(workdir, 'oneshot/accuracy').steps() == manager.steps()
  assert len(json.loads(open(os.path.join(workdir, 'history.json')).read())) == 2
  assert json.loads(open(os.path.join(workdir, 'results.json')).read())['step'] == rescored['step']


def test_checkpoint_round_trip(tmp_path):
  config = tiny_config()
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  state = train.init_state(config, model, tx, (16, 16, 1), jax.random.key(3))
  manager = checkpoints.Manager(str(tmp_path), 'oneshot/accuracy')
  manager.save(5, state, {'oneshot/accuracy': 0.5}, [{'step': 5}])
  manager.wait()
  other = train.init_state(config, model, tx, (16, 16, 1), jax.random.key(4))
  restored, history = manager.restore(other, 5)
  chex.assert_trees_all_equal(restored, state)
  assert history == [{'step': 5}]


def test_workdir_with_another_model_is_refused_before_writing(tmp_path, synthetic_splits):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(num_steps=20), workdir)
  before = sorted(os.listdir(workdir))
  bigger = tiny_config(num_steps=40)
  bigger.model.embedding_dim = 64
  with pytest.raises(UserError, match='another model'):
    train.train_and_evaluate(bigger, workdir)
  assert sorted(os.listdir(workdir)) == before
  # A run kept without the moving average cannot resume with one: the training state differs.
  with pytest.raises(UserError, match=r"another model or training state \(\['ema_params'\]"):
    train.train_and_evaluate(tiny_config(num_steps=40, ema_decay=0.99), workdir)
  assert sorted(os.listdir(workdir)) == before


@pytest.mark.parametrize('mutate,message', [
    (lambda c: c.update({'learning_rate': 1.0}), "config: unknown key 'learning_rate'"),
    (lambda c: c.evaluators.oneshot.update({'episdoes': 5}), "evaluators.oneshot: unknown key 'episdoes'"),
    (lambda c: c.data.update({'image_sise': 28}), "data: unknown key 'image_sise'"),
    (lambda c: c.loss.update({'name': 'hinge'}), 'loss.name'),
    (lambda c: c.loss.update({'name': 'contrastive'}), 'distance head'),
    (lambda c: c.batch.update({'size': 15}), 'not divisible'),
    (lambda c: c.evaluators.oneshot.update({'split': 'test'}), 'not a split'),
    (lambda c: c.train.update({'time_budget_minutes': -1.0}), 'train.time_budget_minutes=-1.0'),
    (lambda c: c.train.update({'stop_at_score': -0.5}), 'train.stop_at_score=-0.5'),
])
def test_bad_config_is_one_clear_error_and_writes_nothing(tmp_path, synthetic_splits, mutate, message):
  config = tiny_config()
  mutate(config)
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_host_pipeline_matches_device_resident_training(tmp_path, synthetic_splits, uninterrupted_run):
  """Batches gathered on the host train exactly as batches drawn on the device (both one step per call)."""
  config = resume_config(40)
  config.device_resident = False
  workdir = str(tmp_path / 'host')
  best = train.train_and_evaluate(config, workdir)
  _, device_best, device_params, device_history = uninterrupted_run
  manager = checkpoints.Manager(workdir, 'oneshot/accuracy')
  chex.assert_trees_all_close(manager.restore_params(40), device_params, atol=5e-5)  # as between one and two devices
  chex.assert_trees_all_close(without_timing(manager.history(40)), without_timing(device_history), rtol=1e-5)
  chex.assert_trees_all_close({k: v for k, v in best.items() if k != 'elapsed_s'},
                              {k: v for k, v in device_best.items() if k != 'elapsed_s'}, rtol=1e-5)


def train_with_validation_scores(workdir, monkeypatch, caplog, scores, **train_overrides):
  """A 120-step run validated every 10 steps whose validations score `scores` in turn: (best, validated steps)."""
  scores = iter(scores)
  monkeypatch.setattr(train.evaluators, 'run_all', lambda evals, scorer: {'oneshot/accuracy': next(scores)})
  config = tiny_config(num_steps=120, eval_every=10, **train_overrides)
  with caplog.at_level('INFO'):
    best = train.train_and_evaluate(config, str(workdir))
  history = json.loads((workdir / 'history.json').read_text())
  return best, [h['step'] for h in history]


def test_early_stopping_after_patience_validations(tmp_path, synthetic_splits, monkeypatch, caplog):
  # best at the 2nd validation, then two worse ones
  best, steps = train_with_validation_scores(tmp_path / 'run', monkeypatch, caplog, [0.5, 0.7, 0.6, 0.65, 0.9],
                                             patience=2)
  assert best['step'] == 20 and best['oneshot/accuracy'] == 0.7
  assert steps == [10, 20, 30, 40]
  assert 'early stop: oneshot/accuracy did not improve for 2 validations' in caplog.text


def test_training_stops_at_the_first_validation_that_reaches_stop_at_score(tmp_path, synthetic_splits, monkeypatch,
                                                                            caplog):
  best, steps = train_with_validation_scores(tmp_path / 'run', monkeypatch, caplog, [0.5, 0.7, 0.92, 0.95],
                                             stop_at_score=0.9)
  assert best['step'] == 30 and best['oneshot/accuracy'] == 0.92
  assert steps == [10, 20, 30]
  assert 'oneshot/accuracy reached train.stop_at_score=0.9 at step 30: 0.9200 after' in caplog.text
  caplog.clear()  # the same command again trains no further
  _, steps = train_with_validation_scores(tmp_path / 'run', monkeypatch, caplog, [0.99], stop_at_score=0.9)
  assert steps == [10, 20, 30]
  assert 'training finished at step 30: oneshot/accuracy reached' in caplog.text


def test_weight_decay_shrinks_kernels_only():
  config = tiny_config()
  params = {'conv': {'kernel': jnp.full((3, 3, 1, 2), 2.0), 'bias': jnp.ones(2)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for decay, kernel_after in ((0.0, 2.0), (0.1, 2.0 * (1 - 1e-3 * 0.1))):
    config.optimizer.weight_decay = decay
    tx = train.make_optimizer(config)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = jax.tree.map(lambda p, u: p + u, params, updates)
    chex.assert_trees_all_close(new, {'conv': {'kernel': jnp.full((3, 3, 1, 2), kernel_after), 'bias': jnp.ones(2)}},
                                rtol=1e-6)


def test_negative_weight_decay_is_refused():
  config = tiny_config()
  config.optimizer.weight_decay = -0.1
  with pytest.raises(UserError, match='weight_decay'):
    config_schema.validate(config)


def test_negative_eval_average_shifts_is_refused():
  config = tiny_config()
  config.train.eval_average_shifts = -1
  with pytest.raises(UserError, match='eval_average_shifts'):
    config_schema.validate(config)


def test_instance_term_adds_to_the_pair_loss_on_the_same_first_view():
  config = tiny_config()
  config.model.head = 'euclidean'
  config.loss.name = 'contrastive'
  image_set = synthetic_image_set()
  model = models.build(config.model)
  # He-normal kernels: Koch's initialisation embeds every image alike (cosines within 1e-5 of 1), where
  # NT-Xent is log(2N - 1) whatever the views; these spread the embeddings so that the views matter.
  leaves, treedef = jax.tree.flatten(models.init_params(model, image_set.image_shape, jax.random.key(0)))
  params = jax.tree.unflatten(treedef, [
      jax.random.normal(k, p.shape) * (np.sqrt(2 / np.prod(p.shape[:-1])) if p.ndim > 1 else 0.1)
      for k, p in zip(jax.random.split(jax.random.key(2), len(leaves)), leaves)])
  images = jnp.asarray(image_set.images[:32].reshape((16, 2) + image_set.image_shape))
  labels = jnp.asarray(np.arange(16) % 2, jnp.int32)
  plain, plain_metrics = train.objective(params, images, labels, jax.random.key(1), model=model, config=config)
  config.loss.instance_weight = 0.25
  loss, metrics = train.objective(params, images, labels, jax.random.key(1), model=model, config=config)
  chex.assert_trees_all_close(loss, plain + 0.25 * metrics['instance_loss'], rtol=1e-5)
  chex.assert_trees_all_close(metrics['accuracy'], plain_metrics['accuracy'])
  # The term recomputed: NT-Xent between the embeddings of two distortions of the 32 images, the first drawn
  # with the step's key (the pair loss's view) and the second with that key folded with 1.
  affine = augment.AffineConfig.from_config(config.augment)
  flat = images.reshape((32,) + image_set.image_shape).astype(jnp.float32) / 255.0
  keys = (jax.random.key(1), jax.random.fold_in(jax.random.key(1), 1))
  views = [augment.random_affine(k, flat, affine) for k in keys]
  assert not np.allclose(views[0], views[1])  # two different distortions
  z = [np.asarray(model.apply({'params': params}, v, method=models.SiameseNet.embed), np.float64) for v in views]
  z = np.concatenate([e / np.linalg.norm(e, axis=1, keepdims=True) for e in z])  # [64, D] on the sphere
  logits = z @ z.T / config.loss.temperature
  expected = np.mean([np.log(np.sum(np.exp(np.delete(logits[i], i)))) - logits[i, (i + 32) % 64] for i in range(64)])
  chex.assert_trees_all_close(metrics['instance_loss'], expected, rtol=1e-4)


def test_moving_average_of_the_parameters():
  config = tiny_config()
  image_set = synthetic_image_set()
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  images = jnp.asarray(image_set.images[:32].reshape((16, 2) + image_set.image_shape))
  labels = jnp.asarray(np.arange(16) % 2, jnp.int32)
  state = train.init_state(config, model, tx, image_set.image_shape, jax.random.key(0))
  assert state.ema_params is None and state.eval_params is state.params  # ema_decay = 0: no average kept

  config.train.ema_decay = 0.999
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, config=config))
  state = train.init_state(config, model, tx, image_set.image_shape, jax.random.key(0))
  chex.assert_trees_all_equal(state.ema_params, state.params)
  expected = state.params
  for i in range(3):
    state, _ = step(state, images, labels, jax.random.key(i))
    decay = min(0.999, (1 + i) / (10 + i))  # the warm-up: 0.1, 0.18, 0.25
    expected = jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, expected, state.params)
  chex.assert_trees_all_close(state.ema_params, expected, rtol=1e-5, atol=1e-7)
  assert state.eval_params is state.ema_params
  assert not np.allclose(jax.tree.leaves(state.ema_params)[0], jax.tree.leaves(state.params)[0])


def test_run_with_moving_average_validates_and_keeps_the_average(tmp_path, synthetic_splits):
  workdir = str(tmp_path / 'run')
  config = tiny_config(num_steps=40, ema_decay=0.99)
  train.train_and_evaluate(config, workdir)
  train.train_and_evaluate(tiny_config(num_steps=60, ema_decay=0.99), workdir)  # resumes the average too
  manager = checkpoints.Manager(workdir, 'oneshot/accuracy')
  model = models.build(config.model)
  template = train.init_state(config, model, train.make_optimizer(config), (16, 16, 1), jax.random.key(0))
  state, _ = manager.restore(template, 60)
  assert int(state.step) == 60
  params = manager.restore_params(60)  # what evaluate/compare load: the average
  chex.assert_trees_all_close(params, state.ema_params)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(params, state.params)
  assert manager.history(60) == manager.restore(template, 60)[1]


def test_restore_params_reads_the_parameters_without_a_template(tmp_path):
  config = tiny_config()
  model = models.build(config.model)
  state = train.init_state(config, model, train.make_optimizer(config), (16, 16, 1), jax.random.key(3))
  manager = checkpoints.Manager(str(tmp_path), 'oneshot/accuracy')
  manager.save(7, state, {'oneshot/accuracy': 0.5}, [{'step': 7, 'oneshot/accuracy': 0.5}])
  manager.wait()
  params = manager.restore_params(7)
  chex.assert_trees_all_equal(params, state.params)
  assert manager.history(7) == [{'step': 7, 'oneshot/accuracy': 0.5}]


def test_checkpoints_written_with_the_standard_handler_still_restore(tmp_path):
  """Workdirs saved before the state moved to Orbax's PyTree handler (same files) resume and load."""
  config = tiny_config()
  model = models.build(config.model)
  state = train.init_state(config, model, train.make_optimizer(config), (16, 16, 1), jax.random.key(5))
  history = [{'step': 3, 'oneshot/accuracy': 0.25}]
  with ocp.CheckpointManager(tmp_path / 'checkpoints', options=ocp.CheckpointManagerOptions(create=True),
                             item_handlers={'state': ocp.StandardCheckpointHandler(),
                                            'history': ocp.JsonCheckpointHandler()}) as old:
    old.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                                        history=ocp.args.JsonSave(history)))
  manager = checkpoints.Manager(str(tmp_path), 'oneshot/accuracy')
  restored, restored_history = manager.restore(state, 3)
  chex.assert_trees_all_equal(flax.serialization.to_state_dict(restored), flax.serialization.to_state_dict(state))
  assert restored_history == history
  chex.assert_trees_all_equal(manager.restore_params(3), state.params)


def test_moving_average_decay_must_lie_below_one():
  config = tiny_config(ema_decay=1.0)
  with pytest.raises(UserError, match='ema_decay'):
    config_schema.validate(config)


@pytest.mark.parametrize('groups', [8, -2])
def test_norm_groups_that_do_not_split_every_block_are_refused(groups):
  config = tiny_config()
  config.model.encoder, config.model.features, config.model.norm_groups = 'conv_blocks', (16, 12), groups
  with pytest.raises(UserError, match='model.norm_groups'):
    config_schema.validate(config)
  config.model.norm_groups = 4
  config_schema.validate(config)


def cosine_config(**train_overrides):
  config = tiny_config(**train_overrides)
  config.optimizer.schedule = 'cosine'
  config.optimizer.decay_steps = 100
  return config


def test_cosine_decay_follows_steps_or_time_whichever_is_further_along():
  config = cosine_config()
  rate = config.optimizer.learning_rate
  assert train.learning_rate_schedule(config)(50) == pytest.approx(rate / 2)
  assert train.learning_rate_schedule(config, 0.25)(50) == pytest.approx(rate / 2)  # the steps lead
  assert train.learning_rate_schedule(config, 0.75)(50) == pytest.approx(rate * (1 + np.cos(0.75 * np.pi)) / 2)
  assert train.learning_rate_schedule(config, 1.5)(0) == pytest.approx(0.0)
  assert train.learning_rate_schedule(config)(150) == pytest.approx(0.0)


def test_decay_steps_0_ends_the_cosine_with_the_run():
  config = cosine_config(num_steps=300)
  config.optimizer.decay_steps = 0
  config_schema.validate(config)
  rate = config.optimizer.learning_rate
  assert train.learning_rate_schedule(config)(150) == pytest.approx(rate / 2)
  assert train.learning_rate_schedule(config)(300) == pytest.approx(0.0)
  config.train.num_steps = 600  # as --config.train.num_steps=600 would: the decay follows
  assert train.learning_rate_schedule(config)(300) == pytest.approx(rate / 2)
  config.optimizer.decay_steps = -1
  with pytest.raises(UserError, match='optimizer.decay_steps=-1'):
    config_schema.validate(config)


def test_cosine_optimizer_is_adam_on_the_cosine_schedule_and_reads_the_time_progress():
  import optax  # pylint: disable=import-outside-toplevel
  config = cosine_config()
  model = models.build(config.model)
  tx = train.make_optimizer(config)
  state = train.init_state(config, model, tx, (16, 16, 1), jax.random.key(0))
  reference = optax.adam(optax.cosine_decay_schedule(config.optimizer.learning_rate, 100))
  ours, theirs = state.opt_state, reference.init(state.params)
  for i in range(3):
    grads = jax.tree.map(lambda p, i=i: jnp.full_like(p, 0.1 * (i + 1)) * jnp.sign(p + 0.5), state.params)
    our_updates, ours = tx.update(grads, ours, state.params)
    their_updates, theirs = reference.update(grads, theirs, state.params)
    chex.assert_trees_all_close(our_updates, their_updates, rtol=1e-5, atol=1e-8)
  spent = train.with_time_progress(state, 1.0, sharding.replicated(sharding.data_mesh()))
  updates, _ = tx.update(grads, spent.opt_state, state.params)
  chex.assert_trees_all_close(updates, jax.tree.map(jnp.zeros_like, updates))


def test_time_budget_ends_the_run_with_a_validation_and_the_rate_at_zero(tmp_path, synthetic_splits, monkeypatch,
                                                                         caplog):
  clock = iter(range(10**6))  # each reading of the loop's clock is one second later
  monkeypatch.setattr(train, 'time', types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
  config = cosine_config(num_steps=1000, time_budget_minutes=0.5)
  config.optimizer.decay_steps = 1000
  with caplog.at_level('INFO'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  history = json.loads((tmp_path / 'run' / 'history.json').read_text())
  assert 10 < history[-1]['step'] < 40 and history[-1]['elapsed_s'] >= 30
  assert 'oneshot/accuracy' in history[-1]
  assert 'reached train.time_budget_minutes=0.5' in caplog.text
  rates = [float(r) for r in re.findall(r'  lr (\S+)  ', caplog.text)]
  assert rates[-1] == 0.0  # the step-based cosine alone would still be near its start
  assert rates[0] < config.optimizer.learning_rate * 0.9
