"""Helpers shared by the MNIST, malaria and CIFAR-100 dataset modules.

Finding the raw files their TFDS builders prepare from (or downloading them once, without TFDS's
download manager, which retries an unreachable host for minutes), caching decoded arrays in a work
dir or beside a prepared dataset, resizing, reading settings from a `data` config block, and holding
out a validation split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np
from PIL import Image

from siamese_jax.datasets import DATA_ENV, manual_dir
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.errors import UserError

_DOWNLOAD_TIMEOUT_S = 60


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
  return _load_or_build(path, build, compress=False)


def cached_beside(builder, name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The arrays `build` reads from a prepared TFDS dataset, cached as `<name>.npz` in its folder.

  Reading tens of thousands of records back and decoding them takes seconds; the cache loads in a
  fraction of one. Rebuilding the dataset replaces its folder and the caches with it.
  """
  return _load_or_build(os.path.join(builder.data_dir, f'{name}.npz'), build, compress=True)


def _load_or_build(path: str, build: Callable[[], dict[str, np.ndarray]], compress: bool) -> dict[str, np.ndarray]:
  """The arrays saved at `path`, else `build()`'s, saved there atomically; a cache that cannot be written is skipped."""
  if os.path.isfile(path):
    with np.load(path) as cached:
      return dict(cached)
  arrays = build()
  partial = f'{path}.{os.getpid()}.part'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(partial, 'wb') as f:
      (np.savez_compressed if compress else np.savez)(f, **arrays)
    os.replace(partial, path)  # Atomic: a concurrent reader sees all of it or nothing.
  except OSError as e:
    logging.warning('not caching arrays at %s: %s', path, e)
  return arrays
