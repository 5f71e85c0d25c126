"""Saving a training state (what a checkpoint costs the loop) and loading a trained network (the parameters
alone, `Manager.restore_params`, against the whole training state).

  python -m benchmarks.checkpoint_load --config=configs/omniglot.py --repeats=5

Saves a freshly initialised training state of the config (parameters, Adam's two moments, and the moving
average when `train.ema_decay` is on) in a temporary folder `--repeats` times, timing the part the training
loop waits for (the save is asynchronous) and the save until it is on disk; then times reading it back both
ways. Medians of `--repeats` are reported with the bytes each moves.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import flax
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from siamese_jax import checkpoints, models, train

FLAGS = flags.FLAGS


def _megabytes(tree) -> float:
  return sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree)) / 2**20


def _timed_reads(read, repeats: int) -> tuple[float, float]:
  """(median seconds, MiB of what was read) over `repeats` calls of `read`."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tree = jax.block_until_ready(read())
    times.append(time.perf_counter() - start)
  return statistics.median(times), _megabytes(tree)


def _timed_saves(manager, state, metric: str, repeats: int) -> dict[str, tuple[float, float]]:
  """Median seconds of `repeats` saves: the part the loop waits for, and until the checkpoint is on disk."""
  waited, whole = [], []
  for step in range(1, repeats + 1):
    start = time.perf_counter()
    manager.save(step, state, {metric: 0.0}, [{'step': step, metric: 0.0}])
    waited.append(time.perf_counter() - start)
    manager.wait()
    whole.append(time.perf_counter() - start)
  megabytes = _megabytes(flax.serialization.to_state_dict(state))
  return {'save (the loop waits)': (statistics.median(waited), megabytes),
          'save (until on disk)': (statistics.median(whole), megabytes)}


def run(config, image_size: int, repeats: int) -> dict[str, tuple[float, float]]:
  """{'save (the loop waits)' | 'save (until on disk)' | 'whole state' | 'parameters only':
  (median seconds, MiB moved)}."""
  model = models.build(config.model)
  shape = (image_size, image_size, config.data.get('channels', 1))
  state = train.init_state(config, model, train.make_optimizer(config), shape, jax.random.key(0))
  metric = config.train.best_metric
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoints.Manager(workdir, metric)
    results = _timed_saves(manager, state, metric, repeats)
    step = manager.best_step()
    results['whole state'] = _timed_reads(lambda: manager.restore(state, step)[0], repeats)
    results['parameters only'] = _timed_reads(lambda: manager.restore_params(step), repeats)
    manager.close()
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.config is None:
    sys.exit('error: give --config=configs/<task>.py[:variant]')
  image_size = FLAGS.image_size or FLAGS.config.data.get('image_size', 105)
  results = run(FLAGS.config, image_size, FLAGS.repeats)
  print(f'median of {FLAGS.repeats} of each, {jax.devices()[0].platform}')
  print('| operation | MiB | seconds |\n|---|---|---|')
  for name, (seconds, megabytes) in results.items():
    print(f'| {name} | {megabytes:.1f} | {seconds:.3f} |')


if __name__ == '__main__':
  # Defined here, not on import, so that tests can import this module beside benchmarks.throughput.
  config_flags.DEFINE_config_file('config', None, 'Training configuration file (path[:variant]).', lock_config=True)
  flags.DEFINE_integer('repeats', 5, 'Timed reads of each kind (the median is reported).', lower_bound=1)
  flags.DEFINE_integer('image_size', 0, 'Image side (default: the config\'s data.image_size, else 105).',
                       lower_bound=0)
  app.run(main)
