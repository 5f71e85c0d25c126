"""Test set-up: two simulated CPU devices, and the shared data folder when it exists."""

import os

# Two host devices so that sharded code paths run for real; must be set before jax is imported.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get('SIAMESE_JAX_DATA', REPO.parent / 'shared' / 'data'))


def data_dir(dataset: str) -> pathlib.Path:
  """The raw archives of `dataset`, or a skip that says where they were looked for."""
  path = DATA_ROOT / dataset
  if not path.is_dir():
    pytest.skip(f'{dataset} data not found at {path} (set SIAMESE_JAX_DATA to the folder holding {dataset}/)')
  return path
