"""CIFAR-100 through TFDS, read from array_record without TensorFlow, with fine classes held out.

Held-out fine classes never reach train or validation: their test images form the 'heldout' split
for few-shot episodes on unseen classes, and 'test' keeps the rest of the test split for retrieval.
With `label='label'` the 20 superclasses are the groups. These are natural images: unlike the other
datasets there is no background to keep at 0.

The stock TFDS builder needs TensorFlow to prepare the data, so without it the prepared dataset
must come from elsewhere (`tfds build cifar100 --file_format=array_record`); with TensorFlow
installed a missing dataset is downloaded and prepared here.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

from siamese_jax.datasets import tfds_data_dir
from siamese_jax.datasets.image_files import InputForm
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.datasets.raw_files import cached_arrays, hold_out_last, int_setting, resize_images, setting
from siamese_jax.errors import UserError

NAME = 'cifar100'
LABELS = ('label', 'coarse_label')
NUM_CLASSES = 100
SPLITS = ('train', 'test')
# The `data` keys read here, beyond datasets.COMMON_KEYS.
KEYS = ('image_size', 'label', 'heldout_classes', 'validation_size')
# What the stock builder downloads; probed first because TFDS retries an unreachable host for minutes.
_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz'
_PROBE_TIMEOUT_S = 10


def load_splits(data_config) -> dict[str, ImageSet]:
  """'train', 'validation' and 'test' without the held-out classes, and 'heldout' (when any) with only them.

  Validation is the last `validation_size` images of the training split; every split is labelled
  by `data.label` ('label': 100 fine classes, 'coarse_label': 20 superclasses).
  """
  label = setting(data_config, 'label', 'label')
  if label not in LABELS:
    raise UserError(f'data.label must be one of {", ".join(LABELS)}, got {label!r}')
  heldout = _class_ids(setting(data_config, 'heldout_classes', ()))
  size = input_form(data_config).size
  validation_size = int_setting(data_config, 'validation_size', 5000)

  builder = _builder(data_config)
  arrays = _read_arrays(data_config, builder)
  names = {key: tuple(builder.info.features[key].names) for key in LABELS}
  source = f'CIFAR-100 (TFDS {NAME} {builder.version})' + (f', resized to {size}x{size}' if size != 32 else '')
  train, test = (_image_set(arrays, split, label, names, size, source) for split in SPLITS)

  train, validation = hold_out_last(train.subset(~np.isin(arrays['train_label'], heldout)), validation_size)
  is_heldout = np.isin(arrays['test_label'], heldout)
  splits = {'train': train, 'validation': validation, 'test': test.subset(~is_heldout)}
  if heldout:
    splits['heldout'] = test.subset(is_heldout)
  return splits


def input_form(data_config) -> InputForm:
  """How an image file becomes an input of a model trained on `data_config`."""
  return InputForm(size=int_setting(data_config, 'image_size', 32), channels=3, invert=False)


def _class_ids(value) -> tuple[int, ...]:
  """Distinct fine-class ids, or a UserError naming the setting."""
  if (not isinstance(value, (tuple, list)) or len(set(value)) != len(value) or
      any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_CLASSES for c in value)):
    raise UserError(f'data.heldout_classes must be distinct fine-class ids 0-{NUM_CLASSES - 1}, got {value!r}')
  return tuple(value)


def _image_set(arrays: dict[str, np.ndarray], split: str, label: str, names: dict[str, tuple[str, ...]],
               size: int, source: str) -> ImageSet:
  fine = label == 'label'
  labels = arrays[f'{split}_{label}']
  return ImageSet(
      images=resize_images(arrays[f'{split}_image'], size),
      labels=labels,
      groups=arrays[f'{split}_coarse_label'] if fine else np.zeros_like(labels),
      class_names=names[label],
      group_names=names['coarse_label'] if fine else ('all',),
      source=source,
  )


def _builder(data_config) -> tfds.core.DatasetBuilder:
  """The stock builder over `data.tfds_data_dir` (TFDS's default when empty), prepared when it can be."""
  builder = tfds.builder(NAME, data_dir=tfds_data_dir(data_config))
  if not builder.is_prepared() and _tensorflow_installed():
    try:
      urllib.request.urlopen(urllib.request.Request(_URL, method='HEAD'), timeout=_PROBE_TIMEOUT_S).close()
      builder.download_and_prepare(file_format='array_record')
    except Exception as e:  # Network, disk or checksum: all for the user to fix, so one line each.
      raise UserError(f'downloading and preparing CIFAR-100 in {builder.data_dir} failed ({type(e).__name__}: {e}); '
                      f'{_how_to_prepare(builder)}') from e
  return builder


def _tensorflow_installed() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _how_to_prepare(builder: tfds.core.DatasetBuilder) -> str:
  root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
  return ('prepare it once where TensorFlow and the network are available, with '
          f'`tfds build {NAME} --file_format=array_record --data_dir={root}`, and point data.tfds_data_dir there')


def _read_arrays(data_config, builder: tfds.core.DatasetBuilder) -> dict[str, np.ndarray]:
  """Both splits decoded; cached once prepared files exist to key the cache (decoding 60k PNGs takes ~20 s)."""
  if not builder.is_prepared():  # Nothing on disk to key a cache by, as under tfds.testing.mock_data.
    return _decode(builder)
  files = sorted(os.path.join(builder.data_dir, name) for name in os.listdir(builder.data_dir))
  return cached_arrays(data_config, NAME, files, {}, lambda: _decode(builder))


def _decode(builder: tfds.core.DatasetBuilder) -> dict[str, np.ndarray]:
  """`<split>_image` uint8 [N, 32, 32, 3] and int32 `<split>_label`, `<split>_coarse_label` for both splits."""
  try:
    sources = builder.as_data_source(split=list(SPLITS))
  except NotImplementedError as e:  # TFDS's answer when no array_record files are there.
    state = 'is prepared as TFRecord, which has no random access,' if builder.is_prepared() else 'is not prepared'
    raise UserError(f'CIFAR-100 {state} in {builder.data_dir}: {_how_to_prepare(builder)}') from e
  arrays = {}
  for split, source in zip(SPLITS, sources):
    # Record by record: as fast as a batched read for records this small.
    records = [source[i] for i in range(len(source))]
    arrays[f'{split}_image'] = np.stack([record['image'] for record in records])
    for key in LABELS:
      arrays[f'{split}_{key}'] = np.array([record[key] for record in records], np.int32)
  return arrays
