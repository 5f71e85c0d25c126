"""Lake's one-shot run format: drawing runs, writing them, and reading them back."""

import zipfile

import chex
import numpy as np
import lake_format
import pytest
from PIL import Image

from siamese_jax import lake_runs
from siamese_jax.datasets import omniglot
from siamese_jax.datasets.omniglot import Drawings
from siamese_jax.errors import UserError

SIZE = 32
# Alphabet -> number of characters; 'Small' has too few for a 20-way run.
ALPHABETS = {'Big': 25, 'Exact': 20, 'Small': 5}
DRAWERS = (1, 2, 3, 4)


def synthetic_drawings() -> Drawings:
  """Every (alphabet, character, drawer), each image spelling its own index in binary on row 0."""
  keys = [(alphabet, f'{alphabet}/character{c:02d}', drawer)
          for alphabet, count in ALPHABETS.items() for c in range(1, count + 1) for drawer in DRAWERS]
  images = np.zeros((len(keys), SIZE, SIZE, 1), np.uint8)
  bits = (np.arange(len(keys))[:, None] >> np.arange(SIZE)) & 1
  images[:, 0, :, 0] = bits * 255
  images[:, SIZE // 2:, SIZE // 2, 0] = 255  # A stroke, so no image is blank.
  alphabets, characters, drawers = zip(*keys)
  return Drawings(images=images, alphabets=np.array(alphabets), characters=np.array(characters),
                  drawers=np.array(drawers, np.int32), source='synthetic')


def identities(drawings: Drawings, images: np.ndarray) -> list[tuple[str, str, int]]:
  """(alphabet, character, drawer) of each image, read back from its pixels."""
  indices = ((images[:, 0, :, 0] == 255) << np.arange(SIZE)).sum(axis=1)
  return [(drawings.alphabets[i], drawings.characters[i], int(drawings.drawers[i])) for i in indices]


@pytest.fixture(scope='module')
def drawings():
  return synthetic_drawings()


@pytest.fixture(scope='module')
def runs(drawings):
  return lake_runs.make_runs(drawings, num_runs=6, ways=20, seed=3)


def test_make_runs_follows_lakes_recipe(drawings, runs):
  used_alphabets = []
  for run in runs:
    chex.assert_shape([run.support, run.queries], (20, SIZE, SIZE, 1))
    support, queries = identities(drawings, run.support), identities(drawings, run.queries)
    alphabets = {alphabet for alphabet, _, _ in support + queries}
    support_drawers = {drawer for _, _, drawer in support}
    query_drawers = {drawer for _, _, drawer in queries}
    assert len(alphabets) == 1
    assert len(support_drawers) == len(query_drawers) == 1 and support_drawers != query_drawers
    assert len({character for _, character, _ in support}) == 20
    for query, answer in zip(queries, run.answers):
      assert support[answer][1] == query[1]
    np.testing.assert_array_equal(np.sort(run.answers), np.arange(20))
    used_alphabets += alphabets
  assert sorted(used_alphabets) == ['Big'] * 3 + ['Exact'] * 3  # Too-small alphabets skipped, others even.
  assert [run.name for run in runs] == [f'run{i:02d}' for i in range(1, 7)]


def test_make_runs_is_seeded(drawings, runs):
  again = lake_runs.make_runs(drawings, num_runs=6, ways=20, seed=3)
  other = lake_runs.make_runs(drawings, num_runs=6, ways=20, seed=4)
  chex.assert_trees_all_equal([(r.support, r.queries, r.answers) for r in runs],
                              [(r.support, r.queries, r.answers) for r in again])
  assert not all(np.array_equal(a.support, b.support) for a, b in zip(runs, other))


def test_make_runs_needs_enough_characters_and_drawers(drawings):
  with pytest.raises(UserError, match='at most 25 characters'):
    lake_runs.make_runs(drawings, ways=30)
  with pytest.raises(UserError, match='1 drawers'):
    lake_runs.make_runs(drawings.where(['Big'], [2]), ways=5)


def test_write_then_read_round_trip(runs, tmp_path):
  lake_format.write_runs(tmp_path / 'runs', runs)
  written = Image.open(tmp_path / 'runs' / 'run01' / 'training' / 'class01.png')
  assert written.mode == '1' and written.getpixel((SIZE - 1, SIZE - 1))  # Black strokes on white.
  first_line = (tmp_path / 'runs' / 'run01' / 'class_labels.txt').read_text().splitlines()[0]
  assert first_line == f'run01/test/item01.png run01/training/class{runs[0].answers[0] + 1:02d}.png'
  read = lake_runs.read_runs(tmp_path / 'runs', image_size=SIZE)
  assert [run.name for run in read] == [run.name for run in runs]
  chex.assert_trees_all_equal([(r.support, r.queries, r.answers) for r in read],
                              [(r.support, r.queries, r.answers) for r in runs])


@pytest.mark.parametrize('top_folder', ['', 'all_runs/'])
def test_read_runs_from_zip(runs, tmp_path, top_folder):
  lake_format.write_runs(tmp_path / 'runs', runs[:2])
  with zipfile.ZipFile(tmp_path / 'all_runs.zip', 'w') as archive:
    for path in sorted((tmp_path / 'runs').rglob('*')):
      archive.write(path, top_folder + path.relative_to(tmp_path / 'runs').as_posix())
  read = lake_runs.read_runs(tmp_path / 'all_runs.zip', image_size=SIZE)
  chex.assert_trees_all_equal([(r.support, r.queries, r.answers) for r in read],
                              [(r.support, r.queries, r.answers) for r in runs[:2]])


def test_read_runs_resizes(runs, tmp_path):
  lake_format.write_runs(tmp_path, runs[:1])
  (run,) = lake_runs.read_runs(tmp_path, image_size=16)
  chex.assert_shape([run.support, run.queries], (20, 16, 16, 1))
  assert run.support.dtype == np.uint8 and run.support.max() > 0


def break_labels_line(run_dir):
  labels = run_dir / 'class_labels.txt'
  labels.write_text(labels.read_text().replace('run01/training/', 'run01/train/', 1))


def name_missing_image(run_dir):
  labels = run_dir / 'class_labels.txt'
  labels.write_text(labels.read_text().replace('item01.png', 'item99.png', 1))


def drop_an_answer(run_dir):
  labels = run_dir / 'class_labels.txt'
  labels.write_text(''.join(labels.read_text().splitlines(keepends=True)[1:]))


def corrupt_image(run_dir):
  (run_dir / 'test' / 'item03.png').write_bytes(b'not a png')


@pytest.mark.parametrize('damage, message', [
    (break_labels_line, 'class_labels.txt line 1 is not'),
    (name_missing_image, r'names run01/test/item99.png, which is missing'),
    (drop_an_answer, r"no match for \['run01/test/item01.png'\]"),
    (corrupt_image, 'cannot decode run01/test/item03.png'),
])
def test_damaged_runs_are_user_errors(runs, tmp_path, damage, message):
  lake_format.write_runs(tmp_path, runs[:1])
  damage(tmp_path / 'run01')
  with pytest.raises(UserError, match=message):
    lake_runs.read_runs(tmp_path, image_size=SIZE)


def test_missing_or_wrong_paths_are_user_errors(tmp_path):
  with pytest.raises(UserError, match='not found'):
    lake_runs.read_runs(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='no runNN/class_labels.txt'):
    lake_runs.read_runs(tmp_path)
  (tmp_path / 'all_runs.zip').write_text('not a zip')
  with pytest.raises(UserError, match='cannot read one-shot runs archive'):
    lake_runs.read_runs(tmp_path / 'all_runs.zip')


def test_read_runs_crops_to_ink_as_the_dataset_does(runs, tmp_path):
  lake_format.write_runs(tmp_path, runs[:1])
  (run,) = lake_runs.read_runs(tmp_path, image_size=16, crop_to_ink=True)
  first = (tmp_path / 'run01' / 'training' / 'class01.png').read_bytes()
  np.testing.assert_array_equal(run.support[0], omniglot.decode_png(first, 16, crop_to_ink=True))
  assert not np.array_equal(run.support[0], omniglot.decode_png(first, 16))
