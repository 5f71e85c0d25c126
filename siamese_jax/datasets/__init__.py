"""Datasets: each module turns a config's `data` block into named `ImageSet` splits.

Every dataset module exposes `load_splits(data_config) -> dict[str, ImageSet]` with at least
'train' and 'validation'; extra keys are test sets; and `input_form(data_config) -> InputForm`, how an
image file becomes one of its inputs. Raw archives are found in `data.manual_dir`,
or under `$SIAMESE_JAX_DATA/<dataset>` when that is empty.
"""

from __future__ import annotations

import importlib
import os

from siamese_jax.datasets.image_files import InputForm
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.errors import UserError

DATA_ENV = 'SIAMESE_JAX_DATA'
_MODULES = ('omniglot', 'mnist', 'malaria', 'cifar100')


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


def _module(data_config):
  if data_config.name not in _MODULES:
    raise UserError(f'unknown dataset {data_config.name!r}; choose one of {", ".join(_MODULES)}')
  return importlib.import_module(f'siamese_jax.datasets.{data_config.name}')


def load_splits(data_config) -> dict[str, ImageSet]:
  """Loads the splits named by `data_config.name`."""
  return _module(data_config).load_splits(data_config)


def input_form(data_config) -> InputForm:
  """How an image file becomes an input of a model trained on `data_config` (see `image_files`)."""
  return _module(data_config).input_form(data_config)


__all__ = ['ImageSet', 'InputForm', 'DATA_ENV', 'input_form', 'load_splits', 'manual_dir', 'read_split',
           'tfds_data_dir']
