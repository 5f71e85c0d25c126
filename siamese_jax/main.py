"""Command line: `python -m siamese_jax.main --config=configs/omniglot.py --workdir=DIR`.

Runs one task (a config file) in a workdir; running the same command again resumes from the latest
checkpoint. Several processes (a TPU pod slice, GPU hosts) each run this same command.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from siamese_jax import distributed, train
from siamese_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    distributed.initialize()
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
