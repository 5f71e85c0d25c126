"""The Omniglot builder and split loader, on tiny synthetic archives and on the real data."""

import concurrent.futures
import dataclasses
import io
import zipfile

import chex
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import data_dir
from siamese_jax.datasets import image_files, omniglot
from siamese_jax.errors import UserError

# Alphabet -> number of characters, per archive; every character drawn by drawers 1-6.
BACKGROUND = {'Alpha': 3, 'Beta': 2}
EVALUATION = {'Gamma': 2}
DRAWERS = range(1, 7)
ALPHABET_IDS = {name: i for i, name in enumerate([*BACKGROUND, *EVALUATION])}
BAND = 5  # Pixels per unit of an identity bar.


def identity_drawing(alphabet_id: int, character: int, drawer: int) -> np.ndarray:
  """A 105x105 bool image, True = white, whose black bars' lengths spell out where it came from."""
  white = np.ones((105, 105), bool)
  for row, units in ((0, alphabet_id + 1), (20, character), (40, drawer)):
    white[row:row + 10, :units * BAND] = False
  return white


def read_identity(image: np.ndarray) -> tuple[int, int, int]:
  """Inverse of `identity_drawing` on a loaded 105px image (strokes 255)."""
  alphabet_units, character, drawer = (int(np.sum(image[row, :, 0] == 255)) // BAND for row in (5, 25, 45))
  return alphabet_units - 1, character, drawer


def png_bytes(white: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(white).save(buffer, format='png')  # bool -> 1-bit, like the originals.
  return buffer.getvalue()


def write_archive(path, split: str, alphabets: dict[str, int]) -> None:
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr(f'images_{split}/', '')
    for alphabet, num_characters in alphabets.items():
      alphabet_id = ALPHABET_IDS[alphabet]
      for character in range(1, num_characters + 1):
        for drawer in DRAWERS:
          name = f'{alphabet}/character{character:02d}/{alphabet_id:02d}{character:02d}_{drawer:02d}.png'
          archive.writestr(f'images_{split}/{name}', png_bytes(identity_drawing(alphabet_id, character, drawer)))


def make_config(manual_dir, tfds_data_dir, **overrides) -> ml_collections.ConfigDict:
  config = dict(name='omniglot', manual_dir=str(manual_dir), tfds_data_dir=str(tfds_data_dir), image_size=105,
                train_alphabets=('Alpha', 'Beta'), train_drawers=(1, 2, 3), validation_alphabets=('Gamma',),
                validation_drawers=(4, 5), test_alphabets=(), test_drawers=())
  config.update(overrides)
  return ml_collections.ConfigDict(config)


@pytest.fixture(scope='module')
def archives(tmp_path_factory):
  folder = tmp_path_factory.mktemp('omniglot_archives')
  write_archive(folder / 'images_background.zip', 'background', BACKGROUND)
  write_archive(folder / 'images_evaluation.zip', 'evaluation', EVALUATION)
  return folder


@pytest.fixture(scope='module')
def prepared(archives, tmp_path_factory):
  """A TFDS data dir with the synthetic dataset built once for the whole module."""
  tfds_dir = tmp_path_factory.mktemp('tfds')
  omniglot.load_drawings(make_config(archives, tfds_dir))
  return tfds_dir


def test_builder_keeps_alphabet_character_and_drawer(archives, prepared):
  builder = omniglot.OmniglotDrawers(data_dir=prepared)
  assert set(builder.info.splits) == {'background', 'evaluation'}
  records = list(builder.as_data_source('background'))  # TFDS's own decoding, no TensorFlow.
  assert len(records) == sum(BACKGROUND.values()) * len(DRAWERS)
  for record in records:
    alphabet, character = record['character'].decode().split('/')
    assert alphabet == record['alphabet'].decode()
    chex.assert_shape(record['image'], (105, 105, 1))
    assert set(np.unique(record['image'])) <= {0, 255}  # 1-bit sources stored so every decoder agrees.
    white = identity_drawing(ALPHABET_IDS[alphabet], int(character.removeprefix('character')), int(record['drawer']))
    np.testing.assert_array_equal(record['image'][..., 0], white.astype(np.uint8) * 255)


@pytest.mark.parametrize('mode', ['1', 'L'])
def test_decode_png_inverts_and_resizes(mode):
  white = identity_drawing(0, 3, 7)
  buffer = io.BytesIO()
  Image.fromarray(white).convert(mode).save(buffer, format='png')
  image = omniglot.decode_png(buffer.getvalue())
  chex.assert_shape(image, (105, 105, 1))
  assert image.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 0], np.where(white, 0, 255))
  small = omniglot.decode_png(buffer.getvalue(), 28)
  chex.assert_shape(small, (28, 28, 1))
  assert small[0, 0, 0] == 255 and small[-1, -1, 0] == 0  # Stroke corner stays bright, background dark.


def test_load_splits_selects_alphabets_and_drawers(archives, prepared):
  splits = omniglot.load_splits(make_config(archives, prepared, test_alphabets=('Alpha',), test_drawers=(6,)))
  expected = {'train': (BACKGROUND, {1, 2, 3}), 'validation': (EVALUATION, {4, 5}), 'test': ({'Alpha': 3}, {6})}
  assert set(splits) == set(expected)
  seen = set()
  for name, split in splits.items():
    alphabets, drawers = expected[name]
    chex.assert_shape(split.images, (sum(alphabets.values()) * len(drawers), 105, 105, 1))
    assert split.group_names == tuple(sorted(alphabets))
    assert split.num_classes == sum(alphabets.values())
    np.testing.assert_array_equal(np.unique(split.labels), np.arange(split.num_classes))
    assert 'images_background+images_evaluation' in split.source and '105px' in split.source
    for image, label, group in zip(split.images, split.labels, split.groups):
      alphabet_id, character, drawer = read_identity(image)
      alphabet = split.group_names[group]
      assert ALPHABET_IDS[alphabet] == alphabet_id and drawer in drawers
      assert split.class_names[label] == f'{alphabet}/character{character:02d}'
      assert (alphabet, character, drawer) not in seen  # No image in two splits.
      seen.add((alphabet, character, drawer))


def test_cached_decoding_matches_a_fresh_one(archives, prepared, tmp_path):
  cached = omniglot.load_drawings(make_config(archives, prepared))
  assert list(prepared.rglob('decoded_105px.npz'))
  fresh = omniglot.load_drawings(make_config(archives, tmp_path))
  chex.assert_trees_all_equal(dataclasses.astuple(cached), dataclasses.astuple(fresh))


def test_load_splits_resizes(archives, prepared):
  splits = omniglot.load_splits(make_config(archives, prepared, image_size=28))
  chex.assert_shape(splits['train'].images, (sum(BACKGROUND.values()) * 3, 28, 28, 1))
  assert '28px' in splits['train'].source


@pytest.mark.parametrize('overrides, message', [
    ({'validation_alphabets': ('Alpha', 'Gamma'), 'validation_drawers': (3, 4)}, 'share the images'),
    ({'validation_alphabets': ('Delta', 'Gamma')}, r"\['Delta'\] are not in"),
    ({'train_drawers': (0, 1)}, 'from 1 to 20'),
    ({'train_alphabets': 'Alpha'}, 'must be non-empty lists'),
    ({'validation_drawers': (7,)}, 'select no image'),
    ({'image_size': 0}, 'positive integer'),
])
def test_bad_split_configs_are_user_errors(archives, prepared, overrides, message):
  with pytest.raises(UserError, match=message):
    omniglot.load_splits(make_config(archives, prepared, **overrides))


def test_unknown_alphabet_lists_those_present(archives, prepared):
  with pytest.raises(UserError) as error:
    omniglot.load_splits(make_config(archives, prepared, train_alphabets=('Latin',)))
  assert 'Latin' in str(error.value) and 'Alpha, Beta, Gamma' in str(error.value)


def test_manual_dir_that_disagrees_with_the_prepared_copy_is_said(archives, prepared, tmp_path, caplog):
  """Once prepared, the manual folder is not read again: one line says which copy is used."""
  with caplog.at_level('INFO'):
    omniglot.load_drawings(make_config(tmp_path / 'mistyped', prepared))
  [warning] = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert f'{tmp_path}/mistyped holds none of images_background.zip, images_evaluation.zip: it is ignored, and ' \
         f'the copy prepared in {prepared}/' in warning
  copy = tmp_path / 'copy'
  copy.mkdir()
  for name in ('images_background.zip', 'images_evaluation.zip'):
    (copy / name).write_bytes((archives / name).read_bytes())  # the same archives, with a new time
  caplog.clear()
  omniglot.load_drawings(make_config(copy, prepared))
  assert not caplog.records
  write_archive(copy / 'images_background.zip', 'background', {'Alpha': 1})
  with pytest.raises(UserError, match=r'omniglot: the raw files in \S+/copy \(images_background.zip [\d,]+ bytes, '
                     r'images_evaluation.zip [\d,]+ bytes\) differ from those the copy prepared in \S+ was made from '
                     r'\(.*\); delete \S+ to prepare it again from them, or set data.manual_dir to '):
    omniglot.load_drawings(make_config(copy, prepared))


def test_concurrent_loads_sharing_a_data_folder_prepare_it_once(archives, tmp_path):
  """Concurrent loads of an unprepared dataset: one prepares it under the lock, the others wait and read it."""
  config = make_config(archives, tmp_path / 'tfds')
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    loaded = list(pool.map(lambda _: omniglot.load_drawings(config), range(3)))
  for drawings in loaded[1:]:
    chex.assert_trees_all_equal(dataclasses.asdict(drawings), dataclasses.asdict(loaded[0]))
  assert len(list((tmp_path / 'tfds').glob('**/dataset_info.json'))) == 1


def test_one_archive_builds_its_split_only(archives, tmp_path):
  (tmp_path / 'manual').mkdir()
  (tmp_path / 'manual' / 'images_evaluation.zip').write_bytes((archives / 'images_evaluation.zip').read_bytes())
  config = make_config(tmp_path / 'manual', tmp_path / 'tfds', train_alphabets=('Gamma',), train_drawers=(1,))
  splits = omniglot.load_splits(config)
  assert splits['train'].group_names == ('Gamma',)
  assert set(omniglot.OmniglotDrawers(data_dir=tmp_path / 'tfds').info.splits) == {'evaluation'}


def test_missing_archives_offline_is_one_user_error(tmp_path, monkeypatch):
  unreachable = {split: f'http://127.0.0.1:9/images_{split}.zip' for split in omniglot.SPLITS}
  monkeypatch.setattr(omniglot, '_URLS', unreachable)
  (tmp_path / 'empty').mkdir()
  for folder in ('empty', 'missing'):
    with pytest.raises(UserError, match='put images_background.zip and/or images_evaluation.zip in'):
      omniglot.load_drawings(make_config(tmp_path / folder, tmp_path / 'tfds'))


def zip_holding_bad_png() -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    archive.writestr('images_background/A/character01/0101_01.png', b'no png')
  return buffer.getvalue()


@pytest.mark.parametrize('corrupt, message', [
    (lambda original: b'not a zip', 'cannot read Omniglot archive'),
    (lambda original: original[:-100], 'cannot read Omniglot archive'),
    (lambda original: zip_holding_bad_png(), 'cannot decode images_background/A/character01/0101_01.png'),
])
def test_corrupt_archive_is_a_user_error(archives, tmp_path, corrupt, message):
  original = (archives / 'images_background.zip').read_bytes()
  (tmp_path / 'images_background.zip').write_bytes(corrupt(original))
  with pytest.raises(UserError, match=message):
    omniglot.load_drawings(make_config(tmp_path, tmp_path / 'tfds'))


def test_real_omniglot_counts(tfds_dir):
  """The shipped archives: 964 background characters in 30 alphabets, 20 drawers each.

  Builds and decodes the real dataset: 10-15 s on 2 CPU cores.
  """
  config = make_config(data_dir('omniglot'), tfds_dir, image_size=28,
                       train_alphabets=omniglot.BACKGROUND_ALPHABETS, train_drawers=tuple(range(1, 13)),
                       validation_alphabets=omniglot.OPEN_EVALUATION_ALPHABETS, validation_drawers=(13, 14, 15, 16))
  drawings = omniglot.load_drawings(config)
  background = drawings.where(omniglot.BACKGROUND_ALPHABETS, range(1, 21))
  assert len(set(background.characters.tolist())) == 964
  assert len(background.images) == 964 * 20
  np.testing.assert_array_equal(np.unique(drawings.drawers), np.arange(1, 21))
  assert sorted(set(drawings.alphabets.tolist())) == sorted(omniglot.BACKGROUND_ALPHABETS +
                                                            omniglot.OPEN_EVALUATION_ALPHABETS)
  assert 0 < drawings.images.mean() < 64  # Inverted: mostly dark background, bright strokes.
  splits = omniglot.load_splits(config)
  assert (len(splits['train']), splits['train'].num_classes) == (964 * 12, 964)
  assert (len(splits['validation']), splits['validation'].num_classes) == (277 * 4, 277)


def test_square_around_ink_centres_the_drawing_and_fills_the_rest():
  pixels = np.zeros((60, 80), np.uint8)
  pixels[10:30, 50:60] = 255  # ink 20 tall, 10 wide, near the right edge
  square = np.asarray(image_files.square_around_ink(Image.fromarray(pixels), background=0))
  side = round(20 * (1 + 2 * image_files.INK_MARGIN))
  chex.assert_shape(square, (side, side))
  rows, cols = np.flatnonzero(square.any(axis=1)), np.flatnonzero(square.any(axis=0))
  assert (rows[0], rows[-1] + 1) == ((side - 20) // 2, (side - 20) // 2 + 20)  # the ink's full height, centred
  assert cols[-1] + 1 - cols[0] == 10 and abs(cols[0] + cols[-1] + 1 - side) <= 1  # aspect ratio kept
  assert square.sum() == pixels.sum()  # nothing of the ink cut off, the rest background
  white = Image.fromarray(255 - pixels)
  np.testing.assert_array_equal(np.asarray(image_files.square_around_ink(white, background=255)), 255 - square)
  blank = Image.new('L', (7, 5))
  assert image_files.square_around_ink(blank, background=0) is blank


def test_decode_png_crops_to_ink_before_resizing():
  white = np.ones((105, 105), bool)
  white[40:60, 45:55] = False  # a small stroke in the middle of the page
  whole = omniglot.decode_png(png_bytes(white), 32)
  cropped = omniglot.decode_png(png_bytes(white), 32, crop_to_ink=True)
  chex.assert_shape(cropped, (32, 32, 1))
  assert (whole > 127).sum() < 40 < (cropped > 127).sum()  # the stroke now fills the input's height
  assert (cropped[:, :, 0] > 127).any(axis=1).sum() >= 30


def test_crop_to_ink_is_read_from_the_config(archives, prepared):
  form = omniglot.input_form(make_config(archives, prepared, image_size=32, crop_to_ink=True))
  assert form.crop_to_ink and form.size == 32
  drawings = omniglot.load_drawings(make_config(archives, prepared, image_size=32, crop_to_ink=True))
  assert 'cut around the ink' in drawings.source
  index = 0
  raw = omniglot.load_drawings(make_config(archives, prepared))
  np.testing.assert_array_equal(drawings.images[index], omniglot.decode_png(
      png_bytes(raw.images[index, ..., 0] == 0), 32, crop_to_ink=True))
  with pytest.raises(UserError, match='data.crop_to_ink must be True or False'):
    omniglot.load_drawings(make_config(archives, prepared, crop_to_ink='yes'))
