"""Pictures of pairs, similarities and training runs, written straight to PNG files.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg canvas directly, never
through pyplot: nothing global changes, so callers keep whatever backend they chose, and the
functions work on headless machines and from several threads.
"""

from __future__ import annotations

import collections
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from siamese_jax import files

_DPI = 100
_POS_COLOR = '#1a7f37'
_NEG_COLOR = '#c62828'


def _save(fig: Figure, path: str | os.PathLike) -> pathlib.Path:
  """Renders `fig` to a PNG at `path`, creating its folder, so callers never manage directories.

  Written whole or not at all (a full disk leaves the previous picture, not a truncated one).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  FigureCanvasAgg(fig)
  with files.replacing(path) as tmp:
    fig.savefig(tmp, format='png', dpi=_DPI)
  return path


def _as_display(batched: bool, **images: np.ndarray) -> list[np.ndarray]:
  """Validates the named images and maps them to float32 in [0, 1], the one form `imshow` is given.

  uint8 is divided by 255 and floats within [0, 1] are kept. Otherwise the range
  [min(0, lowest), max(1, highest)] of all the float inputs together is mapped onto [0, 1]: floats
  in [0, 255] then look like their uint8 form, standardised model inputs stay visible, and the
  images of a pair keep their relative brightness.
  """
  layout = '[N, H, W, C]' if batched else '[H, W, C]'
  arrays = [np.asarray(x) for x in images.values()]
  for name, x in zip(images, arrays):
    if x.ndim != (4 if batched else 3) or x.shape[-1] not in (1, 3):
      raise ValueError(f'{name} must be {layout} with C in {{1, 3}}, got shape {x.shape}')
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f'{name} must be uint8 or float, got {x.dtype}')
    if not np.all(np.isfinite(x)):
      raise ValueError(f'{name} contains NaN or infinite values')
  floats = [x for x in arrays if x.dtype != np.uint8]
  low = min([0.0] + [float(x.min(initial=0.0)) for x in floats])
  high = max([1.0] + [float(x.max(initial=1.0)) for x in floats])
  return [(x / 255 if x.dtype == np.uint8 else (x - low) / (high - low)).astype(np.float32) for x in arrays]


def _show(ax, image: np.ndarray) -> None:
  """Draws one [H, W, C] image in [0, 1] without axes; single-channel images in gray."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
  else:
    ax.imshow(image, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])


def _relation(label) -> tuple[str, str]:
  """The short name and colour of a pair's true relation (1 = same, 0 = different)."""
  return ('pos', _POS_COLOR) if label else ('neg', _NEG_COLOR)


def pair_montage(path: str | os.PathLike,
                 images_a: np.ndarray,
                 images_b: np.ndarray,
                 labels: np.ndarray,
                 scores: np.ndarray | None = None,
                 rows: int = 7,
                 cols: int = 7,
                 title: str | None = None) -> pathlib.Path:
  """Writes a rows x cols grid of pairs, each labelled pos/neg and optionally with its score.

  The quickest check that a pair sampler does what it should, and where a model goes wrong.
  Pairs beyond rows * cols are not shown; cells without a pair are left blank.

  Args:
    path: where to write the PNG.
    images_a: uint8 or float [N, H, W, C], C in {1, 3}: the left image of each pair.
    images_b: same shape as `images_a`: the right image of each pair.
    labels: [N] of 1 (same) or 0 (different).
    scores: optional [N] similarity scores, printed under each pair.
    rows: grid rows.
    cols: grid columns.
    title: optional figure title.

  Returns:
    The path written.
  """
  if rows < 1 or cols < 1:
    raise ValueError(f'rows and cols must be positive, got rows={rows}, cols={cols}')
  a, b = _as_display(True, images_a=images_a, images_b=images_b)
  if a.shape != b.shape:
    raise ValueError(f'images_a and images_b must have the same shape, got {a.shape} and {b.shape}')
  n = len(a)
  if n == 0:
    raise ValueError('pair_montage needs at least one pair')
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f'labels must be [{n}], one per pair, got shape {labels.shape}')
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError(f'labels must be 0 (different) or 1 (same), got values {np.unique(labels)}')
  if scores is not None:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
      raise ValueError(f'scores must be [{n}], one per pair, got shape {scores.shape}')

  _, height, width, channels = a.shape
  gap = np.ones((height, max(1, width // 14), channels), np.float32)
  cell_h = 1.0  # inches of image per cell
  cell_w = cell_h * (2 * width + gap.shape[1]) / height
  text_h = 0.45 if scores is not None else 0.25  # inches for the label (and score) of a cell
  # 10% wider than the images, so that the space between cells is wider than the gap inside a pair.
  fig = Figure(figsize=(cols * cell_w * 1.1, rows * (cell_h + text_h) + (0.5 if title else 0.1)))
  grid = fig.subplots(rows, cols, squeeze=False)
  for i, ax in enumerate(grid.flat):
    if i >= n:
      ax.set_axis_off()
      continue
    _show(ax, np.concatenate([a[i], gap, b[i]], axis=1))
    for spine in ax.spines.values():
      spine.set_visible(False)
    name, color = _relation(labels[i])
    ax.set_title(name, color=color, fontsize=10, fontweight='bold', pad=3)
    if scores is not None:
      ax.set_xlabel(f'{scores[i]:.3f}', fontsize=9, labelpad=2)
  if title:
    fig.suptitle(title, fontsize=12)
  fig.set_layout_engine('constrained', h_pad=0.04, w_pad=0.02, hspace=0.04, wspace=0.1)
  return _save(fig, path)


def comparison(path: str | os.PathLike,
               image_a: np.ndarray,
               image_b: np.ndarray,
               similarity: float,
               label: int | bool | None = None,
               title: str | None = None) -> pathlib.Path:
  """Writes two images side by side with the model's similarity and, if given, their true relation.

  Args:
    path: where to write the PNG.
    image_a: uint8 or float [H, W, C], C in {1, 3}.
    image_b: uint8 or float [H, W, C], C in {1, 3}; may differ in size from `image_a`.
    similarity: the model's similarity score for the pair.
    label: optional true relation, 1 (same) or 0 (different).
    title: optional figure title.

  Returns:
    The path written.
  """
  a, b = _as_display(False, image_a=image_a, image_b=image_b)
  if label is not None and label not in (0, 1):
    raise ValueError(f'label must be 0 (different), 1 (same) or None, got {label!r}')
  fig = Figure(figsize=(6, 3.6), layout='constrained')
  for ax, image in zip(fig.subplots(1, 2), (a, b)):
    _show(ax, image)
  caption, color = f'similarity {float(similarity):.3f}', 'black'
  if label is not None:
    caption, color = f'{caption}   (true: {"same" if label else "different"})', _relation(label)[1]
  fig.supxlabel(caption, fontsize=13, color=color)
  if title:
    fig.suptitle(title, fontsize=13)
  return _save(fig, path)


def neighbours(path: str | os.PathLike,
               query: np.ndarray,
               found: np.ndarray,
               scores: np.ndarray,
               labels: Sequence[str] | None = None,
               title: str | None = None) -> pathlib.Path:
  """Writes a query image beside its neighbours from an index, best first, each with its score.

  Args:
    path: where to write the PNG.
    query: uint8 or float [H, W, C], C in {1, 3}.
    found: uint8 or float [K, H, W, C], the neighbours in rank order.
    scores: [K] similarity of each neighbour to the query.
    labels: optional [K] label of each neighbour, printed above its score.
    title: optional figure title.

  Returns:
    The path written.
  """
  (shown,) = _as_display(True, found=found)
  (q,) = _as_display(False, query=query)
  scores = np.asarray(scores, dtype=np.float64)
  if len(shown) == 0 or scores.shape != (len(shown),):
    raise ValueError(f'scores must be [{len(shown)}], one per neighbour (at least one), got shape {scores.shape}')
  if labels is not None and len(labels) != len(shown):
    raise ValueError(f'labels must have one entry per neighbour ({len(shown)}), got {len(labels)}')
  fig = Figure(figsize=(1.3 * (len(shown) + 1) + 0.3, 2.2), layout='constrained')
  axes = fig.subplots(1, len(shown) + 1)
  _show(axes[0], q)
  axes[0].set_title('query', fontsize=10, fontweight='bold')
  for rank, (ax, image, score) in enumerate(zip(axes[1:], shown, scores)):
    _show(ax, image)
    label = f'{labels[rank]}\n' if labels is not None and labels[rank] else ''
    ax.set_title(f'{label}{score:.3f}', fontsize=9)
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, path)


def _series(history: Sequence[Mapping], suffix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Each key ending in `suffix` as sorted (steps, values), from the entries that have it."""
  points = collections.defaultdict(list)
  for entry in history:
    for key, value in entry.items():
      if key.endswith(suffix) and value is not None:
        points[key].append((entry['step'], float(value)))
  return {key: tuple(np.asarray(c) for c in zip(*sorted(p))) for key, p in sorted(points.items())}


def learning_curve(path: str | os.PathLike,
                   history: Sequence[Mapping],
                   title: str | None = None) -> pathlib.Path:
  """Writes accuracies (keys ending in 'accuracy') and, below them, losses (keys ending in 'loss').

  When entries carry 'elapsed_s' (seconds of training so far), the top axis reads in training minutes.

  Entries may carry different keys (say training metrics every step and validation metrics every
  hundred); each key is drawn from the entries that have it.

  Args:
    path: where to write the PNG.
    history: entries like {'step': 100, 'train_accuracy': 0.9, 'train_loss': 0.3}; every entry
      needs 'step'.
    title: figure title; 'Learning curves' when not given.

  Returns:
    The path written.
  """
  if not history:
    raise ValueError('history is empty; nothing to plot')
  for i, entry in enumerate(history):
    if 'step' not in entry:
      raise ValueError(f'history entry {i} has no "step": {dict(entry)}')
  panels = [(name, series) for name, series in
            (('accuracy', _series(history, 'accuracy')), ('loss', _series(history, 'loss')))
            if series]
  if not panels:
    raise ValueError('history has no key ending in "accuracy" or "loss"; nothing to plot')
  fig = Figure(figsize=(7, 3 * len(panels) + 0.5), layout='constrained')
  axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
  for ax, (name, series) in zip(axes, panels):
    for key, (steps, values) in series.items():
      ax.plot(steps, values, marker='.' if len(steps) < 30 else None, label=key)
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
  axes[-1].set_xlabel('step')
  timed = [(entry['step'], entry['elapsed_s'] / 60) for entry in history if 'elapsed_s' in entry]
  if len(timed) >= 2:  # Training minutes along the top: what a run on this machine costs to get there.
    steps, minutes = np.array(sorted(timed)).T
    top = axes[0].secondary_xaxis('top', functions=(_linear_through(steps, minutes), _linear_through(minutes, steps)))
    top.set_xlabel('training minutes')
  fig.suptitle(title or 'Learning curves')
  return _save(fig, path)


def _linear_through(xs: np.ndarray, ys: np.ndarray):
  """x -> y piecewise linear through the points, continued along the end segments beyond them.

  `np.interp` holds the end values instead, which stacks every tick past the last point on it.
  """
  slopes = np.diff(ys)[[0, -1]] / np.maximum(np.diff(xs)[[0, -1]], 1e-12)

  def f(x):
    x = np.asarray(x, float)
    inside = np.interp(x, xs, ys)
    return np.where(x < xs[0], ys[0] + (x - xs[0]) * slopes[0],
                    np.where(x > xs[-1], ys[-1] + (x - xs[-1]) * slopes[1], inside))

  return f
