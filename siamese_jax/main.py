"""Command line: `python -m siamese_jax.main --config=configs/omniglot.py --workdir=DIR`.

Runs one task (a config file) in a workdir; running the same command again resumes from the latest
checkpoint. Several processes (a TPU pod slice, GPU hosts) each run this same command.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from siamese_jax import distributed, train
from siamese_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's parser, with config overrides that name unknown keys reported in one line."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1].split(':', 1)[0]
      if not os.path.isfile(path):
        sys.exit(f'error: config file {path} not found')
  try:
    return FLAGS(argv)
  except flags.Error as e:
    # A config file that raised: its traceback is inside the message; its last line says what went wrong.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    sys.exit(f'error: {lines[-1] if "Traceback" in str(e) else lines[0]}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    sys.exit(f'error: bad --config override: {e}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    distributed.initialize()
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
