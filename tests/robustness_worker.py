"""A tiny synthetic training run through the real command line, for test_robustness.py's subprocesses.

  python tests/robustness_worker.py --config=tests/robustness_worker.py --workdir=DIR [--config.train.x=y]

is `python -m siamese_jax.main` with the synthetic data of test_train.py in place of a dataset, and this
file as the config: 40 steps, one per call, logged each step, validated every 10, saved every 5.
"""

import conftest  # noqa: F401  (two simulated CPU devices, set before jax starts)
from absl import app
from test_train import make_synthetic_splits, tiny_config

from siamese_jax import cli, datasets, main


def get_config():
  config = tiny_config(num_steps=40, log_every=1, eval_every=10)
  config.train.checkpoint_every.steps = 5
  config.test_evaluators.heldout = dict(kind='oneshot', split='validation', ways=3, shots=1, episodes=10)
  return config


if __name__ == '__main__':
  datasets.load_splits = lambda data_config: make_synthetic_splits()
  app.run(main.main, flags_parser=cli.parse_flags)
