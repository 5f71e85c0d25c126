"""Training and evaluation loop shared by every task.

`train_and_evaluate(config, workdir)` validates the config, loads the data, builds the network and
optimizer, resumes from the latest checkpoint in `workdir` if there is one, then trains with periodic
logging, validation and checkpointing. The step functions are pure; I/O stays in the loop.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, NamedTuple

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from siamese_jax import augment, checkpoints, config_schema, datasets, evaluators, inference, losses, models
from siamese_jax import files, plots, preemption, registry, samplers, sharding
from siamese_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  """`ema_params`: the moving average of `params` (train.ema_decay > 0), else None."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any = None

  @property
  def eval_params(self):
    """The parameters that are validated, checkpoint-selected and used: the average when there is one."""
    return self.params if self.ema_params is None else self.ema_params


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with a decaying learning rate (`learning_rate_schedule`), per `config.optimizer`.

  With `weight_decay` > 0 it is AdamW: weights shrink by learning_rate * weight_decay each step,
  decoupled from the gradient statistics, and only kernels (ndim > 1) shrink, not biases or norm scales.
  """
  optimizer_config = config.optimizer
  if optimizer_config.schedule == 'cosine':
    rate = scale_by_cosine_decay(config)
  else:
    rate = optax.scale_by_learning_rate(learning_rate_schedule(config))
  decay = []
  if optimizer_config.weight_decay:
    decay = [optax.add_decayed_weights(optimizer_config.weight_decay,
                                       mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params))]
  return optax.chain(optax.scale_by_adam(), *decay, rate)


def decay_steps(config) -> int:
  """`optimizer.decay_steps`, where 0 means `train.num_steps`: a cosine then ends with the run, however
  much longer or shorter the command line makes it."""
  return config.optimizer.decay_steps or config.train.num_steps


def learning_rate_schedule(config, time_progress=0.0):
  """count -> learning rate. 'staircase': times `decay_rate` every `decay_steps`; 'cosine': a half cosine
  down to 0 at `decay_steps` (Loshchilov & Hutter 2017), for a run of known length such as the CPU Omniglot
  config, or sooner where `time_progress` (the fraction of `train.time_budget_minutes` spent) is further
  along than the steps: a run on a slower machine then still ends its decay within its budget."""
  optimizer_config, steps = config.optimizer, decay_steps(config)
  if optimizer_config.schedule == 'cosine':
    def cosine(count):
      progress = jnp.minimum(jnp.maximum(count / steps, time_progress), 1.0)
      return optimizer_config.learning_rate * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return cosine
  return optax.exponential_decay(optimizer_config.learning_rate, steps, optimizer_config.decay_rate, staircase=True)


class CosineDecayState(NamedTuple):
  count: jax.Array
  time_progress: jax.Array  # written by the training loop under train.time_budget_minutes, else 0


def scale_by_cosine_decay(config) -> optax.GradientTransformation:
  """-rate * updates, the rate on the cosine of `learning_rate_schedule`; the state carries the time
  progress so that the jitted steps read the loop's clock without being traced again."""

  def init(params):
    del params
    return CosineDecayState(count=jnp.zeros([], jnp.int32), time_progress=jnp.zeros([], jnp.float32))

  def update(updates, state, params=None):
    del params
    rate = learning_rate_schedule(config, state.time_progress)(state.count)
    updates = jax.tree.map(lambda u: (-rate * u).astype(u.dtype), updates)
    return updates, state._replace(count=optax.safe_int32_increment(state.count))

  return optax.GradientTransformation(init, update)


def init_state(config, model, tx, image_shape, key) -> TrainState:
  params = models.init_params(model, image_shape, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=params if config.train.ema_decay else None)


def draw_batch(key, layout: samplers.ClassLayout, batch_config):
  """Image indices and labels of one batch: pairs [B, 2] or an M-per-class batch [B]."""
  if batch_config.kind == 'pairs':
    return samplers.sample_pairs(key, layout, batch_config.size, batch_config.positive_fraction,
                                 batch_config.same_group_prob)
  return samplers.sample_classes(key, layout, batch_config.size // batch_config.images_per_class,
                                 batch_config.images_per_class, batch_config.classes_per_group)


def objective(params, images, labels, key, *, model, config):
  """Loss and batch metrics for uint8 images ([B, 2, H, W, C] pairs or [B, H, W, C] for triplets)."""
  affine = augment.AffineConfig.from_config(config.augment)
  flat = inference.to_float(images).reshape((-1,) + images.shape[-3:])
  views = [augment.random_affine(key, flat, affine)]
  if config.loss.instance_weight:  # a second distortion of every image (validated: pair losses only)
    views.append(augment.random_affine(jax.random.fold_in(key, 1), flat, affine))
  embeddings = model.apply({'params': params}, jnp.concatenate(views), method=models.SiameseNet.embed)
  embeddings = jnp.split(embeddings, len(views))
  loss_entry = registry.lookup(losses.LOSSES, config.loss.name, 'loss.name')
  settings = {key: config.loss[key] for key in registry.keywords(loss_entry.fn)}
  loss, accuracy = loss_entry.fn(loss_inputs(loss_entry.consumes, model, params, embeddings[0], config), labels,
                                 **settings)
  metrics = {'accuracy': accuracy}
  if config.loss.instance_weight:
    metrics['instance_loss'] = losses.instance_discrimination(*embeddings, config.loss.temperature)
    loss = loss + config.loss.instance_weight * metrics['instance_loss']
  return loss, {'loss': loss, **metrics}


def loss_inputs(consumes: str, model, params, embeddings, config):
  """What a loss consumes (`losses.Loss.consumes`), from the batch's embeddings [B, D] (or [2B, D] for pairs)."""
  if consumes == 'embeddings':
    return embeddings
  if consumes == 'episodes':
    return episode_scores(model, params, embeddings, config)
  return model.apply({'params': params}, embeddings, method=models.SiameseNet.compare_pairs)


def episode_scores(model, params, embeddings, config):
  """Similarities [E, W * Q, W] of each query to each class of its episode, through the model's head.

  `embeddings` [E * W * P, D] come in the sampler's class-major order, P = batch.images_per_class; the
  first `loss.shots` images of a class are its support, the rest its queries. A query's score for a
  class is the mean over that class's support images, as the one-shot evaluator scores K shots.
  """
  ways = config.batch.classes_per_group or config.batch.size // config.batch.images_per_class
  per_class, shots = config.batch.images_per_class, config.loss.shots
  embeddings = embeddings.reshape((-1, ways, per_class, embeddings.shape[-1]))
  support = embeddings[:, :, :shots]  # [E, W, K, D]
  queries = embeddings[:, :, shots:].reshape((embeddings.shape[0], -1, 1, 1, embeddings.shape[-1]))
  out = model.apply({'params': params}, queries, support[:, None], method=models.SiameseNet.compare)
  return models.similarity(out, model.head.output_kind).mean(-1)


def train_step(state: TrainState, images, labels, key, *, model, tx, config):
  """One optimizer step. Pure: returns the new state and the batch metrics."""
  grad_fn = jax.value_and_grad(functools.partial(objective, model=model, config=config), has_aux=True)
  (loss, batch_metrics), grads = grad_fn(state.params, images, labels, key)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    # Warm-up as in tf.train.ExponentialMovingAverage: early averages do not drag the initial weights along.
    decay = jnp.minimum(config.train.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema_params = optax.incremental_update(params, ema_params, 1.0 - decay)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)
  if config.train.skip_nonfinite_steps:
    return _skip_if_nonfinite(state, new_state, loss, updates, batch_metrics)
  return new_state, batch_metrics


def _skip_if_nonfinite(state, new_state, loss, updates, batch_metrics):
  """`new_state`, or `state` one step on when the loss or the updates (hence a gradient) are non-finite.

  Chosen on the device, so the host never waits; the step's metrics then count as 0 and 'skipped' as 1,
  so sums stay finite and `_log_line` averages over the steps taken.
  """
  finite = jnp.isfinite(loss) & _all_finite(updates)
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state.replace(step=state.step), state)
  metrics = {name: jnp.where(finite, value, 0.0) for name, value in batch_metrics.items()}
  return kept.replace(step=new_state.step), metrics | {'skipped': jnp.logical_not(finite).astype(jnp.int32)}


def device_resident_steps(state, data, key, *, num_steps, mesh, model, tx, config):
  """`num_steps` steps with batches drawn and gathered on the device; returns the summed metrics.

  The class layout is replicated on every device and the images are replicated or split by rows
  (`shard_dataset`); indices are sampled identically everywhere, and the gathered batch is sharded
  along its first axis.
  """

  def body(state, step_key):
    draw_key, augment_key = jax.random.split(step_key)
    indices, labels = draw_batch(draw_key, data['layout'], config.batch)
    labels = jax.lax.with_sharding_constraint(labels, sharding.batch_sharded(mesh))
    images = sharding.gather_rows(data['images'], indices, mesh, config.shard_dataset)
    return train_step(state, images, labels, augment_key, model=model, tx=tx, config=config)

  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(state.step + jnp.arange(num_steps))
  if num_steps == 1:  # scan builds a loop even for one step, whatever its unroll setting
    return body(state, keys[0])
  # XLA:CPU runs convolutions inside a while loop ~5x slower than outside one (measured: 458 vs 90 ms
  # per smoke step), so on the CPU the loop is unrolled; accelerators keep the compact loop.
  unroll = num_steps if jax.default_backend() == 'cpu' else 1
  state, step_metrics = jax.lax.scan(body, state, keys, unroll=unroll)
  return state, jax.tree.map(jnp.sum, step_metrics)


def put_dataset(image_set, layout, config, mesh):
  """The device-resident training data: images (replicated or row-sharded) and the class layout."""
  images = (sharding.put_sharded_table(image_set.images, mesh) if config.shard_dataset
            else sharding.put_replicated(image_set.images, mesh))
  return {'images': images, 'layout': sharding.put_replicated(layout, mesh)}


def host_step(state, images, labels, key, *, model, tx, config):
  """One step on a batch gathered on the host; metrics returned as sums like the fused form."""
  step_key = jax.random.fold_in(key, state.step)
  return train_step(state, images, labels, jax.random.split(step_key)[1], model=model, tx=tx, config=config)


class HostBatches:
  """Batches gathered on the host: indices drawn by the same samplers on the CPU, images sent sharded."""

  def __init__(self, image_set, layout, config, mesh):
    self.images = image_set.images
    self.mesh = mesh
    # Indices are drawn on the CPU: committed CPU inputs make the jitted sampler run there.
    self._cpu = jax.local_devices(backend='cpu')[0]
    self._layout = jax.device_put(layout, self._cpu)
    self._draw = jax.jit(functools.partial(draw_batch, batch_config=config.batch))

  def __call__(self, key, step: int):
    draw_key = jax.device_put(jax.random.split(jax.random.fold_in(key, step))[0], self._cpu)
    indices, labels = jax.device_get(self._draw(draw_key, self._layout))
    # Each process gathers only its own rows of the global batch.
    rows = np.array_split(np.arange(len(labels)), jax.process_count())[jax.process_index()]
    return sharding.put_global_batch((self.images[indices[rows]], labels[rows]), self.mesh)


def compile_training_call(config, model, tx, mesh, state_sharding):
  """The jitted training call for the configured input path."""
  data_sharding = sharding.replicated(mesh)
  if config.device_resident:
    fn = functools.partial(device_resident_steps, num_steps=config.train.steps_per_call, mesh=mesh, model=model,
                           tx=tx, config=config)
    images = sharding.batch_sharded(mesh) if config.shard_dataset else data_sharding
    dataset_sharding = {'images': images, 'layout': data_sharding}
    return jax.jit(fn, in_shardings=(state_sharding, dataset_sharding, data_sharding),
                   out_shardings=(state_sharding, data_sharding), donate_argnums=0)
  fn = functools.partial(host_step, model=model, tx=tx, config=config)
  batch = sharding.batch_sharded(mesh)
  return jax.jit(fn, in_shardings=(state_sharding, batch, batch, data_sharding),
                 out_shardings=(state_sharding, data_sharding), donate_argnums=0)


def _log_line(step, num_steps, sums, count, lr, rate, unit, skipped_steps=None):
  """Logs the means over the steps taken (skipped ones excluded), and the run's skipped steps when counted."""
  taken = count - int(sums.pop('skipped', 0))
  means = {k: float(v) / taken for k, v in sums.items()}
  skipped = '' if skipped_steps is None else f'  skipped {skipped_steps} non-finite steps so far'
  logging.info('step %d/%d  loss %.4f  accuracy %.3f  lr %.3g  %.0f %s/s%s', step, num_steps,
               means['loss'], means['accuracy'], lr, rate, unit, skipped)
  return means


def prepare(config, workdir):
  """Everything that can fail on bad input, done before anything is written to `workdir`."""
  config_schema.validate(config)
  files.check_writable_folder(workdir)
  splits = datasets.load_splits(config.data)
  mesh = sharding.data_mesh()
  sharding.check_batch_size(config.batch.size, mesh)
  model = models.build(config.model)
  tx = make_optimizer(config)
  train_set = splits['train']
  state = jax.eval_shape(lambda: init_state(config, model, tx, train_set.image_shape, jax.random.key(0)))
  checkpoints.check_compatible(workdir, state)
  evals = evaluators.build_all(inference.read_as_trained(config.evaluators, config.data), splits)
  test_evals = evaluators.build_all(inference.read_as_trained(config.test_evaluators, config.data), splits,
                                    'test_evaluators')
  return splits, mesh, model, tx, evals, test_evals


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains per `config`, writing checkpoints, metrics and plots under `workdir`.

  Returns the validation metrics of the best checkpoint, plus the `test_evaluators`' metrics of that
  checkpoint (prefixed 'test/'), which are also written to results.json and results.md.
  """
  splits, mesh, model, tx, evals, test_evals = prepare(config, workdir)
  train_set = splits['train']
  key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(key)
  state_sharding = sharding.replicated(mesh)
  state = jax.jit(functools.partial(init_state, config, model, tx, train_set.image_shape),
                  out_shardings=state_sharding)(init_key)

  is_main = jax.process_index() == 0
  manager = checkpoints.Manager(workdir, config.train.best_metric, training=True)
  writer = None
  try:
    state, history = manager.restore_latest(state)
    if is_main:
      os.makedirs(workdir, exist_ok=True)
      files.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
      writer = MetricWriter(workdir)
    with preemption.StopNotice() as notice:
      return _train(config, workdir, splits, mesh, model, tx, evals, test_evals, state, history, manager,
                    writer, notice, train_key)
  finally:
    if writer:
      writer.close()
    manager.close()


def _train(config, workdir, splits, mesh, model, tx, evals, test_evals, state, history, manager, writer, notice,
           train_key):
  """The loop of `train_and_evaluate` from the restored `state`: train, log, validate, save, stop, test."""
  train_set = splits['train']
  is_main = jax.process_index() == 0
  start_step = int(state.step)
  state_sharding = sharding.replicated(mesh)
  logging.info('training on %d images of %d classes in %d groups, from %s; %d devices; from step %d',
               len(train_set), train_set.num_classes, len(train_set.group_names), train_set.source, mesh.size,
               start_step)

  layout = samplers.class_layout(train_set.labels, train_set.groups)
  step_fn = compile_training_call(config, model, tx, mesh, state_sharding)
  if config.device_resident:
    data = put_dataset(train_set, layout, config, mesh)
    steps_per_call = config.train.steps_per_call
  else:
    host_batches = HostBatches(train_set, layout, config, mesh)
    steps_per_call = 1

  scorer = inference.Scorer.for_config(config, model, state.eval_params, mesh)
  num_steps = config.train.num_steps
  sums, count, last_time, last_step = None, 0, time.perf_counter(), start_step
  # Training seconds (validation included) since step 0, carried over a resume: time to an accuracy.
  elapsed_before = history[-1].get('elapsed_s', 0.0) if history else 0.0
  run_start = last_time
  budget_s = 60.0 * config.train.time_budget_minutes
  time_progress = _time_progress(elapsed_before, budget_s)
  train_means = {}
  step = start_step
  stop_reason = f'reached train.num_steps={num_steps}'
  target_reached = _target_reached(manager, history, config.train.stop_at_score)
  cadence = checkpoints.Cadence(config.train.checkpoint_every, steps_per_call)
  guard = _DivergenceGuard(manager, start_step if start_step else None, config.train.skip_nonfinite_steps,
                           history[-1].get('skipped_steps', 0) if history else 0)
  while step < num_steps:
    if time_progress >= 1.0:
      stop_reason = f'reached train.time_budget_minutes={config.train.time_budget_minutes:g}'
      break
    if target_reached:
      stop_reason = target_reached
      break
    first = step + 1
    if budget_s and config.optimizer.schedule == 'cosine':
      state = with_time_progress(state, time_progress, state_sharding)
    if config.device_resident:
      state, step_sums = step_fn(state, data, train_key)
    else:
      images, labels = host_batches(train_key, step)
      state, step_sums = step_fn(state, images, labels, train_key)
    step += steps_per_call
    count += steps_per_call
    sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
    guard.queued(first, step, step_sums['loss'])
    time_progress = _time_progress(elapsed_before + time.perf_counter() - run_start, budget_s)
    out_of_time = time_progress >= 1.0

    log_step = step % config.train.log_every < steps_per_call or step >= num_steps or out_of_time
    eval_step = step % config.train.eval_every < steps_per_call or step >= num_steps or out_of_time
    stop = notice.requested(step)
    save_step = eval_step or stop or cadence.due(step, log_step)
    if log_step or save_step:
      guard.check_losses()
      guard.check_skipped(sums, count, step)
    if save_step:
      guard.check_state(state, step)

    if log_step:
      sums = jax.device_get(sums)
      now = time.perf_counter()
      rate = (step - last_step) * config.batch.size / (now - last_time)
      unit = 'pairs' if config.batch.kind == 'pairs' else 'images'
      lr = float(learning_rate_schedule(config, time_progress)(step))
      train_means = _log_line(step, num_steps, sums, count, lr, rate, unit, guard.skipped_steps)
      if writer:
        writer.write({f'train/{k}': v for k, v in train_means.items()} | {'train/learning_rate': lr,
                      f'train/{unit}_per_second': rate} | guard.skipped_scalars(), step)
      sums, count, last_time, last_step = None, 0, time.perf_counter(), step
      guard.logged()

    if eval_step and not stop:  # a stopping run saves at once, without validating
      scorer.set_params(state.eval_params)
      eval_metrics = evaluators.run_all(evals, scorer)
      entry = {'step': step, 'elapsed_s': elapsed_before + time.perf_counter() - run_start,
               **{f'train_{k}': v for k, v in train_means.items()}, **guard.skipped_scalars(), **eval_metrics}
      history.append(entry)
      logging.info('step %d validation: %s', step, '  '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
      if writer:
        writer.write(eval_metrics, step)
      manager.save(step, state, eval_metrics, history)
      if is_main:
        _write_history(workdir, history)
      target_reached = _target_reached(manager, history, config.train.stop_at_score)
    elif save_step:
      manager.save(step, state, {}, history)
    if save_step:
      guard.last_saved = step
      cadence.saved()
    if stop:
      manager.wait()
      logging.warning('stopped by %s at step %d, checkpoint saved in %s: run the same command to resume',
                      notice.signal_name, step, manager.directory)
      return dict(manager.best(history) or {})
    stale = manager.validations_since_best(history) if eval_step else 0
    if config.train.patience and stale >= config.train.patience:
      stop_reason = (f'early stop: {config.train.best_metric} did not improve for {stale} validations '
                     f'(best {max(map(manager.score, history)):.4f})')
      break

  manager.wait()
  logging.info('training finished at step %d: %s', step, stop_reason)
  best = dict(manager.best(history) or {})
  if test_evals:
    best_step = best.get('step', step)
    params = (state if best_step == step else manager.restore(state, best_step)[0]).eval_params
    scorer.set_params(params)
    results = evaluators.run_all(test_evals, scorer)
    minutes = best.get('elapsed_s', 0.0) / 60
    logging.info('test metrics of the checkpoint at step %d (%.1f training minutes): %s', best_step, minutes,
                 '  '.join(f'{k} {v:.4f}' for k, v in results.items()))
    if is_main:
      _write_results(workdir, best_step, minutes, results, splits['train'].source)
    best.update({f'test/{k}': v for k, v in results.items()})
  return best


def _target_reached(manager: checkpoints.Manager, history: list, target: float) -> str:
  """Why training stops under `train.stop_at_score` (the first validation at the target, and when); '' if not."""
  entry = next((h for h in history if manager.score(h) >= target), None) if target else None
  if entry is None:
    return ''
  return (f'{manager.best_metric} reached train.stop_at_score={target:g} at step {entry["step"]}: '
          f'{manager.score(entry):.4f} after {entry.get("elapsed_s", 0.0) / 60:.1f} training minutes')


def _time_progress(elapsed_s: float, budget_s: float) -> float:
  """The fraction of the time budget spent (0 without one), process 0's on every host: all stop together."""
  if not budget_s:
    return 0.0
  progress = np.float32(elapsed_s / budget_s)
  if jax.process_count() > 1:
    progress = multihost_utils.broadcast_one_to_all(progress)
  return float(progress)


def with_time_progress(state: TrainState, time_progress: float, state_sharding) -> TrainState:
  """`state` with the cosine decay's time progress set (`scale_by_cosine_decay`)."""
  value = jax.device_put(jnp.float32(time_progress), state_sharding)
  return state.replace(opt_state=optax.tree_utils.tree_set(state.opt_state, time_progress=value))


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _DivergenceGuard:
  """Stops a run whose loss or state turns non-finite, before anything non-finite is saved or logged.

  Each call's loss is checked once the next call is queued, so the device never waits on the check;
  before a log line or a save the latest loss and the whole state (a non-finite gradient shows there
  first) are checked as well. With train.skip_nonfinite_steps = f > 0 such steps are skipped on the device
  and counted here (`skipped_steps`, since step 0), and the run stops only when more than f of the steps
  since the last log line were skipped: a run that keeps diverging still ends.
  """

  def __init__(self, manager, last_saved, max_skipped_fraction=0.0, skipped_before=0):
    self.manager = manager
    self.last_saved = last_saved
    self.max_skipped_fraction = max_skipped_fraction
    self._skipped_logged = skipped_before  # counted up to the last log line
    self._skipped_since_log = 0
    self._pending = None

  @property
  def skipped_steps(self) -> int | None:
    """Steps skipped since step 0, or None when steps are not skipped."""
    return self._skipped_logged + self._skipped_since_log if self.max_skipped_fraction else None

  def skipped_scalars(self) -> dict[str, int]:
    """{'skipped_steps': n} for history and TensorBoard when steps are skipped, else nothing."""
    return {} if self.skipped_steps is None else {'skipped_steps': self.skipped_steps}

  def check_skipped(self, sums, count: int, step: int) -> None:
    """Counts the steps skipped since the last log line (`sums` of that window) and stops when too many were."""
    if not self.max_skipped_fraction:
      return
    self._skipped_since_log = skipped = int(jax.device_get(sums['skipped']))
    if skipped > self.max_skipped_fraction * count:
      raise self._error(f'{skipped} of the {count} steps up to step {step} had a non-finite loss or gradient, '
                        f'more than train.skip_nonfinite_steps={self.max_skipped_fraction} of them')

  def logged(self) -> None:
    self._skipped_logged += self._skipped_since_log
    self._skipped_since_log = 0

  def queued(self, first: int, last: int, loss) -> None:
    self.check_losses()
    self._pending = (first, last, loss)

  def check_losses(self) -> None:
    if self._pending is not None:
      pending, self._pending = self._pending, None
      self._check(*pending)

  def _check(self, first, last, loss) -> None:
    if not np.isfinite(float(jax.device_get(loss))):
      raise self._error('non-finite loss at step ' + (str(last) if first == last else f'{first}-{last}'))

  def check_state(self, state, step: int) -> None:
    if not bool(_all_finite(flax.serialization.to_state_dict(state))):
      raise self._error(f'non-finite parameters after step {step} (a non-finite gradient)')

  def _error(self, what: str) -> UserError:
    if self.last_saved is None:
      where = 'no checkpoint was saved before it'
    else:
      where = (f'the last good checkpoint is step {self.last_saved} in {self.manager.directory}, which the same '
               'command resumes from (with a lower optimizer.learning_rate, say)')
    return UserError(f'training diverged: {what}; {where}')


def _write_results(workdir, step, minutes, results, source):
  """The test metrics of the best checkpoint, as JSON and as a Markdown table (evaluator x metric)."""
  files.write_text(os.path.join(workdir, 'results.json'), json.dumps(
      {'step': step, 'training_minutes': minutes, 'data': source, 'metrics': results}, indent=1))
  rows = {}
  for key, value in results.items():
    name, metric = key.split('/', 1)
    rows.setdefault(name, {})[metric] = value
  columns = sorted({metric for row in rows.values() for metric in row})
  lines = [f'Checkpoint at step {step}, after {minutes:.1f} training minutes; data: {source}.', '',
           '| test set | ' + ' | '.join(columns) + ' |',
           '|---' * (len(columns) + 1) + '|']
  for name, row in rows.items():
    lines.append(f'| {name} | ' + ' | '.join(f'{row[c]:.4f}' if c in row else '' for c in columns) + ' |')
  files.write_text(os.path.join(workdir, 'results.md'), '\n'.join(lines) + '\n')


def _write_history(workdir, history):
  files.write_text(os.path.join(workdir, 'history.json'), json.dumps(history, indent=1, allow_nan=False))
  path = os.path.join(workdir, 'learning_curve.png')
  try:
    plots.learning_curve(path, history)
  except OSError as e:
    raise UserError(f'cannot write {path}: {e.strerror or e}') from None


class MetricWriter:
  """Scalars to TensorBoard event files in the workdir (no TensorFlow needed)."""

  def __init__(self, workdir):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, scalars: dict, step: int):
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()

  def close(self):
    self._writer.close()
