"""Datasets: each module turns a config's `data` block into named `ImageSet` splits.

Every dataset module exposes `load_splits(data_config) -> dict[str, ImageSet]` with at least
'train' and 'validation'; extra keys are test sets; and `input_form(data_config) -> InputForm`, how an
image file becomes one of its inputs. Raw archives are found in `data.manual_dir`,
or under `$SIAMESE_JAX_DATA/<dataset>` when that is empty.

Each dataset module lists in `KEYS` the `data` keys it reads beyond `COMMON_KEYS`, so that a misspelt
key is one error before any data is read. A new dataset is one module here plus its entry in `DATASETS`.
"""

from __future__ import annotations

import os
from types import ModuleType

from siamese_jax.datasets.image_files import InputForm
from siamese_jax import registry
from siamese_jax.datasets.image_set import ImageSet

DATA_ENV = 'SIAMESE_JAX_DATA'
# data.name -> its module, imported when used (each imports TFDS).
DATASETS = {name: f'siamese_jax.datasets.{name}' for name in ('omniglot', 'mnist', 'malaria', 'cifar100')}
COMMON_KEYS = ('name', 'tfds_data_dir')


def manual_dir(data_config, dataset: str) -> str | None:
  """The folder holding the raw archives: the config's, else $SIAMESE_JAX_DATA/<dataset>, else None."""
  if data_config.get('manual_dir'):
    return os.path.expanduser(data_config.manual_dir)
  root = os.environ.get(DATA_ENV)
  return os.path.join(root, dataset) if root else None


def tfds_data_dir(data_config) -> str | None:
  """Where TFDS builders keep prepared datasets: `data.tfds_data_dir`, or None for TFDS's default."""
  folder = data_config.get('tfds_data_dir')
  return os.path.expanduser(folder) if folder else None


def read_split(builder, split: str, decoders=None) -> list[dict]:
  """Every record of a prepared split, in one batched read (far faster than record by record).

  TFDS stores records shuffled: callers sort by a field when order matters.
  """
  source = builder.as_data_source(split, decoders=decoders)
  return source.__getitems__(range(len(source)))


def dataset_module(data_config) -> ModuleType:
  """The module of dataset `data_config.name`, once the block is checked to name only keys it reads."""
  module = registry.lookup(DATASETS, data_config.get('name'), 'data.name')
  registry.check_keys(data_config, COMMON_KEYS + module.KEYS, 'data')
  return module


def load_splits(data_config) -> dict[str, ImageSet]:
  """Loads the splits named by `data_config.name`."""
  return dataset_module(data_config).load_splits(data_config)


def input_form(data_config) -> InputForm:
  """How an image file becomes an input of a model trained on `data_config` (see `image_files`)."""
  return dataset_module(data_config).input_form(data_config)


__all__ = ['COMMON_KEYS', 'DATASETS', 'DATA_ENV', 'ImageSet', 'InputForm', 'dataset_module', 'input_form',
           'load_splits', 'manual_dir', 'read_split', 'tfds_data_dir']
