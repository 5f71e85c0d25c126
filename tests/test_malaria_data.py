"""Malaria cells: the real 50px grayscale copy, a synthetic archive in the original layout, and the patient split."""

import io
import os
import shutil
import zipfile

import chex
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import data_dir
from siamese_jax import datasets
from siamese_jax.datasets import malaria
from siamese_jax.errors import UserError

# Synthetic original-layout archive: patient -> (parasitized cells, uninfected cells).
PATIENTS = {'C40P1ThinF': (3, 2), 'C41P2thinF_original': (2, 3), 'C42P3N_ThinF': (4, 1), 'C43P4ThinF': (1, 1),
            'C1_thinF': (0, 3), 'C2NThinF': (0, 2), 'C3ThinF': (0, 2), 'C204ThinF': (0, 1)}


def make_config(manual_dir, tfds_data_dir, **overrides) -> ml_collections.ConfigDict:
  config = dict(name='malaria', manual_dir=str(manual_dir) if manual_dir else '', tfds_data_dir=str(tfds_data_dir),
                image_size=50, channels=1, validation_fraction=0.1, test_fraction=0.2, split_seed=0)
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def png_bytes(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='png')
  return buffer.getvalue()


def synthetic_cell(rng: np.random.Generator, parasitized: bool) -> np.ndarray:
  """An RGB cell of original-like size: a pink disc on black, with a dark purple spot when parasitized."""
  height, width = rng.integers(100, 200, size=2)
  y, x = np.mgrid[:height, :width]
  cell = np.zeros((height, width, 3), np.uint8)
  cell[(y - height / 2) ** 2 + (x - width / 2) ** 2 < (min(height, width) / 2 - 4) ** 2] = (220, 150, 170)
  if parasitized:
    cell[height // 2 - 6:height // 2 + 6, width // 2 - 6:width // 2 + 6] = (90, 30, 120)
  return cell


def write_original_archive(path) -> int:
  """The original release's layout, Thumbs.db files and macOS resource forks included; returns the cell count."""
  rng = np.random.default_rng(0)
  count = 0
  with zipfile.ZipFile(path, 'w') as archive:
    for folder, parasitized in (('Parasitized', True), ('Uninfected', False)):
      archive.writestr(f'cell_images/{folder}/Thumbs.db', b'\x00junk')
      for prefix, counts in PATIENTS.items():
        for cell in range(counts[0 if parasitized else 1]):
          name = f'cell_images/{folder}/{prefix}_IMG_20150604_10494{cell}_cell_{cell}.png'
          archive.writestr(name, png_bytes(synthetic_cell(rng, parasitized)))
          archive.writestr(f'__MACOSX/cell_images/{folder}/._{os.path.basename(name)}', b'\x00resource fork')
          count += 1
  return count


@pytest.fixture(scope='module')
def real(tfds_dir):
  """The real cells, decoded once into a module-wide cache (the later loads read the cache)."""
  config = make_config(data_dir('malaria'), tfds_dir)
  cells, patients = malaria.read_cells(config)
  return config, cells, patients


@pytest.fixture(scope='module')
def original(tmp_path_factory):
  folder = tmp_path_factory.mktemp('original')
  count = write_original_archive(folder / malaria.ORIGINAL)
  return folder, count


@pytest.fixture
def no_env(monkeypatch):
  monkeypatch.delenv(datasets.DATA_ENV, raising=False)


def test_real_counts_shapes_background_and_source(real):
  _, cells, patients = real
  assert len(cells) == 27558 and np.bincount(cells.labels).tolist() == [13779, 13779]
  chex.assert_shape(cells.images, (27558, 50, 50, 1))
  assert cells.images.dtype == np.uint8 and cells.labels.dtype == np.int32
  assert cells.class_names == ('Parasitized', 'Uninfected')
  assert (cells.images[:, :3, :3] == 0).mean() > 0.98  # Segmented cells on a black background.
  assert cells.images[:, 20:30, 20:30].mean() > 100
  assert 'third-party copy downscaled to 50x50 grayscale' in cells.source
  assert patients.shape == (27558,)


def test_real_patients_match_the_paper(real):
  _, cells, patients = real
  infected = set(patients[cells.labels == 0].tolist())
  assert len(set(patients.tolist())) == 200 and len(infected) == 150  # Rajaraman et al.: 150 infected, 50 healthy.


@pytest.mark.parametrize('name, patient', [
    ('C123P84ThinF_IMG_20151002_150931_cell_161.png', 'C123'),
    ('cell_images/Parasitized/C39P4thinF_original_IMG_20150622_110115_cell_116.png', 'C39'),
    ('C37BP2_thinF_IMG_20150620_133111a_cell_87.png', 'C37'),
    ('C1_thinF_IMG_20150604_104942_cell_168.png', 'C1'),
    ('C231ThinF_IMG_20151112_153041_cell_32.png', 'C231'),
])
def test_patient_of_reads_the_slide_id(name, patient):
  assert malaria.patient_of(name) == patient


def test_patient_of_unknown_name_is_a_user_error():
  with pytest.raises(UserError, match='cannot tell the patient'):
    malaria.patient_of('cell_images/Parasitized/IMG_001.png')


def test_real_split_puts_each_patient_in_one_split(real):
  config, cells, patients = real
  masks = malaria.split_by_patient(patients, cells.labels, 0.1, 0.2, seed=0)
  chex.assert_trees_all_equal(sum(mask.astype(int) for mask in masks.values()), np.ones(len(cells), int))
  members = {name: set(patients[mask].tolist()) for name, mask in masks.items()}
  assert not members['train'] & members['validation'] and not members['train'] & members['test']
  assert not members['validation'] & members['test']
  assert [len(members[name]) for name in malaria.SPLITS] == [140, 20, 40]  # Per kind: 105/15/30 and 35/5/10.
  for mask in masks.values():
    assert set(cells.labels[mask].tolist()) == {0, 1}
  again = malaria.split_by_patient(patients, cells.labels, 0.1, 0.2, seed=0)
  other = malaria.split_by_patient(patients, cells.labels, 0.1, 0.2, seed=1)
  chex.assert_trees_all_equal(masks, again)
  assert not np.array_equal(masks['test'], other['test'])


def test_real_load_splits_reads_the_cache(real, monkeypatch):
  config, cells, _ = real

  def decode_again(*_):
    raise AssertionError('the cells were decoded again instead of read from the cache')

  monkeypatch.setattr(malaria, '_read_prepared', decode_again)
  splits = datasets.load_splits(config)
  assert sum(len(split) for split in splits.values()) == 27558
  assert sum(np.bincount(split.labels) for split in splits.values()).tolist() == [13779, 13779]
  cached, _ = malaria.read_cells(config)
  chex.assert_trees_all_equal(cached.images, cells.images)


def test_gray_copy_has_no_colour(real):
  config, _, _ = real
  with pytest.raises(UserError, match='grayscale: set data.channels=1'):
    malaria.read_cells(make_config(config.manual_dir, config.tfds_data_dir, channels=3))


def test_original_layout_rgb_resized_and_junk_skipped(original, tmp_path):
  folder, count = original
  cells, patients = malaria.read_cells(make_config(folder, tmp_path, channels=3, image_size=32))
  chex.assert_shape(cells.images, (count, 32, 32, 3))
  assert np.bincount(cells.labels).tolist() == np.sum(list(PATIENTS.values()), axis=0).tolist()
  assert sorted(set(patients.tolist())) == sorted(malaria.patient_of(prefix) for prefix in PATIENTS)
  assert cells.source.startswith('NIH malaria cells, original RGB release (cell_images.zip), as 32x32 RGB')
  assert (cells.images[:, 0, 0] == 0).all()  # Black corners stay background.
  centre = cells.images[:, 16, 16].astype(int)
  assert (centre[cells.labels == 0, 2] > centre[cells.labels == 0, 0]).all()  # Purple parasite in the middle.
  assert (centre[cells.labels == 1, 0] > centre[cells.labels == 1, 2]).all()  # Pink cytoplasm.


def test_original_layout_to_grayscale(original, tmp_path):
  folder, count = original
  cells, _ = malaria.read_cells(make_config(folder, tmp_path, channels=1, image_size=40))
  chex.assert_shape(cells.images, (count, 40, 40, 1))
  luma = round(0.299 * 220 + 0.587 * 150 + 0.114 * 170)  # PIL's RGB -> L of the uninfected cytoplasm.
  assert np.abs(cells.images[cells.labels == 1][:, 20, 20, 0].astype(int) - luma).max() <= 1
  assert cells.source.endswith('as 40x40 grayscale')


def test_original_is_preferred_over_the_gray_copy(original, tmp_path):
  folder, _ = original
  both = tmp_path / 'both'
  both.mkdir()
  os.symlink(folder / malaria.ORIGINAL, both / malaria.ORIGINAL)
  with zipfile.ZipFile(both / malaria.GRAY_50PX, 'w'):
    pass
  cells, _ = malaria.read_cells(make_config(both, tmp_path))
  assert 'original RGB release' in cells.source


def test_split_of_synthetic_patients(original, tmp_path):
  folder, _ = original
  config = make_config(folder, tmp_path, validation_fraction=0.25, test_fraction=0.25, split_seed=3)
  splits = malaria.load_splits(config)
  cells, patients = malaria.read_cells(config)
  masks = malaria.split_by_patient(patients, cells.labels, 0.25, 0.25, seed=3)
  assert {name: len(split) for name, split in splits.items()} == {name: int(m.sum()) for name, m in masks.items()}
  members = [set(patients[mask].tolist()) for mask in masks.values()]
  assert [len(m) for m in members] == [4, 2, 2] and len(set.union(*members)) == len(PATIENTS)


def test_prepared_once_as_a_tfds_dataset_then_read_without_decoding_the_archive(original, tmp_path, monkeypatch):
  folder, count = original
  config = make_config(folder, tmp_path, channels=3, image_size=32)
  first, patients = malaria.read_cells(config)
  builder = tfds.builder_from_directory(str(tmp_path / 'malaria_cells' / 'original' / '1.0.0'))
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {'train': count}
  assert builder.info.features['label'].names == list(malaria.CLASS_NAMES)

  def archive_read_again(*args, **kwargs):
    raise AssertionError('the archive was read and decoded again')

  monkeypatch.setattr(malaria.MalariaCells, '_split_generators', archive_read_again)
  chex.assert_trees_all_equal(malaria.read_cells(config)[0].images, first.images)  # The decoded cache.
  shutil.rmtree(tmp_path / 'siamese_jax' / 'malaria' / 'cache')
  again, again_patients = malaria.read_cells(config)  # From the prepared dataset, in the same order.
  chex.assert_trees_all_equal((again.images, again.labels, again_patients), (first.images, first.labels, patients))
  gray, _ = malaria.read_cells(make_config(folder, tmp_path, channels=1, image_size=40))
  chex.assert_shape(gray.images, (count, 40, 40, 1))
  chex.assert_trees_all_equal(gray.labels, first.labels)


def test_a_replaced_archive_is_prepared_again(tmp_path):
  folder = tmp_path / 'raw'
  folder.mkdir()
  count = write_original_archive(folder / malaria.ORIGINAL)
  config = make_config(folder, tmp_path / 'tfds', channels=3)
  assert len(malaria.read_cells(config)[0]) == count
  with zipfile.ZipFile(folder / malaria.ORIGINAL, 'a') as archive:
    archive.writestr('cell_images/Uninfected/C7ThinF_IMG_1_cell_1.png', png_bytes(np.zeros((120, 130, 3), np.uint8)))
  cells, patients = malaria.read_cells(config)
  assert len(cells) == count + 1 and 'C7' in patients.tolist()


def test_downloads_the_original_when_no_folder_is_configured(original, tmp_path, monkeypatch, no_env):
  folder, count = original
  monkeypatch.setattr(malaria, 'URL', (folder / malaria.ORIGINAL).as_uri())
  cells, _ = malaria.read_cells(make_config(None, tmp_path, channels=3))
  assert len(cells) == count
  assert os.path.isfile(tmp_path / 'siamese_jax' / 'malaria' / malaria.ORIGINAL)


def test_offline_without_folder_is_one_user_error(tmp_path, monkeypatch, no_env):
  monkeypatch.setattr(malaria, 'URL', (tmp_path / 'gone.zip').as_uri())
  with pytest.raises(UserError, match='downloading .* failed'):
    malaria.read_cells(make_config(None, tmp_path))


def test_missing_archive_names_both_copies(tmp_path):
  with pytest.raises(UserError, match=f'cell_images.zip or cell_images_50px_gray.zip not found in {tmp_path}'):
    malaria.read_cells(make_config(tmp_path, tmp_path))


@pytest.mark.parametrize('members, message', [
    (None, 'cannot read'),  # Not a zip at all.
    ({'cell_images/Parasitized/C40P1ThinF_IMG_1_cell_1.png': b'\x89PNG broken'}, 'cannot decode'),
    ({'cell_images/Thumbs.db': b'x', 'readme.txt': b'x'}, 'holds no cell image'),
    ({'cell_images/Uninfected/IMG_1_cell_1.png': png_bytes(np.zeros((9, 9), np.uint8))}, 'cannot tell the patient'),
])
def test_bad_archives_are_user_errors(tmp_path, members, message):
  path = tmp_path / malaria.GRAY_50PX
  if members is None:
    path.write_bytes(b'PK not a zip')
  else:
    with zipfile.ZipFile(path, 'w') as archive:
      for name, data in members.items():
        archive.writestr(name, data)
  with pytest.raises(UserError, match=message) as error:
    malaria.read_cells(make_config(tmp_path, tmp_path))
  assert type(error.value) is UserError  # Raised by the builder, and passed on by TFDS as it was.
  assert not list(tmp_path.glob('malaria_cells/gray_50px/*'))  # Nothing prepared, not even partly.


@pytest.mark.parametrize('overrides', [
    dict(channels=2), dict(image_size=0), dict(split_seed=-1), dict(validation_fraction=0),
    dict(test_fraction=0.6, validation_fraction=0.4), dict(test_fraction='0.2'),
])
def test_bad_settings_are_user_errors(original, tmp_path, overrides):
  folder, _ = original
  with pytest.raises(UserError, match='data.'):
    malaria.load_splits(make_config(folder, tmp_path, **{'channels': 3, **overrides}))


def test_too_few_patients_to_split(original, tmp_path):
  folder, _ = original
  with pytest.raises(UserError, match='too few to split by patient'):
    malaria.load_splits(make_config(folder, tmp_path, validation_fraction=0.4, test_fraction=0.4))
