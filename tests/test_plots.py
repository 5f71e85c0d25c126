"""Tests for siamese_jax.plots: every picture is a real, non-blank PNG and bad input fails clearly."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, data_dir
from PIL import Image

from siamese_jax import plots


def _read_png(path, min_size=(200, 150)) -> np.ndarray:
  """Opens `path` as a PNG, checks it is big enough and not blank, and returns its RGB pixels."""
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.mode == 'RGBA'
    assert image.width >= min_size[0] and image.height >= min_size[1], image.size
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.var() > 0, 'image is blank'
  return pixels


def _pixels_of(pixels, color, tolerance=10) -> int:
  """How many pixels of an RGB image are within `tolerance` of the colour '#rrggbb' in every channel."""
  rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
  return int(np.all(np.abs(pixels.astype(int) - rgb) <= tolerance, axis=-1).sum())


def _random_pairs(n, shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  a, b = (rng.integers(0, 256, (n, *shape), dtype=np.uint8) for _ in range(2))
  if dtype == np.float32:
    return a.astype(np.float32) / 255, b.astype(np.float32) / 255
  return a, b


@pytest.fixture(scope='module')
def mnist_pairs():
  """Twenty pairs of real MNIST test digits, labelled 1 where the two digits match."""
  with gzip.open(data_dir('mnist') / 't10k-images-idx3-ubyte.gz') as f:
    f.read(16)
    images = np.frombuffer(f.read(40 * 28 * 28), np.uint8).reshape(40, 28, 28, 1)
  with gzip.open(data_dir('mnist') / 't10k-labels-idx1-ubyte.gz') as f:
    f.read(8)
    digits = np.frombuffer(f.read(40), np.uint8)
  return images[:20], images[20:], (digits[:20] == digits[20:]).astype(np.int32)


def test_pair_montage_of_real_digits_leaves_unused_cells_blank(tmp_path, mnist_pairs):
  a, b, labels = mnist_pairs
  scores = np.linspace(0, 1, 10)
  path = plots.pair_montage(tmp_path / 'montage.png', a[:10], b[:10], labels[:10], scores,
                            rows=4, cols=5, title='MNIST pairs')
  assert path == tmp_path / 'montage.png'
  pixels = _read_png(path, min_size=(500, 300))
  # Ten pairs fill the top two of four rows; the bottom rows stay white.
  assert np.all(pixels[-pixels.shape[0] // 3:] == 255)
  assert pixels[: pixels.shape[0] // 2].var() > 0


def test_pair_montage_shows_only_the_first_rows_times_cols(tmp_path, mnist_pairs):
  a, b, labels = mnist_pairs
  all_pairs = _read_png(plots.pair_montage(tmp_path / 'all.png', a, b, labels, rows=2, cols=2))
  first = _read_png(plots.pair_montage(tmp_path / 'first.png', a[:4], b[:4], labels[:4], rows=2, cols=2))
  np.testing.assert_array_equal(all_pairs, first)


@pytest.mark.parametrize('channels', [1, 3])
def test_pair_montage_float_in_unit_range_matches_uint8(tmp_path, channels):
  a, b = _random_pairs(3, (8, 8, channels), np.uint8)
  labels = np.array([1, 0, 1])
  as_uint8 = _read_png(plots.pair_montage(tmp_path / 'u.png', a, b, labels, rows=2, cols=2))
  as_float = _read_png(plots.pair_montage(tmp_path / 'f.png', a / 255, b / 255, labels, rows=2, cols=2))
  as_255 = _read_png(plots.pair_montage(tmp_path / 'g.png', a * 1.0, b * 1.0, labels, rows=2, cols=2))
  np.testing.assert_array_equal(as_uint8, as_float)
  np.testing.assert_array_equal(as_uint8, as_255)


def test_pair_montage_keeps_colour_and_shows_standardised_floats(tmp_path):
  blue = np.full((2, 6, 6, 3), -1.0, np.float32)  # Standardised input: out of [0, 1], still shown.
  blue[:, 3:, :, 2] = 3.0
  pixels = _read_png(plots.pair_montage(tmp_path / 'rgb.png', blue, blue, [1, 0], [0.9, 0.1], rows=1, cols=2),
                     min_size=(150, 100))
  is_blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 60) & (pixels[..., 1] < 60)
  assert is_blue.sum() > 100


def test_pair_montage_gray_is_drawn_in_gray(tmp_path):
  a, b = _random_pairs(2, (10, 10, 1), np.uint8)
  pixels = _read_png(plots.pair_montage(tmp_path / 'gray.png', a, b, [1, 1], rows=1, cols=2),
                     min_size=(150, 100)).astype(int)
  # Only the pos labels are coloured; the images themselves must be gray (R == G == B).
  gray = (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
  assert gray.mean() > 0.95
  assert len(np.unique(pixels[gray][:, 0])) > 50


@pytest.mark.parametrize(
    'a_shape, b_shape, labels, scores, dtype, match',
    [
        ((2, 8, 8), (2, 8, 8), [0, 1], None, np.uint8, r'images_a must be \[N, H, W, C\] with C in \{1, 3\}'),
        ((2, 8, 8, 2), (2, 8, 8, 2), [0, 1], None, np.uint8, r'C in \{1, 3\}, got shape \(2, 8, 8, 2\)'),
        ((2, 8, 8, 1), (2, 8, 9, 1), [0, 1], None, np.uint8, 'must have the same shape'),
        ((2, 8, 8, 1), (2, 8, 8, 1), [0, 1, 1], None, np.uint8, r'labels must be \[2\], one per pair'),
        ((2, 8, 8, 1), (2, 8, 8, 1), [0, 2], None, np.uint8, r'0 \(different\) or 1 \(same\), got values \[0 2\]'),
        ((2, 8, 8, 1), (2, 8, 8, 1), [0, 1], [0.5], np.uint8, r'scores must be \[2\]'),
        ((2, 8, 8, 1), (2, 8, 8, 1), [0, 1], None, np.int16, 'must be uint8 or float, got int16'),
        ((0, 8, 8, 1), (0, 8, 8, 1), [], None, np.uint8, 'at least one pair'),
    ])
def test_pair_montage_rejects_bad_input(tmp_path, a_shape, b_shape, labels, scores, dtype, match):
  with pytest.raises(ValueError, match=match):
    plots.pair_montage(tmp_path / 'bad.png', np.zeros(a_shape, dtype), np.zeros(b_shape, dtype), labels, scores)
  assert not (tmp_path / 'bad.png').exists()


def test_pair_montage_rejects_non_finite_floats(tmp_path):
  a = np.full((1, 4, 4, 1), np.nan, np.float32)
  with pytest.raises(ValueError, match='NaN or infinite'):
    plots.pair_montage(tmp_path / 'nan.png', a, a, [1])


@pytest.mark.parametrize('label', [None, 0, 1])
def test_comparison_of_different_sizes_and_channels(tmp_path, mnist_pairs, label):
  a = mnist_pairs[0][0]
  b = np.random.default_rng(0).random((40, 30, 3), np.float32)
  path = plots.comparison(tmp_path / 'deep' / 'er' / 'pair.png', a, b, 0.42, label=label, title='Compare')
  assert path.parent.name == 'er'
  pixels = _read_png(path, min_size=(500, 300))
  # The caption is in the true relation's colour (green for same, red for different), black without one.
  same, different = _pixels_of(pixels, plots._POS_COLOR), _pixels_of(pixels, plots._NEG_COLOR)
  assert (same > 100, different > 100) == (label == 1, label == 0), (same, different)
  # The similarity is printed in the caption, below the images: another score changes only that strip.
  other = _read_png(plots.comparison(tmp_path / 'other.png', a, b, 0.87, label=label, title='Compare'))
  rows = np.flatnonzero(np.any(pixels != other, axis=(1, 2)))
  assert len(rows) and rows.min() > 0.85 * pixels.shape[0], rows


@pytest.mark.parametrize(
    'image, label, match',
    [(np.zeros((8, 8), np.uint8), None, r'image_a must be \[H, W, C\]'),
     (np.zeros((8, 8, 1), np.uint8), 2, 'label must be 0')])
def test_comparison_rejects_bad_input(tmp_path, image, label, match):
  with pytest.raises(ValueError, match=match):
    plots.comparison(tmp_path / 'bad.png', image, np.zeros((8, 8, 1), np.uint8), 0.5, label=label)


def test_learning_curve_from_partial_history(tmp_path):
  history = [{'step': s, 'train_loss': 1 / (s + 1), 'train_accuracy': 1 - 0.5 / (s + 1)} for s in range(0, 200, 10)]
  history += [{'step': s, 'validation_accuracy': 0.8, 'validation_loss': None} for s in range(0, 200, 50)]
  history += [{'step': 205, 'learning_rate': 1e-3}]
  both = _read_png(plots.learning_curve(tmp_path / 'both.png', history), min_size=(600, 500))
  accuracy_only = [{k: v for k, v in entry.items() if not k.endswith('loss')} for entry in history]
  one = _read_png(plots.learning_curve(tmp_path / 'one.png', accuracy_only, title='Accuracy'),
                  min_size=(600, 300))
  assert both.shape[0] > one.shape[0] * 1.5  # A second panel for the losses.


def test_training_minutes_axis_continues_past_the_first_and_last_validation():
  """The top axis spans a little more than the validations: ticks past them must not pile up on their ends."""
  steps, minutes = np.array([440., 880., 2200.]), np.array([2.8, 5.6, 14.2])
  to_minutes, to_steps = plots._linear_through(steps, minutes), plots._linear_through(minutes, steps)
  np.testing.assert_allclose(to_minutes(steps), minutes)
  np.testing.assert_allclose(to_minutes([660., 2310.]), [4.2, 14.2 + 110 * 8.6 / 1320])
  np.testing.assert_allclose(to_minutes(330.), 2.8 - 110 * 2.8 / 440)
  x = np.linspace(300, 2400, 8)
  np.testing.assert_allclose(to_steps(to_minutes(x)), x)


@pytest.mark.parametrize(
    'history, match',
    [([], 'history is empty'),
     ([{'step': 0, 'train_loss': 1.0}, {'train_loss': 0.5}], 'history entry 1 has no "step"'),
     ([{'step': 0, 'learning_rate': 0.1}], 'no key ending in "accuracy" or "loss"')])
def test_learning_curve_rejects_bad_history(tmp_path, history, match):
  with pytest.raises(ValueError, match=match):
    plots.learning_curve(tmp_path / 'bad.png', history)


def test_plotting_leaves_the_callers_backend_and_pyplot_alone(tmp_path):
  code = (
      'import sys, matplotlib, numpy as np\n'
      'from siamese_jax import plots\n'
      f'plots.learning_curve({str(tmp_path / "curve.png")!r}, [{{"step": 0, "train_loss": 1.0}}])\n'
      'assert matplotlib.get_backend() == "svg", matplotlib.get_backend()\n'
      'assert "matplotlib.pyplot" not in sys.modules\n')
  env = {**os.environ, 'MPLBACKEND': 'svg', 'PYTHONPATH': str(REPO)}
  result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  _read_png(tmp_path / 'curve.png')
