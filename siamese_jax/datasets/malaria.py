"""NIH malaria cell images (Rajaraman et al. 2018), split by patient so no patient is in two splits.

Cells from one blood smear look alike (stain, illumination, parasite load), so a split by cell would
leak the patient into the test set. Every file name starts with the patient's slide id `C<n>`, as in
`C123P84ThinF_IMG_20151002_150931_cell_161.png`: patient C123, then for infected patients `P<m>`
(one-to-one with `C<n>` in the release; here 84), the smear type (`ThinF`, `thinF_original`, ...),
the field image (`IMG_<date>_<time>`) and the cell number in it. Two ids carry a letter after the
number (C37B, C51A); the number alone is the key, which could only merge patients, never split one.
The release has 200 ids, 150 infected patients with cells of both classes and 50 uninfected ones with
only Uninfected cells, as in the paper; splits are drawn from each kind separately.

Two copies are read: the original release `cell_images.zip` (RGB, about 100-200 px) and
`cell_images_50px_gray.zip`, a third-party copy downscaled to 50x50 grayscale; the original is read
when both are there, and `source` says which. Decoded cells are cached under `data.tfds_data_dir`:
decoding takes seconds for the 50px copy and about a minute for the original. Cells are segmented
on a black background, which matches the ImageSet convention.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib

import numpy as np
from PIL import Image

from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.datasets.raw_files import cached_arrays, find_or_download, int_setting, resize_image, setting
from siamese_jax.errors import UserError

URL = 'https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip'
ORIGINAL = 'cell_images.zip'
GRAY_50PX = 'cell_images_50px_gray.zip'
CLASS_NAMES = ('Parasitized', 'Uninfected')
SPLITS = ('train', 'validation', 'test')
_SOURCES = {
    ORIGINAL: 'NIH malaria cells, original RGB release',
    GRAY_50PX: 'NIH malaria cells, third-party copy downscaled to 50x50 grayscale',
}
_PATIENT = re.compile(r'C(\d+)')


def patient_of(file_name: str) -> str:
  """The patient id `C<n>` at the start of a cell image's file name."""
  match = _PATIENT.match(os.path.basename(file_name))
  if match is None:
    raise UserError(f'cannot tell the patient of {file_name}: NIH malaria cell names start with C<number>')
  return f'C{int(match[1])}'


def read_cells(data_config) -> tuple[ImageSet, np.ndarray]:
  """Every cell of the archive found or downloaded for `data_config`, and each cell's patient id."""
  size = int_setting(data_config, 'image_size', 50)
  channels = setting(data_config, 'channels', 1)
  if isinstance(channels, bool) or channels not in (1, 3):
    raise UserError(f'data.channels must be 1 or 3, got {channels!r}')
  [archive] = find_or_download(data_config, 'malaria', [(ORIGINAL, GRAY_50PX)], [URL])
  copy = os.path.basename(archive)
  if copy == GRAY_50PX and channels == 3:
    raise UserError(f'{archive} is grayscale: set data.channels=1, or provide the original {ORIGINAL} ({URL})')
  arrays = cached_arrays(data_config, 'malaria', [archive], {'image_size': size, 'channels': channels},
                         lambda: _decode_archive(archive, size, channels))
  cells = ImageSet(
      images=arrays['images'],
      labels=arrays['labels'],
      groups=np.zeros(len(arrays['labels']), np.int32),
      class_names=CLASS_NAMES,
      source=f'{_SOURCES[copy]} ({copy}), as {size}x{size} {"grayscale" if channels == 1 else "RGB"}',
  )
  return cells, arrays['patients']


def split_by_patient(patients: np.ndarray, labels: np.ndarray, validation_fraction: float,
                     test_fraction: float, seed: int) -> dict[str, np.ndarray]:
  """Boolean masks of the cells in 'train', 'validation' and 'test', with each patient in one split.

  Infected and uninfected patients are shuffled and divided separately, so that every split gets
  both kinds in about the same proportion; the fractions count patients, not cells.
  """
  _check_fractions(validation_fraction, test_fraction)
  rng = np.random.default_rng(seed)
  infected = set(patients[labels == CLASS_NAMES.index('Parasitized')].tolist())
  split_of = {}
  for kind in (sorted(set(patients.tolist()) - infected), sorted(infected)):
    if not kind:
      continue
    order = rng.permutation(kind).tolist()
    n_test = max(1, round(test_fraction * len(order)))
    n_validation = max(1, round(validation_fraction * len(order)))
    if n_test + n_validation >= len(order):
      raise UserError(f'only {len(order)} patients of a kind: too few to split by patient with these fractions')
    split_of.update(dict.fromkeys(order[:n_test], 'test'))
    split_of.update(dict.fromkeys(order[n_test:n_test + n_validation], 'validation'))
    split_of.update(dict.fromkeys(order[n_test + n_validation:], 'train'))
  assigned = np.array([split_of[p] for p in patients.tolist()])
  return {name: assigned == name for name in SPLITS}


def load_splits(data_config) -> dict[str, ImageSet]:
  """'train', 'validation' and 'test', split by patient with `data.split_seed`."""
  fractions = setting(data_config, 'validation_fraction', 0.1), setting(data_config, 'test_fraction', 0.2)
  _check_fractions(*fractions)  # Before the slow part.
  seed = int_setting(data_config, 'split_seed', 0, minimum=0)
  cells, patients = read_cells(data_config)
  masks = split_by_patient(patients, cells.labels, *fractions, seed=seed)
  return {name: cells.subset(mask) for name, mask in masks.items()}


def _check_fractions(validation_fraction: float, test_fraction: float) -> None:
  fractions = (validation_fraction, test_fraction)
  if not (all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in fractions) and
          sum(fractions) < 1):
    raise UserError('data.validation_fraction and data.test_fraction must be positive with a sum below 1, '
                    f'got {validation_fraction!r} and {test_fraction!r}')


def _decode_archive(path: str, size: int, channels: int) -> dict[str, np.ndarray]:
  """Decodes every cell image in the archive, skipping anything else (Thumbs.db, folders, macOS '._' files)."""
  try:
    with zipfile.ZipFile(path) as archive:
      members = [(name, _class_of(name)) for name in archive.namelist()]
      members = [(name, label) for name, label in members if label is not None]
      if not members:
        raise UserError(f'{path} holds no cell image laid out as cell_images/{{{",".join(CLASS_NAMES)}}}/*.png')
      patients = np.array([patient_of(name) for name, _ in members])  # Fails fast on a foreign archive.
      images = np.stack([_decode_member(archive, name, size, channels) for name, _ in members])
  except (zipfile.BadZipFile, OSError) as e:
    raise UserError(f'cannot read {path} ({e}); download it again') from e
  return {'images': images, 'labels': np.array([label for _, label in members], np.int32), 'patients': patients}


def _class_of(name: str) -> int | None:
  """The class id of an archive member that is a cell image, else None."""
  folder, _, file_name = name.rpartition('/')
  class_name = folder.rpartition('/')[2]
  if class_name not in CLASS_NAMES or not file_name.endswith('.png') or file_name.startswith('.'):
    return None
  return CLASS_NAMES.index(class_name)


def _decode_member(archive: zipfile.ZipFile, name: str, size: int, channels: int) -> np.ndarray:
  """One cell as uint8 [size, size, channels]."""
  try:
    with Image.open(io.BytesIO(archive.read(name))) as image:
      pixels = np.asarray(image.convert('L' if channels == 1 else 'RGB'))
  except (OSError, SyntaxError, zlib.error) as e:  # PIL reports some broken PNG chunks as SyntaxError.
    raise UserError(f'cannot decode {name} in {archive.filename} ({e}); download the archive again') from e
  return resize_image(pixels.reshape(*pixels.shape[:2], channels), size)
