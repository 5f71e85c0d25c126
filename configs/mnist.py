"""MNIST pairs: a small CNN encoder trained with the contrastive loss over all ten digits.

Variants: `:bce` (Koch's weighted-L1 head with binary cross-entropy), `:triplet` (M-per-class batches
with batch-hard triplet mining on unit-length embeddings), `:smoke` (a few hundred steps, for the
end-to-end test).
"""

from siamese_jax import config_schema

DIGITS = tuple(range(10))


def get_config(variant: str = ''):
  config = config_schema.contrastive_config(features=(32, 64), kernel_sizes=(5, 3))
  config.data.name = 'mnist'
  config.data.manual_dir = ''  # holds the four idx files; '' = $SIAMESE_JAX_DATA/mnist
  config.data.tfds_data_dir = ''
  config.data.image_size = 28
  config.data.train_digits = DIGITS
  config.data.validation_size = 5000
  config.data.test_sets = {'test': DIGITS}

  config.augment.strength = 0.0
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
      # Batch-hard mining on unnormalised embeddings collapsed every embedding to one point (loss stuck
      # at the margin); on the unit sphere it trains from scratch (0.977 test accuracy at step 300).
      config.loss.mining = 'batch_hard'
      config.model.normalize_embeddings = True
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
