"""MNIST from its four canonical idx files, with digits held out of training for novelty studies.

`MnistIdx` is a TFDS builder over the idx files (gzipped or not): they are read from
`data.manual_dir` (or `$SIAMESE_JAX_DATA/mnist`), or downloaded once from a public mirror when no
folder is configured. TFDS's own `mnist` builder only downloads, so it cannot prepare from files a
user already has on an offline machine. The prepared dataset is ArrayRecord, read with
`as_data_source`, so TensorFlow is never needed. Class names are the digit strings, so a digit stays
identifiable after `ImageSet.subset` re-densifies the labels of a split.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from siamese_jax.datasets import prepared, read_split, tfds_data_dir
from siamese_jax.datasets.image_files import InputForm
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.datasets.raw_files import (cached_beside, find_or_download, hold_out_last, int_setting, resize_images,
                                            setting)
from siamese_jax.errors import UserError

MIRROR = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
DIGITS = tuple(range(10))
# The `data` keys read here, beyond datasets.COMMON_KEYS.
KEYS = ('manual_dir', 'image_size', 'train_digits', 'test_sets', 'validation_size')
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
  size = input_form(data_config).size
  validation_size = int_setting(data_config, 'validation_size', 5000)

  builder = MnistIdx(
      idx_files=lambda: find_or_download(data_config, 'mnist', [(f'{stem}.gz', stem) for stem in _STEMS],
                                         [f'{MIRROR}{stem}.gz' for stem in _STEMS]),
      data_dir=tfds_data_dir(data_config), file_format='array_record')
  prepared.prepare(builder, data_config, 'mnist', [name for stem in _STEMS for name in (f'{stem}.gz', stem)])
  arrays = cached_beside(builder, 'arrays', lambda: _read_arrays(builder))
  source = 'MNIST (canonical idx files)' + (f', resized to {size}x{size}' if size != 28 else '')
  train, test = (
      ImageSet(images=resize_images(arrays[f'{split}_images'], size), labels=arrays[f'{split}_labels'],
               groups=np.zeros(len(arrays[f'{split}_labels']), np.int32), class_names=CLASS_NAMES, source=source)
      for split in ('train', 'test'))

  train, validation = hold_out_last(train.subset(np.isin(train.labels, train_digits)), validation_size)
  splits = {'train': train, 'validation': validation}
  for name, digits in test_sets.items():
    splits[name] = test.subset(np.isin(test.labels, digits))
  return splits


def input_form(data_config) -> InputForm:
  """How an image file becomes an input of a model trained on `data_config`."""
  return InputForm(size=int_setting(data_config, 'image_size', 28), channels=1, invert=False)


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


class MnistIdx(tfds.core.GeneratorBasedBuilder):
  """MNIST's 'train' (60,000) and 'test' (10,000) splits, prepared from the canonical idx files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Prepared from the four idx files in a manual folder or downloaded.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put {", ".join(_STEMS)} (each may be gzipped) in data.manual_dir.'

  def __init__(self, *, idx_files: Callable[[], Sequence[str]], **kwargs):
    """`idx_files` returns the four paths in `_STEMS` order; called only when preparing."""
    self._idx_files = idx_files
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='MNIST handwritten digits, white on black, from the canonical idx files.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
            # TFDS stores records shuffled; validation is the last images of the training file.
            'index': tfds.features.Scalar(np.int32, doc='position in the idx file'),
        }),
        homepage='http://yann.lecun.com/exdb/mnist/',
        citation='LeCun, Bottou, Bengio and Haffner. Gradient-based learning applied to document '
        'recognition. Proceedings of the IEEE 86(11), 1998.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The files come from `idx_files`: a manual folder or the project's own download.
    paths = self._idx_files()
    # Read and checked here, so a bad file is one UserError before TFDS writes anything.
    return {split: self._generate_examples(*_read_idx_pair(images_path, labels_path))
            for split, (images_path, labels_path) in zip(('train', 'test'), (paths[:2], paths[2:]))}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[int, dict]]:
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': image[..., None], 'label': int(label), 'index': index}


def _read_idx_pair(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1)
  if len(images) != len(labels) or labels.max(initial=0) > 9:
    raise UserError(f'{labels_path} does not hold one digit label per image of {images_path}')
  if images.shape[1:] != (28, 28):
    raise UserError(f'{images_path} holds {images.shape[1:]} images, not MNIST\'s 28x28')
  return images, labels


def _read_arrays(builder: MnistIdx) -> dict[str, np.ndarray]:
  """'<split>_images' and '<split>_labels' of both prepared splits, in idx-file order."""
  arrays = {}
  for split in ('train', 'test'):
    records = sorted(read_split(builder, split), key=lambda record: record['index'])
    arrays[f'{split}_images'] = np.array([record['image'] for record in records], np.uint8).reshape(-1, 28, 28, 1)
    arrays[f'{split}_labels'] = np.array([record['label'] for record in records], np.int32)
  return arrays


def _digits(value, key: str) -> tuple[int, ...]:
  """Sorted distinct digits, or a UserError naming the setting."""
  if (not isinstance(value, (tuple, list)) or not value or len(set(value)) != len(value) or
      any(isinstance(d, bool) or d not in DIGITS for d in value)):
    raise UserError(f'data.{key} must be a non-empty tuple of distinct digits 0-9, got {value!r}')
  return tuple(sorted(value))
