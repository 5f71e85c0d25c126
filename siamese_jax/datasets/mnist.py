"""MNIST from its four canonical idx files, with digits held out of training for novelty studies.

The idx files are small enough that a TFDS builder would only add a copy: they are read directly
(gzipped or not) from `data.manual_dir`, or downloaded once from a public mirror when no folder is
configured. Class names are the digit strings, so a digit stays identifiable after
`ImageSet.subset` re-densifies the labels of a split.

The module also holds the raw-file helpers that the other datasets read without TFDS share:
finding or downloading raw files, caching decoded arrays, resizing, settings and hold-out splits.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import urllib.request
import zlib
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np
from PIL import Image

from siamese_jax.datasets import DATA_ENV, manual_dir
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.errors import UserError

MIRROR = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
DIGITS = tuple(range(10))
CLASS_NAMES = tuple(str(d) for d in DIGITS)
# Images then labels, of the training split then the t10k (test) split.
_STEMS = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
_DOWNLOAD_TIMEOUT_S = 60


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


# Helpers shared with the other datasets read without a TFDS builder.


def setting(data_config, key: str, default):
  """`data.<key>`, or `default` when it is missing or None (an explicit 0 or empty value is kept)."""
  value = data_config.get(key)
  return default if value is None else value


def int_setting(data_config, key: str, default: int, minimum: int = 1) -> int:
  """`data.<key>` (default when unset), checked to be an integer of at least `minimum`."""
  value = setting(data_config, key, default)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise UserError(f'data.{key} must be an integer >= {minimum}, got {value!r}')
  return value


def hold_out_last(images: ImageSet, n: int) -> tuple[ImageSet, ImageSet]:
  """(all but the last `n` images, the last `n`): deterministic, as in the usual MNIST 55k/5k split."""
  if n >= len(images):
    raise UserError(f'data.validation_size={n} leaves no training images (only {len(images)} available)')
  last = np.arange(len(images)) >= len(images) - n
  return images.subset(~last), images.subset(last)


def resize_images(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
  """uint8 [N, H, W, C] resized to [N, size, size, C] by bilinear filtering, antialiased when shrinking.

  Per-image matrix products, within one grey level of PIL's BILINEAR and several times faster than
  PIL image by image on small images (MNIST, CIFAR).
  """
  if images.shape[1:3] == (size, size):
    return images
  rows, cols = (_linear_weights(n, size) for n in images.shape[1:3])
  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for start in range(0, len(images), chunk):
    batch = np.moveaxis(images[start:start + chunk], -1, 1).astype(np.float32)  # [n, C, H, W]
    out[start:start + chunk] = np.moveaxis(np.clip(np.rint(rows @ batch @ cols.T), 0, 255), 1, -1)
  return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] resized to [size, size, C] by PIL: for one image, much faster than a matrix product."""
  if image.shape[:2] == (size, size):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR)).reshape(size, size, channels)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] triangle-filter weights; the triangle widens with the shrink factor so every input counts."""
  scale = n_in / n_out
  width = max(scale, 1.0)
  centers = (np.arange(n_out) + 0.5) * scale
  weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in) + 0.5 - centers[:, None]) / width)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def work_dir(data_config, dataset: str) -> str:
  """Where downloads and decoded caches go: <data.tfds_data_dir, else TFDS's default>/siamese_jax/<dataset>."""
  root = (data_config.get('tfds_data_dir') or os.environ.get('TFDS_DATA_DIR') or
          os.path.join('~', 'tensorflow_datasets'))
  return os.path.join(os.path.expanduser(root), 'siamese_jax', dataset)


def find_or_download(data_config, dataset: str, wanted: Sequence[tuple[str, ...]],
                     urls: Sequence[str]) -> list[str]:
  """The paths of raw files: in the manual dir when one is configured, else downloaded once.

  Args:
    data_config: the config's `data` block.
    dataset: the dataset's name, used for folder names and messages.
    wanted: for each file, the names it may have, the downloadable one first; the first name
      found is used.
    urls: for each file, where to download `wanted[i][0]` from.

  Returns:
    One existing path per entry of `wanted`.
  """
  folder = manual_dir(data_config, dataset)
  if folder is not None:
    found = [_first_existing(folder, names) for names in wanted]
    missing = [' or '.join(names) for names, path in zip(wanted, found) if path is None]
    if missing:
      raise UserError(f'{dataset}: {"; ".join(missing)} not found in {folder}; put the files there '
                      'or point data.manual_dir at the folder holding them')
    return found
  folder = work_dir(data_config, dataset)
  return [
      _first_existing(folder, names) or _download(url, os.path.join(folder, names[0]), dataset)
      for names, url in zip(wanted, urls)
  ]


def _first_existing(folder: str, names: Sequence[str]) -> str | None:
  paths = (os.path.join(folder, name) for name in names)
  return next((path for path in paths if os.path.isfile(path)), None)


def _download(url: str, path: str, dataset: str) -> str:
  """Fetches `url` to `path` through a temporary file, so an interrupted download never looks done."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = f'{path}.part'
  logging.info('downloading %s to %s', url, path)
  try:
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(partial, 'wb') as f:
      shutil.copyfileobj(response, f)
  except OSError as e:
    raise UserError(f'{dataset}: no data.manual_dir (or ${DATA_ENV}) is set and downloading {url} failed '
                    f'({e}); download it yourself and point data.manual_dir at its folder') from e
  os.replace(partial, path)
  return path


def cached_arrays(data_config, dataset: str, inputs: Sequence[str], params: dict,
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The arrays `build` decodes from `inputs`, built once and then read back from the work dir.

  Decoding tens of thousands of PNGs takes seconds to a minute; the cached copy loads in a fraction
  of a second. The key covers each input's path, size and modification time and `params`, so a
  changed file or setting never reads a stale copy. A cache that cannot be written is skipped.
  """
  fingerprint = [[os.path.realpath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in inputs]
  key = json.dumps([fingerprint, params], sort_keys=True)
  path = os.path.join(work_dir(data_config, dataset), 'cache', hashlib.sha256(key.encode()).hexdigest()[:16] + '.npz')
  if os.path.isfile(path):
    with np.load(path) as cached:
      return dict(cached)
  arrays = build()
  partial = f'{path}.{os.getpid()}.part'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(partial, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(partial, path)
  except OSError as e:
    logging.warning('not caching decoded %s arrays at %s: %s', dataset, path, e)
  return arrays
