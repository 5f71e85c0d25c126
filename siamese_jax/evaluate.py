"""Scores a trained workdir on Lake et al.'s 20 one-shot runs.

    python -m siamese_jax.evaluate --workdir=DIR --lake_runs=all_runs.zip

Uses the best checkpoint on the run's `train.best_metric` (or `--checkpoint=latest`); each query goes
to the training image it is most similar to, ties broken at random. Prints per-run and overall accuracy
and writes them to DIR/lake_runs.json.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from absl import app, flags

from siamese_jax import checkpoints, config_schema, files, inference, lake_runs, models, sharding
from siamese_jax.errors import UserError

flags.DEFINE_string('workdir', None, 'A training workdir (holding config.json and checkpoints/).')
flags.DEFINE_string('lake_runs', None, 'Folder of runNN/ folders, or all_runs.zip.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'], 'Which checkpoint to score.')
flags.DEFINE_integer('seed', 0, 'Seed for breaking ties.')
FLAGS = flags.FLAGS


def load_trained(workdir: str, which: str | int = 'best'):
  """(config, step, Scorer) for a workdir's 'best' or 'latest' checkpoint, or the one at step `which`."""
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UserError(f'{workdir} is not a training workdir (no config.json)')
  with open(config_path) as f:
    config = config_schema.from_saved(json.load(f))
  manager = checkpoints.Manager(workdir, config.train.best_metric)
  steps = manager.steps()
  if not steps:
    raise UserError(f'no checkpoint in {workdir}/checkpoints')
  step = max(steps)
  if isinstance(which, int):
    if which not in steps:
      raise UserError(f'no checkpoint at step {which} in {workdir}/checkpoints (there are {sorted(steps)})')
    step = which
  best = manager.best_metrics(manager.history(step))
  if which == 'best' and best is not None and best['step'] in steps:
    step = best['step']
  try:
    params = manager.restore_params(step)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'cannot read the checkpoint at step {step} in {workdir}/checkpoints ({type(e).__name__}: '
                    f'{str(e).strip().splitlines()[0] if str(e).strip() else ""})') from None
  if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)):
    raise UserError(f'the checkpoint at step {step} in {workdir}/checkpoints holds non-finite parameters '
                    '(the run diverged); it cannot score anything')
  model = models.build(config.model)
  return config, step, inference.Scorer.for_config(config, model, params, sharding.data_mesh())


def main(argv):
  del argv
  try:
    if not FLAGS.workdir or not FLAGS.lake_runs:
      raise UserError('give --workdir and --lake_runs')
    config, step, scorer = load_trained(FLAGS.workdir, FLAGS.checkpoint)
    runs = lake_runs.read_runs(FLAGS.lake_runs, image_size=config.data.image_size)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  accuracies = lake_runs.score_runs(scorer, runs, FLAGS.seed)
  print(f'{FLAGS.workdir} checkpoint at step {step} ({FLAGS.checkpoint}), {len(runs)} runs from {FLAGS.lake_runs}')
  for run, accuracy in zip(runs, accuracies):
    print(f'{run.name}  {accuracy * 100:5.1f}%')
  overall = float(np.mean(accuracies))
  print(f'overall  {overall * 100:5.1f}%  (error {100 - overall * 100:.1f}%)')
  path = os.path.join(FLAGS.workdir, 'lake_runs.json')
  try:
    files.write_text(path, json.dumps(
        {'step': step, 'runs': dict(zip([r.name for r in runs], accuracies)), 'overall': overall}, indent=1))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
