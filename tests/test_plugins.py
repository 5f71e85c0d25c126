"""Every pluggable kind is found by name and takes only the config keys it declares; every shipped config passes."""

import re

import ml_collections
import numpy as np
import pytest

from configs import cifar100, malaria, mnist, mnist_heldout, omniglot
from siamese_jax import config_schema, datasets, evaluators, losses, models, registry
from siamese_jax.errors import UserError

CONFIG_MODULES = {'omniglot': omniglot, 'mnist': mnist, 'mnist_heldout': mnist_heldout, 'malaria': malaria,
                  'cifar100': cifar100}


def variants(module):
  """'' and every variant a config file knows, read from the error it gives for an unknown one."""
  with pytest.raises(ValueError) as error:
    module.get_config('no_such_variant')
  return [''] + re.search(r'\(known: ([^)]*)\)', str(error.value)).group(1).split(', ')


SHIPPED = [(name, variant) for name, module in CONFIG_MODULES.items() for variant in variants(module)]


def blocks(config):
  """The path of every block of settings in a config: top-level blocks, nested ones and each evaluator."""
  paths = []
  for key, value in config.items():
    if key in ('evaluators', 'test_evaluators'):
      paths += [(key, name) for name in value.keys()]
    elif key == 'data':  # Its nested blocks (e.g. mnist's test_sets) are values named by the user.
      paths.append((key,))
    elif isinstance(value, ml_collections.ConfigDict):
      paths.append((key,))
      paths += [(key, inner) for inner, block in value.items() if isinstance(block, ml_collections.ConfigDict)]
  return paths


def misspelt(block) -> str:
  """Its longest key with the last two letters swapped, e.g. 'episodes' -> 'episodse'."""
  key = max(block.keys(), key=len)
  return key[:-2] + key[-1] + key[-2]


def block_at(config, path):
  for key in path:
    config = config[key]
  return config


@pytest.mark.parametrize('name,variant', SHIPPED)
def test_every_shipped_config_validates(name, variant):
  config_schema.validate(CONFIG_MODULES[name].get_config(variant))


@pytest.mark.parametrize('name,variant,path', [
    (name, variant, path) for name, variant in SHIPPED
    for path in blocks(CONFIG_MODULES[name].get_config(variant))])
def test_a_misspelt_key_in_any_block_of_a_shipped_config_is_one_error(name, variant, path):
  config = CONFIG_MODULES[name].get_config(variant)
  block = block_at(config, path)
  typo = misspelt(block)
  block[typo] = block[max(block.keys(), key=len)]
  with pytest.raises(UserError, match=rf"^{re.escape('.'.join(path))}: unknown key '{typo}' \(known: "):
    config_schema.validate(config)


def test_the_error_lists_the_known_keys():
  config = omniglot.get_config()
  config.evaluators.oneshot_20way.episdoes = 100
  with pytest.raises(UserError) as error:
    config_schema.validate(config)
  assert str(error.value) == ("evaluators.oneshot_20way: unknown key 'episdoes' (known: episodes, "
                              'episodes_per_chunk, seed, shots, split, ways, within_group)')


# One config of each kind's every entry, and where in it a misspelt key goes.
def _dataset_config(name):
  config = next(CONFIG_MODULES[c].get_config(v) for c, v in SHIPPED
                if CONFIG_MODULES[c].get_config(v).data.name == name)
  return config, ('data',)


def _evaluator_config(kind):
  config = mnist.get_config()
  config.evaluators.probe = {'kind': kind}
  return config, ('evaluators', 'probe')


def _model_config(key, name):
  config = mnist.get_config()
  config.model[key] = name
  if key == 'head' and models.HEADS[name].output_kind == 'logit':
    config.loss.name = 'bce'
  return config, ('model',)


def _loss_config(name):
  config = mnist.get_config()
  config.loss.name = name
  if not losses.LOSSES[name].pairs:
    config.batch.kind = 'classes'
  if losses.LOSSES[name].head == 'logit':
    config.model.head = 'weighted_l1'
  return config, ('loss',)


KINDS = ([('dataset', name, lambda n: _dataset_config(n)) for name in datasets.DATASETS] +
         [('evaluator', kind, _evaluator_config) for kind in evaluators.KINDS] +
         [('encoder', name, lambda n: _model_config('encoder', n)) for name in models.ENCODERS] +
         [('head', name, lambda n: _model_config('head', n)) for name in models.HEADS] +
         [('loss', name, _loss_config) for name in losses.LOSSES])


@pytest.mark.parametrize('kind,name,make', KINDS, ids=[f'{kind}-{name}' for kind, name, _ in KINDS])
def test_every_entry_of_every_kind_rejects_a_misspelt_key(kind, name, make):
  config, path = make(name)
  config_schema.validate(config)
  block = block_at(config, path)
  block['sede'] = 0
  with pytest.raises(UserError, match=rf"^{re.escape('.'.join(path))}: unknown key 'sede' \(known: "):
    config_schema.validate(config)


@pytest.mark.parametrize('path,table', [
    (('data', 'name'), datasets.DATASETS),
    (('model', 'encoder'), models.ENCODERS),
    (('model', 'head'), models.HEADS),
    (('model', 'dtype'), models.DTYPES),
    (('loss', 'name'), losses.LOSSES),
    (('evaluators', 'verification', 'kind'), evaluators.KINDS),
])
def test_an_unknown_name_of_each_kind_lists_the_known_ones(path, table):
  config = mnist.get_config()
  block_at(config, path[:-1])[path[-1]] = 'nope'
  with pytest.raises(UserError) as error:
    config_schema.validate(config)
  assert str(error.value) == f"{'.'.join(path)}='nope' is unknown; choose one of {', '.join(table)}"


def test_evaluator_settings_are_keyword_arguments_with_defaults():
  for kind in evaluators.KINDS:
    evaluator = registry.lookup(evaluators.KINDS, kind, 'kind')
    assert registry.keywords(evaluator), kind


def test_a_split_that_is_not_there_names_the_evaluator_and_its_key():
  with pytest.raises(UserError, match=r"^evaluators.v: split='nope' is not a split of this dataset \(train"):
    evaluators.build('v', {'kind': 'verification', 'split': 'nope'}, {'train': None, 'validation': None})
  with pytest.raises(UserError, match=r"^test_evaluators.t: split='nope'"):
    evaluators.build_all({'t': {'kind': 'verification', 'split': 'nope'}}, {'train': None}, 'test_evaluators')


def test_each_loss_entry_computes_the_loss_it_names():
  rng = np.random.default_rng(0)
  out, labels = rng.normal(size=8).astype(np.float32), np.array([1, 0] * 4)
  np.testing.assert_allclose(losses.LOSSES['bce'].fn(out, labels)[0], losses.binary_cross_entropy(out, labels))
  distances = np.abs(out)
  np.testing.assert_allclose(losses.LOSSES['contrastive'].fn(distances, labels, margin=1.0, positive_margin=0.1)[0],
                             losses.contrastive(distances, labels, 1.0, 0.1))
  embeddings = rng.normal(size=(8, 3)).astype(np.float32)
  np.testing.assert_allclose(losses.LOSSES['triplet'].fn(embeddings, labels, margin=0.5, mining='batch_all')[0],
                             losses.triplet(embeddings, labels, 0.5, 'batch_all'))
  scores = rng.normal(size=(2, 4, 2)).astype(np.float32)
  np.testing.assert_allclose(losses.LOSSES['episodic'].fn(scores, None, temperature=0.5, symmetric=False),
                             losses.episodic(scores, 0.5))
  square = rng.normal(size=(2, 4, 4)).astype(np.float32)
  np.testing.assert_allclose(losses.LOSSES['episodic'].fn(square, None, temperature=0.5, symmetric=True),
                             losses.episodic(square, 0.5, symmetric=True))
