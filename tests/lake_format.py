"""Writes one-shot runs in Lake et al.'s published format, for tests of the reader and the evaluate tool."""

import pathlib

from PIL import Image


def write_runs(out_dir, runs) -> None:
  """Writes `runs` (`lake_runs.LakeRun`) under a new folder: 1-bit PNGs, black strokes on white, binarised at 128."""
  root = pathlib.Path(out_dir)
  for run in runs:
    support_names = _write_images(root / run.name / 'training', 'class', run.support)
    query_names = _write_images(root / run.name / 'test', 'item', run.queries)
    lines = (f'{run.name}/test/{query} {run.name}/training/{support_names[answer]}\n'
             for query, answer in zip(query_names, run.answers))
    (root / run.name / 'class_labels.txt').write_text(''.join(lines))


def _write_images(folder, prefix, images) -> list[str]:
  """Writes prefixNN.png files, zero-padded so that name order is image order; returns their names."""
  folder.mkdir(parents=True)
  width = max(2, len(str(len(images))))
  names = [f'{prefix}{i + 1:0{width}d}.png' for i in range(len(images))]
  for name, image in zip(names, images):
    Image.fromarray(image[..., 0] < 128).save(folder / name)  # True is white in a 1-bit image.
  return names
