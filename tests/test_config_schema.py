"""Config defaults, validation and reading back a run's saved config."""

import json

import pytest

from configs import cifar100, malaria, mnist, mnist_heldout, omniglot
from siamese_jax import config_schema
from siamese_jax.errors import UserError


@pytest.mark.parametrize('module,variant', [(omniglot, ''), (omniglot, 'koch2015'), (omniglot, 'smoke'),
                                            (omniglot, 'cpu'), (omniglot, 'final'), (mnist, ''), (mnist, 'bce'),
                                            (mnist, 'triplet'), (mnist_heldout, ''), (malaria, ''), (cifar100, '')])
def test_every_task_config_validates(module, variant):
  config_schema.validate(module.get_config(variant))


def test_omniglot_default_trains_kochs_tower_on_episodes_and_koch2015_on_pairs():
  default, paper = omniglot.get_config(), omniglot.get_config('koch2015')
  for config in (default, paper):
    assert (config.model.encoder, config.model.head, config.data.image_size) == ('conv_tower', 'weighted_l1', 105)
    assert config.model.kernel_sizes == (10, 7, 4, 4)
  assert (default.loss.name, default.batch.kind, default.batch.size) == ('episodic', 'classes', 64)
  assert (paper.loss.name, paper.batch.kind, paper.batch.size) == ('bce', 'pairs', 32)
  assert paper.optimizer.learning_rate == 9e-5
  with pytest.raises(ValueError, match='known: koch2015'):
    omniglot.get_config('koch')


def test_saved_config_round_trips_and_gains_new_defaults():
  config = mnist.get_config('smoke')
  saved = json.loads(config.to_json_best_effort())
  del saved['model']['koch']  # as written by a run from before the key existed
  restored = config_schema.from_saved(saved)
  assert restored.model.koch is True
  assert tuple(restored.data.train_digits) == config.data.train_digits
  assert restored.train.num_steps == config.train.num_steps
  config_schema.validate(restored)


def test_triplet_needs_class_batches():
  config = mnist.get_config('triplet')
  config.batch.kind = 'pairs'
  with pytest.raises(UserError, match="batch.kind='classes'"):
    config_schema.validate(config)


def test_margin_must_fit_between_unit_vectors():
  config = mnist.get_config()
  config.model.normalize_embeddings = True
  config.loss.margin = 2.0
  with pytest.raises(UserError, match='strictly between 0 and 2'):
    config_schema.validate(config)
  config.loss.margin = 1.0
  config_schema.validate(config)


def test_positive_margin_below_margin_and_contrastive_only():
  config = mnist.get_config()
  config.loss.positive_margin = config.loss.margin
  with pytest.raises(UserError, match='positive_margin'):
    config_schema.validate(config)
  config.loss.positive_margin = 0.5
  config_schema.validate(config)
  config = mnist.get_config('triplet')
  config.loss.positive_margin = 0.1
  with pytest.raises(UserError, match="contrastive loss, not 'triplet'"):
    config_schema.validate(config)


def test_instance_term_needs_pairs_distortions_and_a_positive_temperature():
  config = mnist.get_config()
  config.loss.instance_weight = 0.1
  with pytest.raises(UserError, match='needs augment.strength'):
    config_schema.validate(config)
  config.augment.strength = 1.0
  config_schema.validate(config)
  config.loss.temperature = 0.0
  with pytest.raises(UserError, match='temperature'):
    config_schema.validate(config)
  config = mnist.get_config('triplet')
  config.augment.strength = 1.0
  config.loss.instance_weight = 0.1
  with pytest.raises(UserError, match='not triplet'):
    config_schema.validate(config)
