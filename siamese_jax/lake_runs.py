"""Lake et al.'s 20-way one-shot runs in their published format (`all_runs.zip`); scoring a network on them.

Each run is a folder `runNN/` holding `training/classNN.png` (one image per class, the support),
`test/itemNN.png` (the queries) and `class_labels.txt`, whose lines pair a query with its matching
support image, both relative to the folder that holds the runs:

    run01/test/item01.png run01/training/class08.png

Images are black strokes on white; they are read into the ImageSet convention (strokes 255) with
the same decoding and resizing as the Omniglot loader, so a model sees runs as it saw training data.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import zipfile
from collections.abc import Callable, Mapping

import numpy as np

from siamese_jax import inference
from siamese_jax.datasets.omniglot import ORIGINAL_SIZE, Drawings, decode_png
from siamese_jax.errors import UserError
from siamese_jax.evaluators import oneshot

_LABELS = re.compile(r'(?:^|/)(?P<run>run\d+)/class_labels\.txt$')


@dataclasses.dataclass(frozen=True)
class LakeRun:
  """One one-shot run.

  Attributes:
    name: the run's folder name, e.g. 'run01'.
    support: uint8 [W, S, S, 1], one image per class in file-name order, strokes 255.
    queries: uint8 [Q, S, S, 1], in file-name order.
    answers: int32 [Q], the index into `support` of each query's class.
  """

  name: str
  support: np.ndarray
  queries: np.ndarray
  answers: np.ndarray


def read_runs(path: str | os.PathLike, image_size: int = ORIGINAL_SIZE, crop_to_ink: bool = False) -> list[LakeRun]:
  """Reads every `runNN/` under `path`, a folder or a zip (with or without a top folder inside), each image
  decoded as the dataset's own (`omniglot.decode_png`)."""
  decode = functools.partial(decode_png, size=image_size, crop_to_ink=crop_to_ink)
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    files = {file.relative_to(path).as_posix(): file.read_bytes for file in path.rglob('*') if file.is_file()}
    return _parse_runs(files, str(path), decode)
  if not path.exists():
    raise UserError(f'one-shot runs not found at {path}; give the folder holding runNN/ or all_runs.zip')
  try:
    with zipfile.ZipFile(path) as archive:
      files = {name: functools.partial(archive.read, name) for name in archive.namelist() if not name.endswith('/')}
      return _parse_runs(files, str(path), decode)
  except (zipfile.BadZipFile, OSError) as error:
    raise UserError(f'cannot read one-shot runs archive {path} ({error})') from error


def _parse_runs(files: Mapping[str, Callable[[], bytes]], where: str,
                decode: Callable[[bytes], np.ndarray]) -> list[LakeRun]:
  """All runs among `files` (relative path -> reader), in name order."""
  label_files = sorted((match['run'], name) for name in files if (match := _LABELS.search(name)))
  if not label_files:
    raise UserError(f'no runNN/class_labels.txt in {where}')
  return [_parse_run(files, where, run, name, decode) for run, name in label_files]


def _parse_run(files: Mapping[str, Callable[[], bytes]], where: str, run: str, labels_name: str,
               decode: Callable[[bytes], np.ndarray]) -> LakeRun:
  """One run: its labels say which support image each query matches."""
  base = labels_name[:-len(f'{run}/class_labels.txt')]  # The folder holding the runs, '' or 'all_runs/'.
  support = sorted(name for name in files if name.startswith(f'{base}{run}/training/') and name.endswith('.png'))
  queries = sorted(name for name in files if name.startswith(f'{base}{run}/test/') and name.endswith('.png'))
  answer_of = {}
  try:
    text = files[labels_name]().decode()
  except UnicodeDecodeError:
    raise UserError(f'{where}: {labels_name} is not a text file') from None
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    pair = re.fullmatch(rf'\s*({run}/test/[^/\s]+\.png)\s+({run}/training/[^/\s]+\.png)\s*', line)
    if not pair:
      raise UserError(f'{where}: {labels_name} line {number} is not "{run}/test/<query>.png '
                      f'{run}/training/<match>.png": {line!r}')
    query, match = (base + path for path in pair.groups())
    for name in (query, match):
      if name not in files:
        raise UserError(f'{where}: {labels_name} line {number} names {name}, which is missing')
    answer_of[query] = support.index(match)
  if not queries:
    raise UserError(f'{where}: no {base}{run}/test/*.png queries')
  unanswered = [name for name in queries if name not in answer_of]
  if unanswered or not support:
    raise UserError(f'{where}: {labels_name} gives no match for {unanswered or "any query"}')
  return LakeRun(
      name=run,
      support=np.stack([_decode(files, where, name, decode) for name in support]),
      queries=np.stack([_decode(files, where, name, decode) for name in queries]),
      answers=np.array([answer_of[name] for name in queries], dtype=np.int32),
  )


def _decode(files: Mapping[str, Callable[[], bytes]], where: str, name: str,
            decode: Callable[[bytes], np.ndarray]) -> np.ndarray:
  try:
    return decode(files[name]())
  except OSError as error:
    raise UserError(f'{where}: cannot decode {name} ({error})') from error


def make_runs(drawings: Drawings, num_runs: int = 20, ways: int = 20, seed: int = 0) -> list[LakeRun]:
  """Draws runs the way Lake et al. did: per run, one alphabet, `ways` characters, two drawers.

  One drawer's images of the characters are the support, the other's are the queries, each in a
  random order. Runs cycle through the alphabets with at least `ways` characters in a shuffled
  order, so alphabets are used as evenly as possible. Select alphabets and drawers beforehand with
  `drawings.where(...)`; every character must have been drawn by every drawer left.
  """
  alphabets = sorted(set(drawings.alphabets.tolist()))
  characters = {a: sorted(set(drawings.characters[drawings.alphabets == a].tolist())) for a in alphabets}
  eligible = [a for a in alphabets if len(characters[a]) >= ways]
  drawers = sorted(set(drawings.drawers.tolist()))
  if not eligible or len(drawers) < 2:
    raise UserError(f'{ways}-way runs need an alphabet with at least {ways} characters and two drawers; '
                    f'{drawings.source} has at most {max(map(len, characters.values()), default=0)} characters '
                    f'and {len(drawers)} drawers')
  index = {key: i for i, key in enumerate(zip(drawings.characters.tolist(), drawings.drawers.tolist()))}
  rng = np.random.default_rng(seed)
  order = [eligible[i] for i in rng.permutation(len(eligible))]
  runs = []
  for r in range(num_runs):
    pool = characters[order[r % len(order)]]
    chosen = [pool[i] for i in rng.choice(len(pool), size=ways, replace=False)]
    support_drawer, query_drawer = (drawers[i] for i in rng.choice(len(drawers), size=2, replace=False))
    query_order = rng.permutation(ways)
    missing = [c for c in chosen for d in (support_drawer, query_drawer) if (c, d) not in index]
    if missing:
      raise UserError(f'{missing[0]} has no drawing by drawer {support_drawer} or {query_drawer} in {drawings.source}')
    runs.append(LakeRun(
        name=f'run{r + 1:02d}',
        support=drawings.images[[index[c, support_drawer] for c in chosen]],
        queries=drawings.images[[index[chosen[q], query_drawer] for q in query_order]],
        answers=query_order.astype(np.int32),
    ))
  return runs


def score_runs(scorer: inference.Scorer, runs, seed: int = 0) -> list[float]:
  """Accuracy of each run: the fraction of queries matched to their own class's training image.

  Every image of every run is embedded in one pass (the tower is the cost; the head is cheap); each query
goes to a class as in the one-shot evaluator (`oneshot.choose_classes`).
  """
  rng = np.random.default_rng(seed)
  parts = [images for run in runs for images in (run.support, run.queries)]
  embeddings = np.split(scorer.embed(np.concatenate(parts)), np.cumsum([len(p) for p in parts])[:-1])
  accuracies = []
  for run, support, queries in zip(runs, embeddings[0::2], embeddings[1::2]):
    chosen = oneshot.choose_classes(scorer, rng, queries, support[:, None])  # one shot per class
    accuracies.append(float(np.mean(chosen == run.answers)))
  return accuracies
