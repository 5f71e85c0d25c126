"""The input parsers fuzzed: whatever they are given, they return a result or raise one UserError, nothing else."""

import io
import os
import zipfile

import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ml_collections import config_flags
from PIL import Image

from siamese_jax import cli, config_schema, lake_runs
from siamese_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def png(size=8, value=0):
  out = io.BytesIO()
  Image.fromarray(np.full((size, size), value, np.uint8)).save(out, format='PNG')
  return out.getvalue()


RUN_NAMES = st.sampled_from(['run01', 'run02', 'all_runs/run01', 'x/run1', 'runs'])
IMAGE_NAMES = st.builds(lambda run, kind, n: f'{run}/{kind}/{n}.png', RUN_NAMES,
                        st.sampled_from(['training', 'test', 'other']), st.sampled_from(['class01', 'class02', 'item01']))
CONTENT = st.one_of(st.just(png()), st.just(png(3, 255)), st.binary(max_size=64), st.just(png()[:40]))


@st.composite
def run_files(draw):
  """A zip's members: image paths near Lake's layout, with PNGs or junk, and label files made of such paths."""
  files = draw(st.dictionaries(IMAGE_NAMES, CONTENT, max_size=6))
  for run in draw(st.lists(RUN_NAMES, max_size=2, unique=True)):
    lines = draw(st.lists(st.one_of(
        st.builds(lambda a, b: f'{a.split("/", 1)[-1]} {b.split("/", 1)[-1]}', IMAGE_NAMES, IMAGE_NAMES),
        st.text(max_size=20)), max_size=4))
    files[f'{run}/class_labels.txt'] = draw(st.one_of(st.just('\n'.join(lines).encode()), st.binary(max_size=32)))
  return files


@FUZZ
@given(files=run_files(), size=st.sampled_from([None, 4, 105]))
def test_lake_runs_archive_fuzz(tmp_path_factory, files, size):
  path = tmp_path_factory.mktemp('runs') / 'all_runs.zip'
  with zipfile.ZipFile(path, 'w') as archive:
    for name, data in files.items():
      archive.writestr(name, data)
  try:
    runs = lake_runs.read_runs(path, image_size=size)
  except UserError as e:
    assert '\n' not in str(e)
    return
  for run in runs:
    assert len(run.support) and len(run.queries) == len(run.answers)
    assert run.answers.max() < len(run.support)


@FUZZ
@given(data=st.binary(max_size=200))
def test_lake_runs_unreadable_archive_is_one_error(tmp_path_factory, data):
  path = tmp_path_factory.mktemp('runs') / 'all_runs.zip'
  path.write_bytes(data)
  with pytest.raises(UserError):
    lake_runs.read_runs(path)


KEYS = st.sampled_from(['batch.size', 'train.num_steps', 'train.eval_every', 'train.checkpoint_every.minutes',
                        'train.checkpoint_every.steps', 'loss.name', 'loss.margin', 'model.features', 'model.head',
                        'optimizer.learning_rate', 'train.ema_decay', 'augment.strength', 'no.such.key', 'train',
                        'seed', 'data.name'])
VALUES = st.one_of(st.sampled_from(['0', '-1', '1e12', 'nan', 'inf', '(1,2)', '[]', 'None', 'True', "'bce'",
                                    'contrastive', '', '1.5', '(', '{}']), st.text(max_size=8))


@FUZZ
@given(overrides=st.lists(st.tuples(KEYS, VALUES), max_size=3))
def test_config_override_fuzz(overrides):
  """A bad override is one `error:` line (exit) at parsing or a UserError from the schema, never a traceback."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, lock_config=True)
  argv = ['main', f'--config={os.path.join(REPO, "configs", "mnist.py")}']
  argv += [f'--config.{key}={value}' for key, value in overrides]
  try:
    cli.parse_flags(argv, fv)
  except SystemExit as e:
    assert str(e.code).startswith('error: ') and '\n' not in str(e.code)
    return
  try:
    config_schema.validate(fv.config)
  except UserError as e:
    assert '\n' not in str(e)
