"""Test set-up: two simulated CPU devices, one compilation cache per run, and the shared data folder when it exists."""

import os

# Two host devices so that sharded code paths run for real; must be set before jax is imported.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# One on-disk cache of compiled programs for the whole run: the many short trainings, and the processes the
# robustness and multi-process tests start, compile the same steps. The first process to load this file
# (the xdist controller) makes it; workers and subprocesses inherit the variable, and it goes with the run.
_OWN_XLA_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_XLA_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='siamese_jax_tests_xla_cache_')

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get('SIAMESE_JAX_DATA', REPO.parent / 'shared' / 'data'))


def pytest_sessionfinish():
  if _OWN_XLA_CACHE:
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


def pytest_collection_modifyitems(items):
  """End-to-end tests (marked slow) first, so that under xdist no minute-long test is left for the end while
  the other workers idle; the order within each group is kept, so a module's tests stay together."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)


def data_dir(dataset: str) -> pathlib.Path:
  """The raw archives of `dataset`, or a skip that says where they were looked for."""
  path = DATA_ROOT / dataset
  if not path.is_dir():
    pytest.skip(f'{dataset} data not found at {path} (set SIAMESE_JAX_DATA to the folder holding {dataset}/)')
  return path


def synthetic_image_set(num_groups=3, classes_per_group=4, per_class=6, size=16, seed=0):
  """A small learnable ImageSet: each class is a fixed random blob pattern plus noise."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from siamese_jax.datasets import ImageSet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  num_classes = num_groups * classes_per_group
  patterns = rng.random((num_classes, size, size, 1)) > 0.7
  labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  noise = rng.random((len(labels), size, size, 1)) > 0.95
  images = ((patterns[labels] ^ noise) * 255).astype(np.uint8)
  return ImageSet(images=images, labels=labels, groups=(labels // classes_per_group).astype(np.int32),
                  class_names=tuple(f'class{c}' for c in range(num_classes)),
                  group_names=tuple(f'group{g}' for g in range(num_groups)), source='synthetic')


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """One TFDS data folder for the whole test run, shared by the xdist workers (preparation takes a lock),
  so each real dataset is prepared and decoded once."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # Each worker's basetemp is a folder of the run's.
  path = root / 'tfds'
  path.mkdir(exist_ok=True)
  return path
