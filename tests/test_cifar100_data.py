"""CIFAR-100 through TFDS: tfds.testing.mock_data, a tiny prepared array_record copy, and the errors."""

import chex
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from siamese_jax import datasets
from siamese_jax.datasets import cifar100
from siamese_jax.errors import UserError

HELDOUT = (3, 7, 42)
NUM_MOCK = 400


def make_config(tfds_data_dir, **overrides) -> ml_collections.ConfigDict:
  config = dict(name='cifar100', tfds_data_dir=str(tfds_data_dir), image_size=32, label='label',
                heldout_classes=HELDOUT, validation_size=40)
  config.update(overrides)
  return ml_collections.ConfigDict(config)


class TinyCifar100(tfds.builder_cls('cifar100'), skip_registration=True):
  """The stock builder's features and layout, filled with 4 train and 1 test image per fine class.

  Pixel (0, 0) of each image holds its fine class, so images can be traced.
  """

  name = 'cifar100'

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.features['label'].names = [f'fine{i}' for i in range(100)]
    self.info.features['coarse_label'].names = [f'coarse{i}' for i in range(20)]
    return {'train': self._examples(400), 'test': self._examples(100)}

  def _examples(self, n):
    for index in range(n):
      image = np.zeros((32, 32, 3), np.uint8)
      image[0, 0] = index % 100
      yield index, {'id': str(index), 'image': Image.fromarray(image), 'label': index % 100,
                    'coarse_label': index % 100 // 5}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  TinyCifar100(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir


@pytest.fixture
def without_tensorflow(monkeypatch):
  monkeypatch.setattr(cifar100, '_tensorflow_installed', lambda: False)


def mock_splits(**overrides):
  with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_CODE):
    return datasets.load_splits(make_config('/nonexistent', **overrides))


def test_mock_data_splits_shapes_and_heldout_classes():
  splits = mock_splits()
  assert set(splits) == {'train', 'validation', 'test', 'heldout'}
  for split in splits.values():
    chex.assert_shape(split.images, (None, 32, 32, 3))
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.source == 'CIFAR-100 (TFDS cifar100 3.0.2)'
  heldout_names = {str(c) for c in HELDOUT}
  for name in ('train', 'validation', 'test'):
    assert not heldout_names & set(splits[name].class_names)
  assert len(splits['heldout']) > 0 and set(splits['heldout'].class_names) <= heldout_names
  assert len(splits['validation']) == 40
  assert len(splits['train']) + len(splits['validation']) + len(splits['heldout']) == NUM_MOCK  # Mock test = train.
  assert len(splits['test']) + len(splits['heldout']) == NUM_MOCK
  assert len(splits['train'].group_names) <= 20 and splits['train'].groups.max() < len(splits['train'].group_names)


def test_mock_data_coarse_labels_resized_and_no_heldout():
  splits = mock_splits(label='coarse_label', heldout_classes=(), image_size=16)
  assert set(splits) == {'train', 'validation', 'test'}
  chex.assert_shape(splits['train'].images, (NUM_MOCK - 40, 16, 16, 3))
  assert splits['train'].num_classes <= 20 and splits['train'].group_names == ('all',)
  assert splits['test'].source.endswith('resized to 16x16')


def test_prepared_copy_is_read_cached_and_split(prepared, without_tensorflow):
  config = make_config(prepared, validation_size=20)
  splits = cifar100.load_splits(config)
  assert {name: len(split) for name, split in splits.items()} == {'train': 368, 'validation': 20, 'test': 97,
                                                                  'heldout': 3}
  assert splits['heldout'].class_names == ('fine3', 'fine7', 'fine42')
  assert sorted(splits['heldout'].images[:, 0, 0, 0].tolist()) == list(HELDOUT)
  train = splits['train']
  assert 'fine3' not in train.class_names and len(train.class_names) == 97
  chex.assert_trees_all_equal(train.images[:, 0, 0, 0], np.array(
      [int(train.class_names[label][4:]) for label in train.labels], np.uint8))  # Images carry their labels.
  assert [int(train.group_names[g][6:]) for g in train.groups] == [
      int(train.class_names[label][4:]) // 5 for label in train.labels]  # Superclasses are the groups.
  assert len(list((prepared / 'siamese_jax' / 'cifar100' / 'cache').iterdir())) == 1
  again = cifar100.load_splits(config)  # From the cache.
  chex.assert_trees_all_equal({k: v.images for k, v in splits.items()}, {k: v.images for k, v in again.items()})


def test_absent_dataset_is_one_user_error(tmp_path, without_tensorflow):
  with pytest.raises(UserError, match=f'CIFAR-100 is not prepared in .*tfds build cifar100 '
                                      f'--file_format=array_record --data_dir={tmp_path}'):
    cifar100.load_splits(make_config(tmp_path))


def test_failed_download_is_one_user_error(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar100, '_tensorflow_installed', lambda: True)
  monkeypatch.setattr(cifar100, '_URL', (tmp_path / 'offline').as_uri())
  with pytest.raises(UserError, match='downloading and preparing CIFAR-100 .* failed'):
    cifar100.load_splits(make_config(tmp_path))


@pytest.mark.parametrize('overrides', [
    dict(label='fine'), dict(heldout_classes=(100,)), dict(heldout_classes=(1, 1)), dict(heldout_classes='12'),
    dict(image_size=0), dict(validation_size=NUM_MOCK),
])
def test_bad_settings_are_user_errors(overrides):
  with pytest.raises(UserError, match='data.'):
    mock_splits(**overrides)
