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
when both are there, and `source` says which. `MalariaCells`, a TFDS builder with one config per copy,
prepares the archive once into an ArrayRecord dataset of every cell's PNG, class, patient and file
name, read back with `as_data_source` (TensorFlow is never needed), so another image size or channel
count reads that dataset instead of checking and decoding the archive again. TFDS's own `malaria`
builder cannot serve: it only downloads the original and keeps no file names, hence no patients.
Resizing and colour conversion follow the read; their result is cached under `data.tfds_data_dir`,
keyed on the archive and the settings, as decoding takes seconds for the 50px copy and about a minute
for the original. Cells are segmented on a black background, which matches the ImageSet convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator

from absl import logging
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from siamese_jax.datasets import prepared, read_split, tfds_data_dir
from siamese_jax.datasets.image_files import InputForm
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.datasets.raw_files import cached_arrays, find_or_download, int_setting, resize_image, setting
from siamese_jax.errors import UserError

URL = 'https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip'
ORIGINAL = 'cell_images.zip'
GRAY_50PX = 'cell_images_50px_gray.zip'
CLASS_NAMES = ('Parasitized', 'Uninfected')
SPLITS = ('train', 'validation', 'test')
# The `data` keys read here, beyond datasets.COMMON_KEYS.
KEYS = ('manual_dir', 'image_size', 'channels', 'validation_fraction', 'test_fraction', 'split_seed')
_SOURCES = {
    ORIGINAL: 'NIH malaria cells, original RGB release',
    GRAY_50PX: 'NIH malaria cells, third-party copy downscaled to 50x50 grayscale',
}
_PATIENT = re.compile(r'C(\d+)')
_DECODE_ERRORS = (OSError, SyntaxError, zlib.error)  # PIL reports some broken PNG chunks as SyntaxError.
_MODES = {1: 'L', 3: 'RGB'}  # PIL's mode for each channel count.


def patient_of(file_name: str) -> str:
  """The patient id `C<n>` at the start of a cell image's file name."""
  match = _PATIENT.match(os.path.basename(file_name))
  if match is None:
    raise UserError(f'cannot tell the patient of {file_name}: NIH malaria cell names start with C<number>')
  return f'C{int(match[1])}'


@dataclasses.dataclass(eq=False)
class CopyConfig(tfds.core.BuilderConfig):
  """One copy of the data: the archive it is prepared from and the channels its PNGs are stored with."""
  archive: str = ORIGINAL
  channels: int = 3


class MalariaCells(tfds.core.GeneratorBasedBuilder):
  """Every cell of one copy of the NIH malaria archive in one 'train' split, with patient and file name."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Every cell image with its class, patient and archive member name.'}
  BUILDER_CONFIGS = [
      CopyConfig(name='original', archive=ORIGINAL, channels=3, description=_SOURCES[ORIGINAL]),
      CopyConfig(name='gray_50px', archive=GRAY_50PX, channels=1, description=_SOURCES[GRAY_50PX]),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Put {ORIGINAL} ({URL}) or {GRAY_50PX} in data.manual_dir.'

  def __init__(self, *, archive: str, **kwargs):
    """Prepares from the zip at `archive` (never TFDS's download manager); its file name picks the config."""
    self._archive = archive
    [config] = [c.name for c in self.BUILDER_CONFIGS if c.archive == os.path.basename(archive)]
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    channels = self.builder_config.channels
    return self.dataset_info_from_configs(
        description='Segmented red blood cells from thin blood smears of 200 patients, parasitized or not.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, channels), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
            'patient': tfds.features.Text(doc='C<n>, from the start of the file name'),
            'file_name': tfds.features.Text(doc='the archive member, cell_images/<class>/<name>.png'),
        }),
        metadata=tfds.core.MetadataDict(),  # The archive's fingerprint, to notice a replaced archive.
        homepage='https://lhncbc.nlm.nih.gov/LHC-research/LHC-projects/image-processing/malaria-datasheet.html',
        citation='Rajaraman et al. Pre-trained convolutional neural networks as feature extractors toward '
        'improved malaria parasite detection in thin blood smear images. PeerJ 6:e4568, 2018.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The archive comes from the manual folder or the project's own download.
    # Listed and checked here, so a foreign or empty archive is one UserError before TFDS writes anything.
    with _open_archive(self._archive) as archive:
      members = [(name, _class_of(name)) for name in archive.namelist()]
      members = [(name, label, patient_of(name)) for name, label in members if label is not None]
      if not members:
        raise UserError(f'{self._archive} holds no cell image laid out as '
                        f'cell_images/{{{",".join(CLASS_NAMES)}}}/*.png')
      self.info.metadata['archive'] = _fingerprint(archive)
    return {'train': self._generate_examples(members)}

  def _generate_examples(self, members: list[tuple[str, int, str]]) -> Iterator[tuple[str, dict]]:
    """Each cell's PNG as stored when it is a PNG of the config's channels, else converted to them."""
    mode = _MODES[self.builder_config.channels]
    with _open_archive(self._archive) as archive:
      for name, label, patient in members:
        try:
          data = archive.read(name)
        except (zipfile.BadZipFile, OSError) as e:
          raise UserError(f'cannot read {self._archive} ({e}); download it again') from e
        try:
          with Image.open(io.BytesIO(data)) as stored:
            as_stored = stored.format == 'PNG' and stored.mode == mode
            image = stored.convert(mode)  # Decodes every pixel, so a broken PNG fails here.
        except _DECODE_ERRORS as e:
          raise UserError(f'cannot decode {name} in {self._archive} ({e}); download the archive again') from e
        yield name, {'image': data if as_stored else image, 'label': label, 'patient': patient, 'file_name': name}


def read_cells(data_config) -> tuple[ImageSet, np.ndarray]:
  """Every cell of the archive found or downloaded for `data_config`, and each cell's patient id.

  Cells are in file-name order, whatever order the prepared records are stored in.
  """
  form = input_form(data_config)
  size, channels = form.size, form.channels
  [archive] = find_or_download(data_config, 'malaria', [(ORIGINAL, GRAY_50PX)], [URL])
  copy = os.path.basename(archive)
  if copy == GRAY_50PX and channels == 3:
    raise UserError(f'{archive} is grayscale: set data.channels=1, or provide the original {ORIGINAL} ({URL})')
  params = {'image_size': size, 'channels': channels, 'dataset': f'{MalariaCells.name}:{MalariaCells.VERSION}'}
  arrays = cached_arrays(data_config, 'malaria', [archive], params,
                         lambda: _read_prepared(_prepared(data_config, archive), size, channels))
  cells = ImageSet(
      images=arrays['images'],
      labels=arrays['labels'],
      groups=np.zeros(len(arrays['labels']), np.int32),
      class_names=CLASS_NAMES,
      source=f'{_SOURCES[copy]} ({copy}), as {size}x{size} {"grayscale" if channels == 1 else "RGB"}',
  )
  return cells, arrays['patients']


def input_form(data_config) -> InputForm:
  """How an image file becomes an input of a model trained on `data_config`."""
  channels = setting(data_config, 'channels', 1)
  if isinstance(channels, bool) or channels not in (1, 3):
    raise UserError(f'data.channels must be 1 or 3, got {channels!r}')
  return InputForm(size=int_setting(data_config, 'image_size', 50), channels=channels, invert=False)


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


def _prepared(data_config, archive: str) -> MalariaCells:
  """The builder of `archive`'s copy, prepared from it unless that was done before from the same content."""
  builder = MalariaCells(archive=archive, data_dir=tfds_data_dir(data_config), file_format='array_record')
  with prepared.exclusive(builder):
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if builder.is_prepared():
      with _open_archive(archive) as opened:
        if builder.info.metadata.get('archive') != _fingerprint(opened):
          logging.warning('malaria: %s differs from the archive the copy in %s was prepared from; preparing that '
                          'copy again from it', archive, builder.data_dir)
          mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  return builder


def _read_prepared(builder: MalariaCells, size: int, channels: int) -> dict[str, np.ndarray]:
  """Every prepared cell, decoded, in file-name order."""
  records = read_split(builder, 'train', decoders={'image': tfds.decode.SkipDecoding()})
  records = sorted(records, key=lambda record: record['file_name'])
  return {
      'images': np.stack([_decode(record['image'], size, channels) for record in records]),
      'labels': np.array([record['label'] for record in records], np.int32),
      'patients': np.array([record['patient'].decode() for record in records]),
  }


def _decode(data: bytes, size: int, channels: int) -> np.ndarray:
  """One stored cell as uint8 [size, size, channels]."""
  with Image.open(io.BytesIO(data)) as image:
    pixels = np.asarray(image.convert(_MODES[channels]))
  return resize_image(pixels.reshape(*pixels.shape[:2], channels), size)


def _open_archive(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise UserError(f'cannot read {path} ({e}); download it again') from e


def _fingerprint(archive: zipfile.ZipFile) -> str:
  """A digest of the archive's directory (member names, sizes and CRCs): the same for a copied archive."""
  listing = [(info.filename, info.file_size, info.CRC) for info in archive.infolist()]
  return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _class_of(name: str) -> int | None:
  """The class id of an archive member that is a cell image, else None (Thumbs.db, folders, macOS '._' files)."""
  folder, _, file_name = name.rpartition('/')
  class_name = folder.rpartition('/')[2]
  if class_name not in CLASS_NAMES or not file_name.endswith('.png') or file_name.startswith('.'):
    return None
  return CLASS_NAMES.index(class_name)
