"""MNIST loading on the real idx files and on tiny synthetic ones, and the shared raw-file helpers."""

import gzip
import os

import chex
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import data_dir
from siamese_jax import datasets
from siamese_jax.datasets import mnist, raw_files
from siamese_jax.errors import UserError

STEMS = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
HELD_OUT_STUDY = dict(train_digits=(2, 3, 4, 5, 6, 7),
                      test_sets=dict(seen=(2, 3, 4, 5, 6, 7), mixed=tuple(range(10)), unseen=(0, 1, 8, 9)))


def make_config(manual_dir, tfds_data_dir, **overrides) -> ml_collections.ConfigDict:
  config = dict(name='mnist', manual_dir=str(manual_dir) if manual_dir else '', tfds_data_dir=str(tfds_data_dir),
                image_size=28, validation_size=5000)
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def idx_bytes(array: np.ndarray) -> bytes:
  """An idx file of unsigned bytes: magic 0x0800 + ndim, then big-endian dimensions, then the data."""
  header = (0x800 + array.ndim).to_bytes(4, 'big') + np.array(array.shape, '>u4').tobytes()
  return header + array.astype(np.uint8).tobytes()


def write_tiny_mnist(folder, gzipped=True) -> None:
  """20 training and 10 test images whose pixel (0, 0) is 10 * digit + index // 10, so images can be traced."""
  for stem, n in zip(STEMS[::2], (20, 10)):
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = 10 * labels + np.arange(n) // 10
    for name, array in ((stem, images), (stem.replace('images-idx3', 'labels-idx1'), labels)):
      data = idx_bytes(array)
      path = os.path.join(folder, name + ('.gz' if gzipped else ''))
      with open(path, 'wb') as f:
        f.write(gzip.compress(data) if gzipped else data)


@pytest.fixture(scope='module')
def real_dir():
  return data_dir('mnist')


@pytest.fixture
def no_env(monkeypatch):
  monkeypatch.delenv(datasets.DATA_ENV, raising=False)


def test_real_counts_shapes_and_background(real_dir, tfds_dir):
  splits = datasets.load_splits(make_config(real_dir, tfds_dir))
  assert {name: len(split) for name, split in splits.items()} == {'train': 55000, 'validation': 5000, 'test': 10000}
  for split in splits.values():
    chex.assert_shape(split.images, (None, 28, 28, 1))
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.class_names == tuple('0123456789')
    assert (split.images[:, :3] == 0).mean() > 0.99  # Background is 0: white strokes on black.
    assert split.images.max() == 255
  assert np.bincount(splits['test'].labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_held_out_digits_never_reach_train_or_validation(real_dir, tfds_dir):
  splits = mnist.load_splits(make_config(real_dir, tfds_dir, **HELD_OUT_STUDY))
  raw_train = mnist.read_idx(os.path.join(real_dir, 'train-labels-idx1-ubyte.gz'), 1)
  raw_test = mnist.read_idx(os.path.join(real_dir, 't10k-labels-idx1-ubyte.gz'), 1)
  for name in ('train', 'validation', 'seen'):
    assert splits[name].class_names == ('2', '3', '4', '5', '6', '7')
  assert len(splits['train']) + len(splits['validation']) == np.isin(raw_train, HELD_OUT_STUDY['train_digits']).sum()
  assert splits['unseen'].class_names == ('0', '1', '8', '9')
  assert len(splits['unseen']) == np.isin(raw_test, (0, 1, 8, 9)).sum() == 4098
  assert len(splits['mixed']) == 10000
  assert len(splits['seen']) + len(splits['unseen']) == 10000


def test_validation_is_the_last_training_images_of_the_kept_digits(real_dir, tfds_dir):
  config = make_config(real_dir, tfds_dir, train_digits=(0, 1), validation_size=100)
  splits = mnist.load_splits(config)
  raw_images = mnist.read_idx(os.path.join(real_dir, 'train-images-idx3-ubyte.gz'), 3)
  raw_labels = mnist.read_idx(os.path.join(real_dir, 'train-labels-idx1-ubyte.gz'), 1)
  kept = np.isin(raw_labels, (0, 1))
  chex.assert_trees_all_equal(splits['validation'].images[..., 0], raw_images[kept][-100:])
  chex.assert_trees_all_equal(splits['validation'].labels, raw_labels[kept][-100:].astype(np.int32))
  chex.assert_trees_all_equal(splits['train'].images[..., 0], raw_images[kept][:-100])


def test_prepared_once_as_a_tfds_dataset_then_read_without_the_files(tmp_path):
  raw = tmp_path / 'raw'
  raw.mkdir()
  write_tiny_mnist(raw)
  config = make_config(raw, tmp_path / 'tfds', validation_size=5)
  first = mnist.load_splits(config)
  builder = tfds.builder_from_directory(str(tmp_path / 'tfds' / 'mnist_idx' / '1.0.0'))
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {'train': 20, 'test': 10}
  assert (tmp_path / 'tfds' / 'mnist_idx' / '1.0.0' / 'arrays.npz').exists()  # read back once, then cached
  for name in os.listdir(raw):
    os.remove(raw / name)
  second = mnist.load_splits(config)
  chex.assert_trees_all_equal({k: v.images for k, v in first.items()}, {k: v.images for k, v in second.items()})


def test_resize_matches_pil_bilinear_within_one_level(real_dir):
  images = mnist.read_idx(os.path.join(real_dir, 't10k-images-idx3-ubyte.gz'), 3)[:50, ..., None]
  for size in (14, 32, 105):
    resized = raw_files.resize_images(images, size)
    chex.assert_shape(resized, (50, size, size, 1))
    pil = np.stack([np.asarray(Image.fromarray(image[..., 0]).resize((size, size), Image.Resampling.BILINEAR))
                    for image in images])
    assert np.abs(resized[..., 0].astype(int) - pil).max() <= 1
  rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
  pil = np.asarray(Image.fromarray(rgb).resize((20, 20), Image.Resampling.BILINEAR))
  assert np.abs(raw_files.resize_image(rgb, 20).astype(int) - pil).max() <= 1
  assert raw_files.resize_images(images, 28) is images


def test_image_size_resizes_every_split(tmp_path):
  write_tiny_mnist(tmp_path)
  splits = mnist.load_splits(make_config(tmp_path, tmp_path, image_size=32, validation_size=5))
  for split in splits.values():
    chex.assert_shape(split.images, (None, 32, 32, 1))
  assert splits['train'].source == 'MNIST (canonical idx files), resized to 32x32'


def test_reads_gzipped_and_plain_idx_files(tmp_path):
  plain, zipped = tmp_path / 'plain', tmp_path / 'zipped'
  plain.mkdir()
  zipped.mkdir()
  write_tiny_mnist(plain, gzipped=False)
  write_tiny_mnist(zipped)
  os.remove(zipped / 't10k-images-idx3-ubyte.gz')  # One file plain, the others gzipped.
  os.symlink(plain / 't10k-images-idx3-ubyte', zipped / 't10k-images-idx3-ubyte')
  a = mnist.load_splits(make_config(plain, tmp_path / 'tfds_plain', validation_size=5))
  b = mnist.load_splits(make_config(zipped, tmp_path / 'tfds_zipped', validation_size=5))
  chex.assert_trees_all_equal({k: v.images for k, v in a.items()}, {k: v.images for k, v in b.items()})
  # Pixel (0, 0) is 10 * digit + (index // 10): validation is training images 15-19, digits 5-9.
  assert a['validation'].images[:, 0, 0, 0].tolist() == [51, 61, 71, 81, 91]
  assert a['validation'].class_names == ('5', '6', '7', '8', '9')


@pytest.mark.parametrize('data, message', [
    (idx_bytes(np.zeros(5, np.uint8)), 'wrong magic number'),  # A labels file where images belong.
    (idx_bytes(np.zeros((5, 28, 28)))[:-1], 'truncated or corrupt'),
    (b'\x1f\x8b' + b'not really gzip data', 'cannot read'),
    (b'', 'wrong magic number'),
])
def test_corrupt_idx_file_is_a_user_error(tmp_path, data, message):
  write_tiny_mnist(tmp_path)
  with open(tmp_path / 'train-images-idx3-ubyte.gz', 'wb') as f:
    f.write(data)
  with pytest.raises(UserError, match=message):
    mnist.load_splits(make_config(tmp_path, tmp_path, validation_size=5))


def test_labels_must_match_images(tmp_path):
  write_tiny_mnist(tmp_path)
  with open(tmp_path / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
    f.write(gzip.compress(idx_bytes(np.full(10, 12))))
  with pytest.raises(UserError, match='one digit label per image'):
    mnist.load_splits(make_config(tmp_path, tmp_path, validation_size=5))


def test_missing_files_name_the_folder(tmp_path):
  with pytest.raises(UserError, match=f'train-images-idx3-ubyte.gz or train-images-idx3-ubyte;.* in {tmp_path}'):
    mnist.load_splits(make_config(tmp_path, tmp_path))


def test_downloads_once_when_no_folder_is_configured(tmp_path, monkeypatch, no_env):
  mirror = tmp_path / 'mirror'
  mirror.mkdir()
  write_tiny_mnist(mirror)
  monkeypatch.setattr(mnist, 'MIRROR', mirror.as_uri() + '/')
  config = make_config(None, tmp_path / 'tfds', validation_size=5)
  first = mnist.load_splits(config)
  assert sorted(os.listdir(tmp_path / 'tfds' / 'siamese_jax' / 'mnist')) == sorted(f'{s}.gz' for s in STEMS)
  monkeypatch.setattr(mnist, 'MIRROR', (tmp_path / 'gone').as_uri() + '/')
  second = mnist.load_splits(config)  # Reads the downloaded copy, never the (now broken) mirror.
  chex.assert_trees_all_equal(first['train'].images, second['train'].images)


def test_offline_without_folder_is_one_user_error(tmp_path, monkeypatch, no_env):
  monkeypatch.setattr(mnist, 'MIRROR', (tmp_path / 'gone').as_uri() + '/')
  with pytest.raises(UserError, match='downloading .* failed .*data.manual_dir'):
    mnist.load_splits(make_config(None, tmp_path))
  assert not [name for name in os.listdir(tmp_path / 'siamese_jax' / 'mnist') if not name.endswith('.part')]


@pytest.mark.parametrize('overrides', [
    dict(train_digits=(1, 1)), dict(train_digits=(10,)), dict(train_digits=()), dict(train_digits='12'),
    dict(test_sets=dict(train=(1,))), dict(test_sets=dict(odd=(1, 3, 5, 11))),
    dict(validation_size=0), dict(validation_size=20), dict(image_size=0), dict(image_size=2.5),
])
def test_bad_settings_are_user_errors(tmp_path, overrides):
  write_tiny_mnist(tmp_path)
  with pytest.raises(UserError, match='data.'):
    mnist.load_splits(make_config(tmp_path, tmp_path, **{'validation_size': 5, **overrides}))


def test_cached_arrays_rebuild_only_when_inputs_or_params_change(tmp_path):
  source = tmp_path / 'source.bin'
  source.write_bytes(b'a')
  config = make_config(None, tmp_path)
  builds = []

  def build():
    builds.append(1)
    return {'x': np.arange(len(builds)), 'names': np.array(['C1', 'C22'])}

  first = raw_files.cached_arrays(config, 'toy', [str(source)], {'size': 1}, build)
  again = raw_files.cached_arrays(config, 'toy', [str(source)], {'size': 1}, build)
  chex.assert_trees_all_equal(first, again)
  assert len(builds) == 1
  raw_files.cached_arrays(config, 'toy', [str(source)], {'size': 2}, build)
  source.write_bytes(b'bb')
  rebuilt = raw_files.cached_arrays(config, 'toy', [str(source)], {'size': 1}, build)
  assert len(builds) == 3 and rebuilt['x'].tolist() == [0, 1, 2]
