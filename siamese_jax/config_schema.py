"""The defaults every task config starts from, and the check that a config names only known keys.

Task configs in `configs/` call `base_config()` and change what their task needs. `validate` runs before
anything is written, so a typo in a key or a bad value is one clear line, not a crash mid-run. The `data`
and evaluator blocks belong to the dataset and evaluators they name: their keys are checked against
those plug-ins' declared keys and signatures (see `registry`), without reading any data.
"""

from __future__ import annotations

import math

import ml_collections

from siamese_jax import augment, datasets, evaluators, losses, models, registry
from siamese_jax.errors import UserError

SCHEDULES = ('staircase', 'cosine')
# Blocks whose keys are those of the plug-in they name, not base_config's.
PLUGIN_BLOCKS = ('data', 'evaluators', 'test_evaluators')


def base_config() -> ml_collections.ConfigDict:
  """Defaults: Koch et al.'s Omniglot set-up, which the task configs adjust."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The dataset block is the dataset module's own (see siamese_jax/datasets/<name>.py).
  c.data = ml_collections.ConfigDict({'name': 'omniglot'})
  # True: the whole training split lives on the accelerator and batches are drawn inside the jitted
  # step. False: batches are gathered on the host and sent each step (for datasets too big for that).
  c.device_resident = True
  # Device-resident images: False = a full copy on every device; True = split by rows over the devices
  # (each holds 1/n of the dataset; batches are assembled with one reduce-scatter per step).
  c.shard_dataset = False

  c.batch = ml_collections.ConfigDict()
  c.batch.kind = 'pairs'  # 'pairs' (bce, contrastive) or 'classes' (M-per-class: triplet, episodic)
  c.batch.size = 32  # global: pairs per step, or images per step for 'classes'
  c.batch.positive_fraction = 0.5
  c.batch.same_group_prob = 0.5  # chance a negative pair is drawn from one group (alphabet)
  c.batch.images_per_class = 4  # 'classes' batches: size // images_per_class classes
  # 'classes' batches: > 0 splits the batch into episodes of this many classes of one group (alphabet)
  c.batch.classes_per_group = 0

  c.augment = augment.default_config()  # Koch's affine distortions; strength=0 turns them off

  c.model = ml_collections.ConfigDict()
  c.model.encoder = 'conv_tower'  # or 'conv_blocks' (3x3 conv, norm, ReLU, pool blocks), 'resnet'
  c.model.features = (64, 128, 128, 256)
  c.model.kernel_sizes = (10, 7, 4, 4)
  c.model.blocks_per_stage = 2  # resnet only
  c.model.norm_groups = 8  # conv_blocks: GroupNorm groups after each convolution; 0 = no normaliser
  c.model.final_pool = '2x2'  # conv_blocks: how the last map is pooled: '2x2', or whole: 'max', 'mean'
  c.model.embedding_dim = 4096
  c.model.koch = True  # conv_tower: Koch's initialisation and sigmoid embedding (False: Flax defaults, linear)
  c.model.head = 'weighted_l1'  # or 'euclidean', 'cosine'
  c.model.normalize_embeddings = False  # L2-normalise embeddings (distances then lie in [0, 2])
  c.model.dtype = 'float32'  # compute dtype; parameters stay float32

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'bce'
  c.loss.margin = 1.0  # contrastive and triplet
  c.loss.positive_margin = 0.0  # contrastive: same-class pairs closer than this are not pulled further
  c.loss.mining = 'batch_hard'  # triplet
  # > 0 (pair losses): add this much of an NT-Xent term between two distortions of every image in the
  # batch (losses.instance_discrimination), which keeps features that tell images of one class apart.
  c.loss.instance_weight = 0.0
  c.loss.temperature = 0.2  # of the NT-Xent term, and of the episodic loss's softmax
  c.loss.shots = 1  # episodic: support images per class; the class's other images are its queries
  c.loss.symmetric = False  # episodic: also classify each support among the queries (one query per class)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 9e-5
  c.optimizer.schedule = 'staircase'  # or 'cosine' (down to 0 at decay_steps)
  c.optimizer.decay_rate = 0.99
  c.optimizer.decay_steps = 500  # 0: train.num_steps, so a cosine ends with the run however long it is made
  c.optimizer.weight_decay = 0.0  # > 0: AdamW's decoupled decay of the kernels (see train.make_optimizer)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 20_000
  c.train.steps_per_call = 1  # steps fused into one jitted call (device-resident data only)
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.best_metric = 'oneshot_20way/accuracy'
  c.train.patience = 0  # validations without improvement before stopping; 0 = never stop early
  # > 0: training also stops once this many minutes (validations included) have passed since step 0, and a
  # cosine schedule decays by whichever of steps and minutes is further along; 0 = no limit.
  c.train.time_budget_minutes = 0.0
  # > 0: training stops at the first validation whose train.best_metric reaches this value (e.g. Koch's 0.92):
  # the time to an accuracy; 0 = never.
  c.train.stop_at_score = 0.0
  c.train.eval_batch_size = 256
  # Evaluate on the mean embedding of each image's quarter turns and mirror images (square images only).
  c.train.eval_average_symmetries = False
  # > 0: evaluate on the mean embedding of each image and its shifts by this many pixels up, down, left, right.
  c.train.eval_average_shifts = 0
  # > 0: validate, select and keep for use an exponential moving average of the parameters (e.g. 0.999);
  # 0: the parameters themselves.
  c.train.ema_decay = 0.0
  # Checkpoints between validations, so that a kill loses little: every `steps` steps and/or `minutes`
  # minutes since the last save (0 turns either off). Validations save too.
  c.train.checkpoint_every = ml_collections.ConfigDict({'steps': 0, 'minutes': 10.0})
  # A fraction f in (0, 1): a step with a non-finite loss or gradient (a rare bad batch) leaves the state as it
  # was and is counted, and the run stops only when more than f of the steps between log lines are; 0: it stops.
  c.train.skip_nonfinite_steps = 0.0

  # name -> evaluator block; `kind` picks the evaluator (see siamese_jax/evaluators/).
  c.evaluators = ml_collections.ConfigDict()
  # Run once after training on the best checkpoint; results.json / results.md in the workdir.
  c.test_evaluators = ml_collections.ConfigDict()
  return c


def contrastive_config(features, kernel_sizes) -> ml_collections.ConfigDict:
  """Defaults for a small conv tower trained with the contrastive loss (MNIST, malaria).

  A linear embedding with Flax's initialisation, a Euclidean head and a margin of 2; Adam at 1e-3
  decaying 5% every 500 steps; early stopping after 4 validations without improvement.
  """
  config = base_config()
  config.model.features = features
  config.model.kernel_sizes = kernel_sizes
  config.model.embedding_dim = 128
  config.model.koch = False
  config.model.head = 'euclidean'
  config.loss.name = 'contrastive'
  config.loss.margin = 2.0
  config.batch.size = 128
  config.batch.same_group_prob = 0.0
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay_rate = 0.95
  config.optimizer.decay_steps = 500
  config.train.num_steps = 5000
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.steps_per_call = 10
  config.train.patience = 4
  return config


def _check_keys(config, reference, where: str) -> None:
  """Every key of `config` and of its blocks is in `reference` (the plug-in blocks aside)."""
  registry.check_keys(config, reference.keys(), where)
  for key in config.keys():
    if where == 'config' and key in PLUGIN_BLOCKS:
      continue
    if isinstance(reference[key], ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
      _check_keys(config[key], reference[key], key if where == 'config' else f'{where}.{key}')


def _check_plugins(config) -> None:
  """Every plug-in a config names exists, and each plug-in block names only keys its plug-in takes."""
  datasets.dataset_module(config.data)
  for block in PLUGIN_BLOCKS[1:]:
    for name in config[block].keys():
      evaluators.resolve(f'{block}.{name}', config[block][name])
  registry.lookup(models.ENCODERS, config.model.encoder, 'model.encoder')
  registry.lookup(models.DTYPES, config.model.dtype, 'model.dtype')
  registry.lookup(models.FINAL_POOLS, config.model.final_pool, 'model.final_pool')


def _is_non_negative_number(value) -> bool:
  """A finite int or float >= 0 (a command-line value such as 'inf' or a string is not)."""
  return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def _takes(key: str) -> list[str]:
  """The losses that read `loss.<key>`."""
  return [name for name, loss in losses.LOSSES.items() if key in registry.keywords(loss.fn)]


def validate(config) -> None:
  """Raises UserError for unknown keys or inconsistent values."""
  _check_keys(config, base_config(), 'config')
  _check_plugins(config)
  loss = registry.lookup(losses.LOSSES, config.loss.name, 'loss.name')
  if loss.pairs and config.batch.kind != 'pairs':
    raise UserError(f"loss.name={config.loss.name!r} trains on pairs: set batch.kind='pairs'")
  if not loss.pairs and config.batch.kind != 'classes':
    raise UserError(f"loss.name={config.loss.name!r} needs batch.kind='classes' (M-per-class batches)")
  if config.loss.mining not in losses.MINING:
    raise UserError(f'loss.mining={config.loss.mining!r}; choose one of {", ".join(losses.MINING)}')
  head_kind = registry.lookup(models.HEADS, config.model.head, 'model.head').output_kind
  if loss.head not in (None, head_kind):
    raise UserError(f'loss {config.loss.name!r} needs a {loss.head} head, '
                    f'but model.head={config.model.head!r} gives a {head_kind}')
  if config.model.normalize_embeddings and head_kind == 'distance' and not 0.0 < config.loss.margin < 2.0:
    raise UserError(f'loss.margin={config.loss.margin} with model.normalize_embeddings: distances between unit '
                    'vectors lie in [0, 2], so the margin must lie strictly between 0 and 2')
  if config.loss.positive_margin and config.loss.name not in _takes('positive_margin'):
    raise UserError(f'loss.positive_margin is a setting of the {" or ".join(_takes("positive_margin"))} loss, '
                    f'not {config.loss.name!r}')
  if config.loss.symmetric and config.loss.name not in _takes('symmetric'):
    raise UserError(f'loss.symmetric is a setting of the {" or ".join(_takes("symmetric"))} loss, '
                    f'not {config.loss.name!r}')
  if not 0.0 <= config.loss.positive_margin < config.loss.margin:
    raise UserError(f'loss.positive_margin={config.loss.positive_margin} must lie in [0, loss.margin='
                    f'{config.loss.margin}): same-class pairs must be allowed closer than different-class ones')
  if config.loss.instance_weight < 0 or config.loss.temperature <= 0:
    raise UserError(f'loss.instance_weight={config.loss.instance_weight} must be >= 0 and loss.temperature='
                    f'{config.loss.temperature} > 0')
  if config.loss.instance_weight and not loss.pairs:
    pair_losses = ', '.join(name for name, entry in losses.LOSSES.items() if entry.pairs)
    raise UserError(f'loss.instance_weight applies to the pair losses ({pair_losses}), not {config.loss.name}')
  if config.loss.instance_weight and not config.augment.strength and not config.augment.dihedral:
    raise UserError('loss.instance_weight needs augment.strength > 0 or augment.dihedral: the two views of an '
                    'image are two random distortions of it')
  if config.batch.kind == 'classes':
    _check_class_batch(config, loss)
  if config.optimizer.schedule not in SCHEDULES:
    raise UserError(f'optimizer.schedule={config.optimizer.schedule!r}; choose one of {", ".join(SCHEDULES)}')
  if not 0.0 <= config.batch.positive_fraction <= 1.0:
    raise UserError('batch.positive_fraction must lie in [0, 1]')
  if config.train.steps_per_call > 1 and not config.device_resident:
    raise UserError('train.steps_per_call > 1 needs device_resident=True (batches drawn on the device)')
  if not 0.0 <= config.train.ema_decay < 1.0:
    raise UserError(f'train.ema_decay={config.train.ema_decay}; use 0 (off) or a decay in (0, 1), e.g. 0.999')
  if config.train.eval_average_shifts < 0:
    raise UserError(f'train.eval_average_shifts={config.train.eval_average_shifts}; use 0 (off) or a number of '
                    'pixels, e.g. 1')
  if config.model.encoder == 'conv_blocks' and config.model.norm_groups:
    if config.model.norm_groups < 0:
      raise UserError(f'model.norm_groups={config.model.norm_groups}; use a number of groups, or 0 for no normaliser')
    uneven = [f for f in config.model.features if f % config.model.norm_groups]
    if uneven:
      raise UserError(f'model.norm_groups={config.model.norm_groups} must split every block of model.features='
                      f'{tuple(config.model.features)} into equal groups ({uneven[0]} does not); use 0 for no '
                      'normaliser')
  if not isinstance(config.optimizer.decay_steps, int) or config.optimizer.decay_steps < 0:
    raise UserError(f'optimizer.decay_steps={config.optimizer.decay_steps!r}; use a number of steps, or 0 for '
                    'train.num_steps')
  if config.optimizer.weight_decay < 0:
    raise UserError(f'optimizer.weight_decay={config.optimizer.weight_decay}; use 0 (plain Adam) or more')
  augment.AffineConfig.from_config(config.augment)
  budget = config.train.time_budget_minutes
  if not _is_non_negative_number(budget):
    raise UserError(f'train.time_budget_minutes={budget!r}; use 0 (no limit) or a positive number of minutes')
  target = config.train.stop_at_score
  if not _is_non_negative_number(target):
    raise UserError(f'train.stop_at_score={target!r}; use 0 (never) or the {config.train.best_metric} to stop at')
  if config.train.eval_every <= 0 or config.train.log_every <= 0:
    raise UserError('train.eval_every and train.log_every must be positive')
  if config.train.checkpoint_every.steps < 0 or config.train.checkpoint_every.minutes < 0:
    raise UserError('train.checkpoint_every.steps and .minutes must be >= 0 (0: not by that measure)')
  if not 0.0 <= config.train.skip_nonfinite_steps < 1.0:
    raise UserError(f'train.skip_nonfinite_steps={config.train.skip_nonfinite_steps}; use 0 (stop at the first '
                    'non-finite step) or a fraction in (0, 1) of steps that may be skipped, e.g. 0.01')


def _check_class_batch(config, loss: losses.Loss) -> None:
  """An M-per-class batch divides into classes, and into episodes when it has them."""
  batch = config.batch
  if batch.images_per_class < 1 or batch.size % batch.images_per_class:
    raise UserError('batch.size must be a multiple of batch.images_per_class')
  classes = batch.size // batch.images_per_class
  if batch.classes_per_group < 0 or (batch.classes_per_group and classes % batch.classes_per_group):
    raise UserError(f'batch.classes_per_group={batch.classes_per_group} must divide the batch\'s {classes} '
                    'classes (batch.size // batch.images_per_class), or be 0')
  if loss.consumes == 'episodes' and not 1 <= config.loss.shots < batch.images_per_class:
    raise UserError(f'loss.shots={config.loss.shots} must be at least 1 and leave a query among the '
                    f'batch.images_per_class={batch.images_per_class} images of each class')
  if loss.consumes == 'episodes' and config.loss.symmetric and batch.images_per_class - config.loss.shots != 1:
    raise UserError(f'loss.symmetric needs one query per class: batch.images_per_class='
                    f'{batch.images_per_class} must be loss.shots={config.loss.shots} + 1')
  if loss.consumes == 'episodes' and (batch.classes_per_group or classes) < 2:
    raise UserError('the episodic loss needs at least two classes per episode')


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config.json, with defaults filled in for keys added since it was written."""
  config = base_config()

  def merge(target, values):
    for key, value in values.items():
      if isinstance(value, dict) and key in target and isinstance(target[key], ml_collections.ConfigDict):
        merge(target[key], value)
      else:
        target[key] = value

  merge(config, saved)
  return config
