"""MNIST from its four canonical idx files, with digits held out of training for novelty studies.

The idx files are small enough that a TFDS builder would only add a copy: they are read directly
(gzipped or not) from `data.manual_dir`, or downloaded once from a public mirror when no folder is
configured. Class names are the digit strings, so a digit stays identifiable after
`ImageSet.subset` re-densifies the labels of a split.
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np

from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.datasets.raw_files import find_or_download, hold_out_last, int_setting, resize_images, setting
from siamese_jax.errors import UserError

MIRROR = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
DIGITS = tuple(range(10))
CLASS_NAMES = tuple(str(d) for d in DIGITS)
# Images then labels, of the training split then the t10k (test) split.
_STEMS = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def load_splits(data_config) -> dict[str, ImageSet]:
  """'train' and 'validation' with only `train_digits`, plus one split per entry of `test_sets`.

  Validation is the last `validation_size` training images of those digits; each test set holds
  the t10k images of its digits.
  """
  train_digits = _digits(setting(data_config, 'train_digits', DIGITS), 'train_digits')
  test_sets = {
      name: _digits(digits, f'test_sets.{name}')
      for name, digits in dict(setting(data_config, 'test_sets', {'test': DIGITS})).items()
  }
  if {'train', 'validation'} & set(test_sets):
    raise UserError('data.test_sets must not be named train or validation')
  size = int_setting(data_config, 'image_size', 28)
  validation_size = int_setting(data_config, 'validation_size', 5000)

  paths = find_or_download(
      data_config, 'mnist', [(f'{stem}.gz', stem) for stem in _STEMS], [f'{MIRROR}{stem}.gz' for stem in _STEMS])
  source = 'MNIST (canonical idx files)' + (f', resized to {size}x{size}' if size != 28 else '')
  train, test = (
      _read_split(images_path, labels_path, size, source)
      for images_path, labels_path in (paths[:2], paths[2:]))

  train, validation = hold_out_last(train.subset(np.isin(train.labels, train_digits)), validation_size)
  splits = {'train': train, 'validation': validation}
  for name, digits in test_sets.items():
    splits[name] = test.subset(np.isin(test.labels, digits))
  return splits


def read_idx(path: str, ndim: int) -> np.ndarray:
  """The unsigned-byte array in an idx file, gzipped or not, checked against its header."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    if data[:2] == b'\x1f\x8b':
      data = gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f'cannot read {path} ({e}); replace it with a fresh copy') from e
  header = 4 * (ndim + 1)
  if len(data) < header or int.from_bytes(data[:4], 'big') != 0x800 + ndim:
    raise UserError(f'{path} is not an idx file of {ndim}-d unsigned bytes (wrong magic number)')
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, 4))
  if len(data) - header != math.prod(shape):
    raise UserError(
        f'{path} is truncated or corrupt: its header says {shape} but {len(data) - header} bytes follow')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _read_split(images_path: str, labels_path: str, size: int, source: str) -> ImageSet:
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1)
  if len(images) != len(labels) or labels.max(initial=0) > 9:
    raise UserError(f'{labels_path} does not hold one digit label per image of {images_path}')
  return ImageSet(
      images=resize_images(images[..., None], size),
      labels=labels.astype(np.int32),
      groups=np.zeros(len(labels), np.int32),
      class_names=CLASS_NAMES,
      source=source,
  )


def _digits(value, key: str) -> tuple[int, ...]:
  """Sorted distinct digits, or a UserError naming the setting."""
  if (not isinstance(value, (tuple, list)) or not value or len(set(value)) != len(value) or
      any(isinstance(d, bool) or d not in DIGITS for d in value)):
    raise UserError(f'data.{key} must be a non-empty tuple of distinct digits 0-9, got {value!r}')
  return tuple(sorted(value))
