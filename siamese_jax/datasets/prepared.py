"""Which raw files a prepared TFDS dataset came from, so that a manual folder that disagrees is said, not ignored.

Once a builder's dataset is prepared under `data.tfds_data_dir`, TFDS never reads the manual folder again, so a
wrong or changed `data.manual_dir` would be ignored without a word. `prepare` keeps the name, size, modification
time and SHA-256 of each raw file in `prepared_from.json` beside the prepared dataset, and on later loads compares
the manual folder with them:

- no manual folder configured: the prepared copy is used;
- a folder that holds none of the raw files (missing, empty, mistyped): one warning, the prepared copy is used;
- the same files (same names and sizes, and same time or digest, so a copied archive is the same): used silently;
- other files: one error naming both sets and how to prepare again from the new ones;
- a copy prepared from a download or before the record existed: used, with one info line.

Preparation holds a lock beside the dataset, so processes sharing `data.tfds_data_dir` prepare it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

from absl import logging
import tensorflow_datasets as tfds

from siamese_jax import files
from siamese_jax.datasets import manual_dir
from siamese_jax.errors import UserError

RECORD = 'prepared_from.json'


def prepare(builder: tfds.core.DatasetBuilder, data_config, dataset: str, names: Sequence[str],
            download_config: tfds.download.DownloadConfig | None = None) -> None:
  """Prepares `builder` unless it is; says which copy is used when the manual folder disagrees with it.

  Args:
    builder: a TFDS builder whose raw files come from the manual folder of `dataset` or a download.
    data_config: the config's `data` block.
    dataset: the dataset's name, for the manual folder and messages.
    names: the file names the builder may read from the manual folder.
    download_config: passed to `download_and_prepare`.
  """
  folder = manual_dir(data_config, dataset)
  if not builder.is_prepared():
    with exclusive(builder):
      if not builder.is_prepared():
        _prepare(builder, folder, names, dataset, download_config)
        return
  _check(builder, folder, dataset, names)


@contextlib.contextmanager
def exclusive(builder: tfds.core.DatasetBuilder) -> Iterator[None]:
  """Held while `builder` is prepared; on entry `builder` knows of a copy another process prepared meanwhile."""
  version_dir = os.fspath(builder.data_dir)
  with files.exclusive(os.path.join(os.path.dirname(version_dir), f'.{os.path.basename(version_dir)}.lock')):
    if builder.is_prepared():
      builder.info.read_from_directory(builder.data_dir)
    yield


def _prepare(builder, folder: str | None, names: Sequence[str], dataset: str, download_config) -> None:
  builder.download_and_prepare(download_config=download_config)
  raw = _stat(folder, names)
  for name, entry in raw.items():
    entry['sha256'] = _digest(os.path.join(folder, name))
  record = {'folder': os.path.realpath(folder) if raw else None, 'files': raw}
  try:
    files.write_text(os.path.join(builder.data_dir, RECORD), json.dumps(record, indent=1))
  except OSError as e:
    logging.warning('%s: cannot record what %s was prepared from (%s)', dataset, builder.data_dir, e)


def _check(builder, folder: str | None, dataset: str, names: Sequence[str]) -> None:
  if folder is None:
    return
  prepared_in = os.fspath(builder.data_dir)
  raw = _stat(folder, names)
  if not raw:
    logging.warning('%s: the manual folder %s holds none of %s: it is ignored, and the copy prepared in %s is used',
                    dataset, folder, ', '.join(names), prepared_in)
    return
  try:
    with open(os.path.join(prepared_in, RECORD)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    record = {'files': {}}
  then = record['files']
  if not then:
    logging.info('%s: using the copy prepared in %s (from a download, or files not recorded); %s is not read',
                 dataset, prepared_in, folder)
    return
  if raw.keys() == then.keys() and all(_same(folder, name, raw[name], then[name]) for name in raw):
    return
  raise UserError(f'{dataset}: the raw files in {folder} ({_describe(raw)}) differ from those the copy prepared in '
                  f'{prepared_in} was made from ({_describe(then)} in {record["folder"]}); delete '
                  f'{prepared_in} to prepare it again from them, or set data.manual_dir to {record["folder"]}')


def _stat(folder: str | None, names: Sequence[str]) -> dict[str, dict]:
  """{name: {size, mtime_ns}} of the files among `names` in `folder`."""
  raw = {}
  for name in names:
    path = os.path.join(folder, name) if folder else None
    if path and os.path.isfile(path):
      stat = os.stat(path)
      raw[name] = {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}
  return raw


def _same(folder: str, name: str, now: dict, then: dict) -> bool:
  """Same size, and same modification time or (only then read, as archives can be large) same digest."""
  if now['size'] != then['size']:
    return False
  return now['mtime_ns'] == then['mtime_ns'] or _digest(os.path.join(folder, name)) == then['sha256']


def _digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _describe(raw: dict[str, dict]) -> str:
  return ', '.join(f'{name} {entry["size"]:,} bytes' for name, entry in sorted(raw.items()))
