"""MNIST pairs: a small CNN encoder trained with the contrastive loss over all ten digits.

Variants: `:bce` (Koch's weighted-L1 head with binary cross-entropy), `:triplet` (M-per-class batches
with semi-hard triplet mining), `:smoke` (a few hundred steps, for the end-to-end test).
"""

from siamese_jax import config_schema

DIGITS = tuple(range(10))


def get_config(variant: str = ''):
  config = config_schema.base_config()
  config.data.name = 'mnist'
  config.data.manual_dir = ''  # holds the four idx files; '' = $SIAMESE_JAX_DATA/mnist
  config.data.tfds_data_dir = ''
  config.data.image_size = 28
  config.data.train_digits = DIGITS
  config.data.validation_size = 5000
  config.data.test_sets = {'test': DIGITS}

  config.augment.strength = 0.0
  config.model.features = (32, 64)
  config.model.kernel_sizes = (5, 3)
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
  config.train.best_metric = 'verification/accuracy'
  # The threshold is chosen on validation pairs (a separate draw), never fixed.
  config.evaluators.verification = dict(kind='verification', split='validation', threshold_split='validation',
                                        pairs=2000)
  config.test_evaluators.test = dict(kind='verification', split='test', threshold_split='validation', pairs=5000)

  for name in filter(None, variant.split(',')):
    if name == 'bce':
      config.model.head = 'weighted_l1'
      config.loss.name = 'bce'
    elif name == 'triplet':
      config.loss.name = 'triplet'
      # Batch-hard from a random start collapsed every embedding to one point here (loss stuck at the
      # margin); semi-hard negatives train from scratch (0.977 verification accuracy at step 150).
      config.loss.mining = 'semi_hard'
      config.loss.margin = 0.5
      config.batch.kind = 'classes'
      config.batch.images_per_class = 8
      config.batch.size = 80  # all 10 digits x 8 images each
    elif name == 'smoke':
      config.train.num_steps = 300
      config.train.eval_every = 150
      config.train.patience = 0
      config.evaluators.verification.pairs = 1000
      config.test_evaluators.test.pairs = 2000
    else:
      raise ValueError(f'unknown variant {name!r} of configs/mnist.py (known: bce, triplet, smoke)')
  return config
