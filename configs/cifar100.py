"""CIFAR-100: a small ResNet trained with the contrastive loss on balanced like/unlike batches.

Ten fine classes are held out of training entirely for 5-way 1-shot and 5-shot episodes; retrieval
(precision@1, MAP@R) is measured over an embedding index of the test split. Training stops early
when validation retrieval stops improving. No copy of CIFAR-100 exists on the test machines: the
tests run this config on `tfds.testing.mock_data`, so its accuracy has not been measured here.
Variants: `:smoke` (tiny, for the mock-data test).
"""

from siamese_jax import config_schema

HELDOUT_CLASSES = tuple(range(90, 100))


def get_config(variant: str = ''):
  config = config_schema.base_config()
  config.data.name = 'cifar100'
  config.data.tfds_data_dir = ''
  config.data.image_size = 32
  config.data.label = 'label'
  config.data.heldout_classes = HELDOUT_CLASSES
  config.data.validation_size = 5000

  config.augment.rotation_deg = 5.0
  config.augment.shear = 0.1
  config.augment.scale = (0.9, 1.1)
  config.model.encoder = 'resnet'
  config.model.features = (32, 64, 128)
  config.model.blocks_per_stage = 2
  config.model.embedding_dim = 128
  config.model.head = 'euclidean'
  config.loss.name = 'contrastive'
  config.loss.margin = 1.0
  config.batch.size = 256
  config.batch.positive_fraction = 0.5  # balanced like / unlike pairs
  config.batch.same_group_prob = 0.5  # half the unlike pairs share a superclass: harder negatives
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay_rate = 0.95
  config.optimizer.decay_steps = 1000
  config.train.num_steps = 50_000
  config.train.eval_every = 1000
  config.train.steps_per_call = 10
  config.train.patience = 5
  config.train.best_metric = 'retrieval/precision_at_1'
  config.evaluators.retrieval = dict(kind='retrieval', split='validation', metric='euclidean')
  config.test_evaluators.retrieval = dict(kind='retrieval', split='test', metric='euclidean')
  config.test_evaluators.heldout_5way_1shot = dict(kind='oneshot', split='heldout', ways=5, shots=1,
                                                   episodes=1000, within_group=False)
  config.test_evaluators.heldout_5way_5shot = dict(kind='oneshot', split='heldout', ways=5, shots=5,
                                                   episodes=1000, within_group=False)

  if variant == 'smoke':
    config.data.validation_size = 20
    config.model.features = (8, 16)
    config.model.blocks_per_stage = 1
    config.model.embedding_dim = 16
    config.batch.size = 16
    config.train.num_steps = 20
    config.train.log_every = 10
    config.train.eval_every = 10
    config.train.steps_per_call = 1
    config.test_evaluators.heldout_5way_1shot.episodes = 20
    config.test_evaluators.heldout_5way_5shot.episodes = 20
  elif variant:
    raise ValueError(f'unknown variant {variant!r} of configs/cifar100.py (known: smoke)')
  return config
