"""The held-out-digits study: train on digits 2-7 only, test verification on seen and unseen digits.

Digits 0, 1, 8 and 9 never appear in training or validation. After training, the best-validation
checkpoint is scored on pairs from {2..7}, {2..7} u {0,1,8,9} and {0,1,8,9} (results.json/.md).
"""

from configs import mnist

SEEN = (2, 3, 4, 5, 6, 7)
UNSEEN = (0, 1, 8, 9)


def get_config(variant: str = ''):
  config = mnist.get_config(variant)
  if config.loss.name == 'contrastive':
    # Each setting below lifted unseen-digit pairs in the measurements of BENCHMARKS.md ("Held-out digits").
    config.model.normalize_embeddings = True  # unit-length embeddings, margin 1: best of the settings tried
    config.loss.margin = 1.0
    config.augment.strength = 1.0  # Koch's affine distortions
    config.loss.positive_margin = 0.5  # a same-digit pair is not pulled closer than 0.5: a digit keeps its spread
    config.loss.instance_weight = 0.1  # NT-Xent between two distortions of each image keeps within-digit detail
  config.train.ema_decay = 0.998  # validate and keep a moving average of the parameters
  config.data.train_digits = SEEN
  config.data.test_sets = {'seen': SEEN, 'mixed': SEEN + UNSEEN, 'unseen': UNSEEN}
  del config.test_evaluators['test']
  for name in ('seen', 'mixed', 'unseen'):
    config.test_evaluators[name] = dict(kind='verification', split=name, threshold_split='validation',
                                        pairs=config.evaluators.verification.pairs * 2)
  if config.batch.kind == 'classes':
    config.batch.size = 6 * config.batch.images_per_class
  return config
