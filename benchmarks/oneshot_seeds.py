"""Accuracy after a training budget, over several seeds: one config trained once per seed, then one table.

  SIAMESE_JAX_DATA=../shared/data python -m benchmarks.oneshot_seeds --config=configs/omniglot.py:cpu \
      --seeds=0,1,2,3 --workdir=W [--json=seeds.json] [--config.foo=bar ...]

Each seed trains in W/seed<N> exactly as `python -m siamese_jax.main` would (`config.seed` = N), the
training call timed from start to end (data loading included), so the table holds what a user's command
costs: the training minutes the run reports,
the whole call's wall minutes, the best validation score (`train.best_metric`) and the test evaluators'
accuracy of the kept checkpoint with its 95% interval over runs. One seed's interval says how well its
test runs pin that network down; the spread between seeds says how much another training run would move
it, which is why a figure meant for a README is the mean over seeds. A seed whose workdir already holds
results is reported as it stands, not retrained (its wall minutes are then unknown).
"""

from __future__ import annotations

import json
import os
import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from siamese_jax import cli, train
from siamese_jax.errors import UserError

FLAGS = flags.FLAGS


def define_flags():
  """Defined when run, not on import: other benchmarks define --config in absl's global flags too."""
  config_flags.DEFINE_config_file('config', None, 'Training configuration file (path[:variant]).',
                                  lock_config=True)
  flags.DEFINE_list('seeds', ['0', '1', '2', '3'], 'Seeds to train, one workdir each.')
  flags.DEFINE_string('workdir', None, 'Parent of the seeds\' workdirs (W/seed<N>).')
  flags.DEFINE_string('json', None, 'Also write the rows and the summary to this JSON file.')


def parse_seeds(values) -> list[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise UserError(f'--seeds must be integers separated by commas, got {",".join(values)}') from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise UserError(f'--seeds must name at least one seed, each once, got {",".join(values)}')
  return seeds


def read_run(workdir: str, best_metric: str) -> dict:
  """A finished run's figures from its workdir: results.json (the kept checkpoint's test metrics) and
  history.json (every validation)."""
  try:
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    with open(os.path.join(workdir, 'history.json')) as f:
      history = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{workdir} holds no finished run ({type(e).__name__}: {e})') from None
  scores = [entry[best_metric] for entry in history if best_metric in entry]
  return {'step': results['step'], 'training_minutes': results['training_minutes'],
          'best_validation': max(scores) if scores else None, 'test': results['metrics']}


def summarize(rows: list[dict]) -> dict[str, dict[str, float]]:
  """For each test accuracy, its mean over seeds, the standard deviation between seeds, and the range."""
  names = sorted({k for row in rows for k in row['test'] if k.endswith('/accuracy')})
  summary = {}
  for name in names:
    values = [row['test'][name] for row in rows if name in row['test']]
    summary[name] = {'mean': statistics.fmean(values), 'min': min(values), 'max': max(values),
                     'sd_between_seeds': statistics.stdev(values) if len(values) > 1 else 0.0,
                     'seeds': len(values)}
  return summary


def table(rows: list[dict], summary: dict) -> str:
  """The rows and the summary as Markdown."""
  names = list(summary)
  lines = ['| seed | step kept | training minutes | wall minutes | best validation | '
           + ' | '.join(names) + ' |', '|---:' * (5 + len(names)) + '|']
  for row in rows:
    wall = f'{row["wall_minutes"]:.1f}' if row['wall_minutes'] is not None else 'trained earlier'
    validation = f'{100 * row["best_validation"]:.2f}%' if row['best_validation'] is not None else ''
    tests = [f'{100 * row["test"][n]:.2f}% ± {100 * row["test"].get(n.replace("/accuracy", "/ci95"), 0):.2f}'
             if n in row['test'] else '' for n in names]
    lines.append(f'| {row["seed"]} | {row["step"]} | {row["training_minutes"]:.1f} | {wall} | {validation} | '
                 + ' | '.join(tests) + ' |')
  for name, s in summary.items():
    seeds = f'{s["seeds"]} seed' + ('s' if s['seeds'] > 1 else '')
    lines.append(f'{name}: {100 * s["mean"]:.2f}% over {seeds} (from {100 * s["min"]:.2f}% to '
                 f'{100 * s["max"]:.2f}%, {100 * s["sd_between_seeds"]:.2f} points between seeds)')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with cli.user_errors():
    if FLAGS.config is None or not FLAGS.workdir:
      raise UserError('give --config=configs/<task>.py and --workdir=DIR')
    if not FLAGS.config.test_evaluators:
      raise UserError('the config has no test_evaluators: there is no test accuracy to report')
    rows = []
    for seed in parse_seeds(FLAGS.seeds):
      workdir = os.path.join(FLAGS.workdir, f'seed{seed}')
      wall_minutes = None
      if not os.path.exists(os.path.join(workdir, 'results.json')):
        config = FLAGS.config.copy_and_resolve_references()
        config.seed = seed
        start = time.monotonic()
        train.train_and_evaluate(config, workdir)
        wall_minutes = (time.monotonic() - start) / 60
      rows.append({'seed': seed, 'wall_minutes': wall_minutes,
                   **read_run(workdir, FLAGS.config.train.best_metric)})
    summary = summarize(rows)
    print(table(rows, summary))
    if FLAGS.json:
      with open(FLAGS.json, 'w') as f:
        json.dump({'config': FLAGS.config.to_dict(), 'rows': rows, 'summary': summary}, f, indent=1, default=str)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
