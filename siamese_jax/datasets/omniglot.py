"""Omniglot with its drawers: a TFDS builder over the official archives, and the split loader.

The stock TFDS `omniglot` builder drops the drawer of each image, so Koch et al.'s protocol (train
on drawers 1-12, validate on drawers 13-16 of other alphabets) and Lake et al.'s one-shot runs (one
drawer for the support, another for the queries) cannot be rebuilt from it. `OmniglotDrawers`
keeps the alphabet, character and drawer of every image. It is written as ArrayRecord and read
with `as_data_source`, so TensorFlow is never needed.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import re
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np
import requests
import tensorflow_datasets as tfds
from PIL import Image

from siamese_jax.datasets import manual_dir, prepared, read_split, tfds_data_dir
from siamese_jax.datasets.image_files import InputForm, to_model_input
from siamese_jax.datasets.image_set import ImageSet
from siamese_jax.datasets.raw_files import cached_beside
from siamese_jax.errors import UserError

ORIGINAL_SIZE = 105
NUM_DRAWERS = 20
# The `data` keys read here, beyond datasets.COMMON_KEYS.
KEYS = ('manual_dir', 'image_size', 'train_alphabets', 'train_drawers', 'validation_alphabets',
        'validation_drawers', 'test_alphabets', 'test_drawers', 'train_rotations_as_classes',
        'train_mirrors_as_classes', 'crop_to_ink')
SPLITS = ('background', 'evaluation')
_URL = 'https://github.com/brendenlake/omniglot/raw/master/python/images_{}.zip'
_URLS = {split: _URL.format(split) for split in SPLITS}
# <top>/<Alphabet>/<characterNN>/<id>_<drawer>.png
_MEMBER = re.compile(r'^[^/]+/(?P<alphabet>[^/]+)/(?P<character>character\d+)/\d+_(?P<drawer>\d+)\.png$')

BACKGROUND_ALPHABETS = (
    'Alphabet_of_the_Magi', 'Anglo-Saxon_Futhorc', 'Arcadian', 'Armenian',
    'Asomtavruli_(Georgian)', 'Balinese', 'Bengali', 'Blackfoot_(Canadian_Aboriginal_Syllabics)',
    'Braille', 'Burmese_(Myanmar)', 'Cyrillic', 'Early_Aramaic', 'Futurama', 'Grantha', 'Greek',
    'Gujarati', 'Hebrew', 'Inuktitut_(Canadian_Aboriginal_Syllabics)', 'Japanese_(hiragana)',
    'Japanese_(katakana)', 'Korean', 'Latin', 'Malay_(Jawi_-_Arabic)', 'Mkhedruli_(Georgian)',
    'N_Ko', 'Ojibwe_(Canadian_Aboriginal_Syllabics)', 'Sanskrit', 'Syriac_(Estrangelo)', 'Tagalog',
    'Tifinagh',
)
# The evaluation alphabets in the copy of images_evaluation.zip that this project ships with.
OPEN_EVALUATION_ALPHABETS = (
    'Angelic', 'Atemayar_Qelisayer', 'Aurek-Besh', 'Avesta', 'Keble', 'Mongolian', 'Oriya',
    'Sylheti', 'Syriac_(Serto)', 'ULOG',
)


def _grayscale(data: bytes) -> Image.Image:
  """Opens a PNG as 8-bit grayscale: 1-bit PNGs become {0, 255} whichever decoder reads them."""
  with Image.open(io.BytesIO(data)) as image:
    return image.convert('L')


def _form(size: int, crop_to_ink: bool = False) -> InputForm:
  """Black on white, inverted; area-averaged down (keeps thin strokes visible), bilinear up."""
  return InputForm(size=size, channels=1, invert=True, shrink=Image.Resampling.BOX, crop_to_ink=crop_to_ink)


def input_form(data_config) -> InputForm:
  """How an image file becomes an input of a model trained on `data_config`."""
  return _form(data_config.get('image_size') or ORIGINAL_SIZE, bool(data_config.get('crop_to_ink', False)))


def decode_png(data: bytes, size: int | None = None, crop_to_ink: bool = False) -> np.ndarray:
  """Decodes a black-on-white drawing into the ImageSet convention: uint8 [S, S, 1], strokes 255.

  Args:
    data: the PNG file's bytes (1-bit or 8-bit grayscale).
    size: side of the square output; None keeps the stored size.
    crop_to_ink: cut the square around the drawing first (`image_files.square_around_ink`).
  """
  with Image.open(io.BytesIO(data)) as image:
    return to_model_input(image, _form(size or image.size[0], crop_to_ink))


class OmniglotDrawers(tfds.core.GeneratorBasedBuilder):
  """Omniglot images with their alphabet, character and drawer."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Alphabet, character and drawer of every image.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put images_background.zip and/or images_evaluation.zip (from '
      'https://github.com/brendenlake/omniglot/tree/master/python) in the manual folder.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Omniglot handwritten characters with the drawer (1-20) of each image.',
        features=tfds.features.FeaturesDict({
            # Black strokes (0) on white (255), stored 8-bit so every decoder agrees.
            'image': tfds.features.Image(shape=(ORIGINAL_SIZE, ORIGINAL_SIZE, 1), encoding_format='png'),
            'alphabet': tfds.features.Text(),
            'character': tfds.features.Text(doc='<Alphabet>/characterNN, unique across alphabets'),
            'drawer': tfds.features.Scalar(np.int32, doc='1-20, from the file name <id>_<drawer>.png'),
        }),
        homepage='https://github.com/brendenlake/omniglot',
        citation='Lake, Salakhutdinov and Tenenbaum. Human-level concept learning through '
        'probabilistic program induction. Science 350(6266), 2015.',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    archives = _manual_archives(dl_manager) or _download_archives(dl_manager)
    return {split: self._generate_examples(_open_archive(path)) for split, path in archives.items()}

  def _generate_examples(self, archive: zipfile.ZipFile) -> Iterator[tuple[str, dict]]:
    with archive:
      for name in archive.namelist():
        match = _MEMBER.match(name)
        if not match:
          continue
        image = _grayscale_member(archive, name)
        yield name, {
            'image': image,
            'alphabet': match['alphabet'],
            'character': f'{match["alphabet"]}/{match["character"]}',
            'drawer': int(match['drawer']),
        }


def _manual_archives(dl_manager: tfds.download.DownloadManager) -> dict[str, str]:
  """The official archives found in the manual folder, by split."""
  try:
    folder = dl_manager.manual_dir
  except AssertionError:  # TFDS's signal for a missing or empty manual folder.
    return {}
  paths = {split: folder / f'images_{split}.zip' for split in SPLITS}
  return {split: os.fspath(path) for split, path in paths.items() if path.exists()}


def _download_archives(dl_manager: tfds.download.DownloadManager) -> dict[str, str]:
  """Downloads the archives; fails fast with one clear line when offline."""
  try:
    # One quick request first: TFDS retries an unreachable host for minutes.
    for url in _URLS.values():
      requests.head(url, timeout=10, allow_redirects=True).raise_for_status()
    return {split: os.fspath(path) for split, path in dl_manager.download(_URLS).items()}
  except (requests.RequestException, OSError) as error:
    raise UserError(
        f'no Omniglot archive found in the manual folder and downloading it failed ({type(error).__name__}); '
        'put images_background.zip and/or images_evaluation.zip in data.manual_dir or '
        f'$SIAMESE_JAX_DATA/omniglot (default manual folder: {dl_manager.download_dir / "manual"})') from error


def _open_archive(path: str) -> zipfile.ZipFile:
  """Opens and checks an archive before anything is written."""
  try:
    archive = zipfile.ZipFile(path)
    bad_member = archive.testzip()
  except (zipfile.BadZipFile, OSError) as error:
    raise UserError(f'cannot read Omniglot archive {path} ({error}); download it again') from error
  if bad_member is not None:
    raise UserError(f'Omniglot archive {path} is corrupt at {bad_member}; download it again')
  if not any(_MEMBER.match(name) for name in archive.namelist()):
    raise UserError(f'{path} holds no image laid out as images_<split>/<Alphabet>/characterNN/<id>_<drawer>.png')
  return archive


def _grayscale_member(archive: zipfile.ZipFile, name: str) -> Image.Image:
  """One archive image as 8-bit grayscale, checked to be Omniglot-sized."""
  try:
    image = _grayscale(archive.read(name))
  except OSError as error:
    raise UserError(f'cannot decode {name} in {archive.filename} ({error}); download the archive again') from error
  if image.size != (ORIGINAL_SIZE, ORIGINAL_SIZE):
    raise UserError(f'{name} in {archive.filename} is {image.size}, not {ORIGINAL_SIZE}x{ORIGINAL_SIZE}')
  return image


@dataclasses.dataclass(frozen=True)
class Drawings:
  """Omniglot images with the alphabet, character and drawer of each, in the ImageSet convention.

  The form splits are selected from: Koch et al.'s splits and Lake et al.'s runs are both defined
  by alphabet and drawer, which an ImageSet does not keep.

  Attributes:
    images: uint8 [N, S, S, 1], strokes 255 on background 0.
    alphabets: str [N], the alphabet of each image.
    characters: str [N], '<Alphabet>/characterNN' of each image.
    drawers: int32 [N], 1-20.
    source: which copy of the data, at which size.
  """

  images: np.ndarray
  alphabets: np.ndarray
  characters: np.ndarray
  drawers: np.ndarray
  source: str

  def where(self, alphabets: Sequence[str], drawers: Sequence[int]) -> Drawings:
    """The images of `alphabets` drawn by `drawers`; an alphabet not in the data is a UserError."""
    present = sorted(set(self.alphabets.tolist()))
    missing = sorted(set(alphabets) - set(present))
    if missing:
      raise UserError(f'alphabets {missing} are not in {self.source}; it has {", ".join(present)} '
                      '(if you have added an archive since it was prepared, delete the prepared omniglot_drawers '
                      'folder under data.tfds_data_dir to rebuild it)')
    mask = np.isin(self.alphabets, list(alphabets)) & np.isin(self.drawers, list(drawers))
    return dataclasses.replace(self, images=self.images[mask], alphabets=self.alphabets[mask],
                               characters=self.characters[mask], drawers=self.drawers[mask])

  def image_set(self) -> ImageSet:
    """Characters as dense labels and alphabets as groups, both in name order."""
    class_names, labels = np.unique(self.characters, return_inverse=True)
    group_names, groups = np.unique(self.alphabets, return_inverse=True)
    return ImageSet(images=self.images, labels=labels.astype(np.int32), groups=groups.astype(np.int32),
                    class_names=tuple(class_names.tolist()), group_names=tuple(group_names.tolist()),
                    source=self.source, drawers=self.drawers)

  @classmethod
  def from_image_set(cls, image_set: ImageSet) -> Drawings:
    """The inverse of `image_set`, for an ImageSet that kept its drawers (an Omniglot split)."""
    if image_set.drawers is None:
      raise UserError(f'{image_set.source} does not say who drew each image, which Lake-style runs need')
    return cls(images=image_set.images, alphabets=np.array(image_set.group_names)[image_set.groups],
               characters=np.array(image_set.class_names)[image_set.labels], drawers=image_set.drawers,
               source=image_set.source)


def load_drawings(data_config) -> Drawings:
  """Every image of the prepared dataset at `data_config.image_size` (cut around its drawing with
  `data.crop_to_ink`), preparing the dataset first if needed."""
  size = data_config.get('image_size', ORIGINAL_SIZE)
  if not isinstance(size, int) or size < 1:
    raise UserError(f'data.image_size must be a positive integer, got {size!r}')
  crop = data_config.get('crop_to_ink', False)
  if not isinstance(crop, bool):
    raise UserError(f'data.crop_to_ink must be True or False, got {crop!r}')
  builder = OmniglotDrawers(data_dir=tfds_data_dir(data_config),
                            file_format='array_record')
  prepared.prepare(builder, data_config, 'omniglot', [f'images_{split}.zip' for split in SPLITS],
                   tfds.download.DownloadConfig(manual_dir=manual_dir(data_config, 'omniglot')))
  # Decoding ~26k PNGs takes seconds: one cached copy per image size.
  arrays = cached_beside(builder, f'decoded_{size}px' + ('_ink' if crop else ''), lambda: _decode(builder, size, crop))
  archives = '+'.join(f'images_{split}' for split in sorted(builder.info.splits))
  source = (f'omniglot {archives} ({len(set(arrays["alphabets"].tolist()))} alphabets in all), {size}px'
            + (', cut around the ink' if crop else ''))
  return Drawings(source=source, **arrays)


def _decode(builder: OmniglotDrawers, size: int, crop_to_ink: bool) -> dict[str, np.ndarray]:
  """Reads every split's records and decodes them, sorted by character then drawer."""
  records = []
  for split in builder.info.splits:
    records += read_split(builder, split, decoders={'image': tfds.decode.SkipDecoding()})
  characters = np.array([r['character'].decode() for r in records])
  drawers = np.array([r['drawer'] for r in records], dtype=np.int32)
  order = np.lexsort((drawers, characters))
  return {
      'images': np.stack([decode_png(records[i]['image'], size, crop_to_ink) for i in order]),
      'alphabets': np.array([records[i]['alphabet'].decode() for i in order]),
      'characters': characters[order],
      'drawers': drawers[order],
  }


def load_splits(data_config) -> dict[str, ImageSet]:
  """Koch-style splits: each of train/validation/test is a set of alphabets times a set of drawers.

  The test split is left out when `data.test_alphabets` is empty. `data.train_rotations_as_classes` and
  `data.train_mirrors_as_classes` add the training characters' quarter turns and mirror images as new
  characters (`ImageSet.with_symmetries_as_classes`).
  """
  selections = _selections(data_config)
  drawings = load_drawings(data_config)
  splits = {}
  for name, (alphabets, drawers) in selections.items():
    try:
      split = drawings.where(alphabets, drawers)
    except UserError as error:
      raise UserError(f'data.{name}_alphabets: {error}') from None
    if not len(split.images):
      raise UserError(f'data.{name}_alphabets/_drawers select no image from {drawings.source}')
    splits[name] = split.image_set()
  turns = data_config.get('train_rotations_as_classes', False)
  mirrors = data_config.get('train_mirrors_as_classes', False)
  if turns or mirrors:
    splits['train'] = splits['train'].with_symmetries_as_classes(quarter_turns=turns, mirror=mirrors)
  return splits


def _selections(data_config) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """The alphabets and drawers of each split, checked before any data is read.

  Splits may share alphabets or drawers but never both, since then they would share images.
  """
  names = ('train', 'validation', 'test') if data_config.get('test_alphabets') else ('train', 'validation')
  selections = {}
  for name in names:
    alphabets, drawers = data_config.get(f'{name}_alphabets'), data_config.get(f'{name}_drawers')
    if isinstance(alphabets, str) or not alphabets or not drawers:
      raise UserError(f'data.{name}_alphabets and data.{name}_drawers must be non-empty lists, '
                      f'got {alphabets!r} and {drawers!r}')
    bad = [d for d in drawers if not (isinstance(d, int) and 1 <= d <= NUM_DRAWERS)]
    if bad:
      raise UserError(f'data.{name}_drawers must be integers from 1 to {NUM_DRAWERS}, got {bad}')
    selections[name] = (tuple(alphabets), tuple(drawers))
  for first, second in itertools.combinations(names, 2):
    alphabets, drawers = (sorted(set(a) & set(b)) for a, b in zip(selections[first], selections[second]))
    if alphabets and drawers:
      raise UserError(f'data splits {first} and {second} share the images of {alphabets} by drawers {drawers}; '
                      'make their alphabets or their drawers disjoint')
  return selections
