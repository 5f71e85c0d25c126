"""Command line: `python -m siamese_jax.main --config=configs/omniglot.py --workdir=DIR`.

Runs one task (a config file) in a workdir; running the same command again resumes from the latest
checkpoint. Several processes (a TPU pod slice, GPU hosts) each run this same command.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from siamese_jax import cli, distributed, train
from siamese_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  with cli.user_errors():
    # Checked here rather than with mark_flags_as_required, which would bind every tool that shares
    # absl's global flags in one process (tests, notebooks).
    if FLAGS.config is None or not FLAGS.workdir:
      raise UserError('give --config=configs/<task>.py and --workdir=DIR')
    distributed.initialize()
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
