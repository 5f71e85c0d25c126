"""Lake et al.'s 20-way one-shot runs as an evaluator: runs read from disk, or drawn from a split.

With `path`, the runs in Lake's published format (`all_runs.zip` or a folder of `runNN/`) are scored, read
at `image_size` (default: the training images' size) and cut around the drawing with `crop_to_ink`, as the
model's training images were read (`inference.read_as_trained` fills both in from the run's config).
Without it, `run_sets` sets of `num_runs` runs are drawn from `split` with `lake_runs.make_runs`, one set
per seed (seed, seed + 1, ...): each run takes one alphabet, `ways` of its characters, its support from
one drawer and its queries from another. Accuracy is the mean over every run, with a 95% interval over
runs; the spread between the sets is reported too.
"""

from __future__ import annotations

import numpy as np

from siamese_jax import evaluators, lake_runs, metrics
from siamese_jax.datasets.omniglot import Drawings
from siamese_jax.errors import UserError


class Evaluator:
  """Runs read from `path`, or drawn from `split`; `seed` draws the runs and breaks ties."""

  def __init__(self, splits, *, path='', image_size=0, crop_to_ink=False, split='validation', num_runs=20, run_sets=5,
               ways=20, seed=0):
    self.seed = seed
    if path:
      image_size = image_size or splits['train'].image_shape[0]
      self.run_sets = [lake_runs.read_runs(path, image_size=image_size, crop_to_ink=crop_to_ink)]
      return
    if num_runs < 1 or run_sets < 1:
      raise UserError(f'num_runs={num_runs} and run_sets={run_sets} must be at least 1')
    drawings = Drawings.from_image_set(evaluators.get_split(splits, split, 'split'))
    self.run_sets = [lake_runs.make_runs(drawings, num_runs=num_runs, ways=ways, seed=seed + s)
                     for s in range(run_sets)]

  def __call__(self, scorer) -> dict[str, float]:
    runs = [run for run_set in self.run_sets for run in run_set]
    accuracies = np.array(lake_runs.score_runs(scorer, runs, self.seed))
    mean, ci95 = metrics.mean_and_ci95(accuracies)
    per_set = accuracies.reshape(len(self.run_sets), -1).mean(axis=1)
    return {'accuracy': float(mean), 'ci95': float(ci95), 'set_min': float(per_set.min()),
            'set_max': float(per_set.max())}
